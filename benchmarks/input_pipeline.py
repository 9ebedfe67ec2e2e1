"""The input pipeline with a cheap model: featurehead against `image_dataset_from_directory` + `predict`,
and against the hardware ceiling (single-core Pillow decode rate x cores), side by side in one run.

    python benchmarks/input_pipeline.py --n 1000 --workdir /tmp/fh/ip

Data: N JPEGs of 500x375 cut from scikit-learn's two real photos (china.jpg, flower.jpg) at random offsets and
scales, in two class folders. Model: a one-layer saved Keras model (a 4x4/4 convolution with 8 filters) cut as
`--model keras --pooling avg`, at 224: the forward pass is cheap, so the input pipeline decides the speed.

Timed, each on the same files, best of --repeat runs:
- pillow_decode_1core: `Image.open(p).convert("RGB")` in one thread (decode only);
- pillow_decode_resize_1core: the same plus `resize((224, 224), BILINEAR)` (antialiased), one thread;
- peer: `keras.utils.image_dataset_from_directory(image_size=(224, 224), batch_size=32)` + `model.predict`;
- featurehead: `pipelines.run_extract` into a new store (hashing, decoding, forward pass, shard writes, view).
- featurehead_model_only: featurehead's forward pass alone over 512 already decoded images (every core).
- with `--only ...,tfdata`: a tf.data pipeline (`decode_jpeg` + `tf.image.resize`, antialiased or not) + the model.
Ratios printed: featurehead / peer and featurehead / (pillow_decode_1core x cores), the issue's goals; and, for
reference only, featurehead / a ceiling that also pays the forward pass on the same cores,
1 / (1 / (pillow_decode_1core x cores) + 1 / featurehead_model_only).

With `--processes K`, the whole measurement runs in K fresh processes and their ratios are summarised (the
peer's speed differs from process to process).

Also, with `--only pools`: the decode pool alone (`extract.read_batch` on 32-image chunks) in 1 thread, in one
thread per core and in one process per core; with `--only vgg16`: VGG16 (weights=None, flatten, 224 px) end to
end against its model-only forward over the same, already decoded images (model built before both timings).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_images(root: Path, n: int, seed: int = 0, size: tuple[int, int] = (500, 375)) -> None:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) == n:
        return
    shutil.rmtree(root, ignore_errors=True)
    photos = load_sample_images().images  # two 427x640 RGB photos
    rng = np.random.default_rng(seed)
    for i in range(n):
        cls = i % 2
        photo = photos[cls]
        scale = rng.uniform(0.7, 1.0)
        h, w = int(427 * scale), int(640 * scale)
        y, x = rng.integers(0, 427 - h + 1), rng.integers(0, 640 - w + 1)
        im = Image.fromarray(photo[y:y + h, x:x + w]).resize(size, Image.Resampling.BILINEAR)
        folder = root / ("china" if cls == 0 else "flower")
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{i:05d}.jpg", quality=90)


def cheap_model(path: Path, size: int = 224) -> None:
    import keras

    if path.is_file():
        return
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 4, strides=4, name="conv")(keras.layers.Rescaling(1 / 255.0)(inputs))
    keras.Model(inputs, x).save(path)


def pillow_rate(paths, resize: bool) -> float:
    from PIL import Image

    t = time.perf_counter()
    for p in paths:
        with Image.open(p) as im:
            im = im.convert("RGB")
            if resize:
                im = im.resize((224, 224), Image.Resampling.BILINEAR)
            np.asarray(im)
    return len(paths) / (time.perf_counter() - t)


def peer_rate(root: Path, model_path: Path) -> float:
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    t = time.perf_counter()
    ds = keras.utils.image_dataset_from_directory(root, image_size=(224, 224), batch_size=32, shuffle=False,
                                                  verbose=False)
    n = 0
    for out in [model.predict(ds, verbose=0)]:
        n += len(out)
    return n / (time.perf_counter() - t)


def tfdata_rate(paths, model_path: Path, antialias: bool) -> float:
    """A tf.data pipeline a user might write instead of featurehead's decode pool (no GIL in its C++ threads):
    `tf.io.decode_jpeg` + `tf.image.resize(antialias=...)` to 224, rounded to uint8, batches of 32, prefetch,
    `model(batch)`. Not a peer of the issue's goals; it tests whether moving the decoding into tf.data would pay."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_path, compile=False)

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        image = tf.image.resize(image, (224, 224), antialias=antialias)
        return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)

    t = time.perf_counter()
    ds = tf.data.Dataset.from_tensor_slices(list(paths)).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    n = 0
    for batch in ds.batch(32).prefetch(2):
        n += len(model(batch, training=False))
    return n / (time.perf_counter() - t)


_EXTRACTORS: dict = {}


def featurehead_rate(root: Path, model_path: Path, store: Path, workers: int | None, batch_size: int) -> float:
    """Rows/s of a whole `run_extract` into a new store (index, hashing, decoding, model, writes, view); the
    model is loaded before the timing, as the peer's is."""
    from extract import get_extractor, read_index
    from pipelines import run_extract

    key = (str(model_path), batch_size)
    if key not in _EXTRACTORS:
        _EXTRACTORS[key] = get_extractor("keras", weights=str(model_path), pooling="avg", batch_size=batch_size)
        _EXTRACTORS[key](np.zeros((1, 224, 224, 3), np.uint8))
    shutil.rmtree(store, ignore_errors=True)
    t = time.perf_counter()
    index = read_index(root)
    result = run_extract(index, _EXTRACTORS[key], store, workers=workers)
    return result.n_rows / (time.perf_counter() - t)


def cheap_model_only_rate(paths, model_path: Path, batch_size: int) -> float:
    """Img/s of featurehead's forward pass alone (every core, as in a run) over already decoded images."""
    from extract import read_batch

    key = (str(model_path), batch_size)  # the extractor featurehead_rate built and cached
    images = read_batch(paths[:512], 224)[0]
    t = time.perf_counter()
    _EXTRACTORS[key](images)
    return len(images) / (time.perf_counter() - t)


def _decode_chunk(paths):
    from extract import read_batch

    return read_batch(paths, 224)[0]


def stage_costs(paths, size: int = 224) -> dict:
    """One thread, ms per image, each stage of decoding one JPEG to `size` alone, over the same files (their
    bytes read first): what `extract.images.load_image` spends where, and the alternatives measured."""
    import hashlib
    import io

    import cv2
    import simplejpeg
    from PIL import Image

    from extract import read_index
    from extract.content import content_keys

    datas = [Path(p).read_bytes() for p in paths]
    scaled = [simplejpeg.decode_jpeg(d, colorspace="RGB", min_height=size, min_width=size) for d in datas]
    full = [simplejpeg.decode_jpeg(d, colorspace="RGB") for d in datas]

    def per_image(f, items) -> float:
        f(items[0])
        t = time.perf_counter()
        for item in items:
            f(item)
        return (time.perf_counter() - t) / len(items) * 1e3

    def header(d):
        with Image.open(io.BytesIO(d)) as im:
            return im.getexif().get(0x0112, 1)

    def pillow_resize(a):
        return np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR))

    from extract.images import _resize, load_image

    costs = {
        "ms_simplejpeg_full_decode": per_image(lambda d: simplejpeg.decode_jpeg(d, colorspace="RGB"), datas),
        "ms_simplejpeg_dct_scaled_decode": per_image(
            lambda d: simplejpeg.decode_jpeg(d, colorspace="RGB", min_height=size, min_width=size), datas),
        "ms_pillow_antialiased_resize_of_scaled": per_image(pillow_resize, scaled),
        "ms_opencv_bilinear_resize_of_scaled": per_image(
            lambda a: cv2.resize(a, (size, size), interpolation=cv2.INTER_LINEAR), scaled),
        "ms_opencv_area_resize_of_scaled": per_image(
            lambda a: cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA), scaled),
        "ms_opencv_area_resize_of_full": per_image(
            lambda a: cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA), full),
        "ms_opencv_pyramid_resize_of_full": per_image(lambda a: _resize(a, size, size), full),
        "ms_opencv_bilinear_resize_of_full": per_image(
            lambda a: cv2.resize(a, (size, size), interpolation=cv2.INTER_LINEAR), full),
        "ms_pillow_exif_header_parse": per_image(header, datas),
        "ms_sha256_of_bytes": per_image(lambda d: hashlib.sha256(d).digest(), datas),
        "ms_load_image": per_image(lambda p: load_image(p, size), list(paths)),
    }
    index = read_index(Path(paths[0]).parents[1])
    t = time.perf_counter()
    content_keys(index.root, index.ids, {})
    costs["ms_content_keys_per_file"] = (time.perf_counter() - t) / len(index.ids) * 1e3
    return costs


def pool_rates(paths) -> dict:
    """The decode pool alone: 1 thread, one thread per core, one process per core (32-image chunks)."""
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

    from extract.batches import default_workers

    cores = default_workers()
    chunks = [paths[i:i + 32] for i in range(0, len(paths), 32)]
    rates = {}
    with ThreadPoolExecutor(1) as one, ThreadPoolExecutor(cores) as threads, ProcessPoolExecutor(cores) as procs:
        list(procs.map(_decode_chunk, chunks[:cores]))  # start the processes outside the timing
        for name, pool in (("decode_pool_1_thread", one), (f"decode_pool_{cores}_threads", threads),
                           (f"decode_pool_{cores}_processes", procs)):
            t = time.perf_counter()
            list(pool.map(_decode_chunk, chunks))
            rates[name] = len(paths) / (time.perf_counter() - t)
    return rates


def session4_load(path, size: int) -> np.ndarray:
    """Session 4's decoder: libjpeg-turbo's smallest n/8 scale that keeps `size`, then one bilinear pass."""
    import cv2
    import simplejpeg

    scaled = simplejpeg.decode_jpeg(Path(path).read_bytes(), colorspace="RGB", min_height=size, min_width=size)
    return cv2.resize(scaled, (size, size), interpolation=cv2.INTER_LINEAR)


def resize_quality(paths, size: int = 224) -> dict:
    """Mean |difference| (grey levels) from a full-size decode + Pillow's antialiased bilinear resize, on 100
    images: the decoder in use (`extract.load_image`), its fallback without OpenCV (the same DCT-domain
    downscale, then Pillow's antialiased resize), session 4's decoder (libjpeg-turbo's 5/8 scale, one bilinear
    pass) and the peer's recipe (full decode, bilinear without antialiasing)."""
    import cv2
    from PIL import Image

    import extract.images as images

    def reference(p):
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)).astype(int)

    def peer(p):
        with Image.open(p) as im:
            full = np.asarray(im.convert("RGB"))
        return cv2.resize(full, (size, size), interpolation=cv2.INTER_LINEAR)

    def without_opencv(p):
        saved, images.cv2 = images.cv2, None
        try:
            return images.load_image(p, size)
        finally:
            images.cv2 = saved

    contenders = {"quality_featurehead": lambda p: images.load_image(p, size),
                  "quality_without_opencv": without_opencv,
                  "quality_session4_decoder": lambda p: session4_load(p, size), "quality_peer_recipe": peer}
    sample = paths[:100]
    refs = [reference(p) for p in sample]
    return {name: float(np.mean([np.abs(f(p).astype(int) - r).mean() for p, r in zip(sample, refs)]))
            for name, f in contenders.items()}


def vgg16_ratio(root: Path, work: Path, n: int) -> dict:
    """VGG16 end to end (run_extract) against its model-only forward over the same decoded images."""
    from extract import get_extractor, read_batch, read_index
    from pipelines import run_extract

    extractor = get_extractor("vgg16", weights="none")
    extractor(np.zeros((1, 224, 224, 3), np.uint8))
    index = read_index(root)
    keep = index.frame.iloc[:n]
    csv = work / f"vgg{n}.csv"
    keep.rename(columns={"id": "filename"}).to_csv(csv, index=False)
    sub = read_index(csv, index.root)
    images, _, _ = read_batch(sub.paths, 224)
    t = time.perf_counter()
    extractor(images)
    model_only = n / (time.perf_counter() - t)
    shutil.rmtree(work / "vggstore", ignore_errors=True)
    t = time.perf_counter()
    run_extract(sub, extractor, work / "vggstore")
    e2e = n / (time.perf_counter() - t)
    return {"vgg16_model_only": model_only, "vgg16_end_to_end": e2e}


def across_processes(args, argv: list[str]) -> None:
    """`--processes K`: the same command in K fresh processes; each one's best-of rates, then the spread."""
    import subprocess
    import tempfile

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.processes):
            out = Path(tmp) / f"run{i}.json"
            # the last of a repeated option wins: each child runs once and writes its own JSON
            subprocess.run([sys.executable, __file__, *argv, "--processes", "1", "--json", str(out)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            runs.append(json.loads(out.read_text()))
            r = runs[-1]["rates"]
            print(f"process {i + 1}: " + ", ".join(f"{k} {v:.0f}" for k, v in r.items()) + " img/s"
                  + "".join(f", {k} {runs[-1][k]:.2f}x" for k in ("featurehead_over_peer", "featurehead_over_ceiling")
                            if k in runs[-1]), flush=True)
    summary = {}
    for key in ("featurehead_over_peer", "featurehead_over_ceiling", "featurehead_over_decode_and_model_ceiling"):
        values = [r[key] for r in runs if key in r]
        if values:
            summary[key] = values
            print(f"{key}: median {float(np.median(values)):.2f}x, range {min(values):.2f}-{max(values):.2f}x "
                  f"over {len(values)} processes")
    if args.json:
        Path(args.json).write_text(json.dumps({"processes": runs, "summary": summary}, indent=2))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--workdir", default="/tmp/fh/ip")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help="featurehead decode workers (default: its default)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--only", default=None,
                   help="comma-separated subset of: decode,resize,peer,featurehead,tfdata,pools,vgg16,quality,stages "
                        "(default: the first four)")
    p.add_argument("--image-size", default="500x375",
                   help="WIDTHxHEIGHT of the generated JPEGs (larger than the photos' 640x427: upscaled, smooth)")
    p.add_argument("--processes", type=int, default=1,
                   help="run the whole measurement in this many fresh processes, one after another, and summarise "
                        "them (the peer's speed differs from process to process; see benchmarks/README.md)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.processes > 1:
        return across_processes(args, sys.argv[1:] if argv is None else list(argv))
    image_size = tuple(int(v) for v in args.image_size.lower().split("x"))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    root = work / (f"jpeg{args.n}" if image_size == (500, 375) else f"jpeg{args.n}_{image_size[0]}x{image_size[1]}")
    make_images(root, args.n, size=image_size)
    model_path = work / "cheap.keras"
    cheap_model(model_path)
    paths = sorted(str(p) for p in root.rglob("*.jpg"))
    only = set(args.only.split(",")) if args.only else {"decode", "resize", "peer", "featurehead"}
    cores = os.cpu_count() or 1
    rates: dict[str, float] = {}
    pairs: list[float] = []  # featurehead / peer within each repeat: the two measured back to back
    for _ in range(args.repeat):  # interleaved, so a load change hits every contender alike
        this: dict[str, float] = {}
        if "decode" in only:
            rates["pillow_decode_1core"] = max(rates.get("pillow_decode_1core", 0), pillow_rate(paths, False))
        if "resize" in only:
            rates["pillow_decode_resize_1core"] = max(rates.get("pillow_decode_resize_1core", 0),
                                                      pillow_rate(paths, True))
        if "peer" in only:
            this["peer"] = peer_rate(root, model_path)
            rates["peer"] = max(rates.get("peer", 0), this["peer"])
        if "featurehead" in only:
            this["featurehead"] = featurehead_rate(root, model_path, work / "store", args.workers, args.batch_size)
            rates["featurehead"] = max(rates.get("featurehead", 0), this["featurehead"])
            rates["featurehead_model_only"] = max(rates.get("featurehead_model_only", 0),
                                                  cheap_model_only_rate(paths, model_path, args.batch_size))
        if "tfdata" in only:
            for antialias in (True, False):
                name = f"tfdata_{'antialiased' if antialias else 'bilinear'}"
                rates[name] = max(rates.get(name, 0), tfdata_rate(paths, model_path, antialias))
        if len(this) == 2:
            pairs.append(this["featurehead"] / this["peer"])
        if "pools" in only:
            for name, rate in pool_rates(paths).items():
                rates[name] = max(rates.get(name, 0), rate)
    if "vgg16" in only:
        rates.update(vgg16_ratio(root, work, min(256, args.n)))  # 256 images: ~40 s per side
    quality = resize_quality(paths) if "quality" in only else {}
    stages = stage_costs(paths) if "stages" in only else {}
    print(f"N={args.n} JPEG {image_size[0]}x{image_size[1]} -> 224, cores={cores}, best of {args.repeat}")
    for name, rate in rates.items():
        print(f"  {name:28s} {rate:8.1f} img/s")
    for name, ms in stages.items():
        print(f"  {name:40s} {ms:6.3f} ms/image (one thread)")
    for name, diff in quality.items():
        print(f"  {name:28s} {diff:8.2f} grey levels from a full decode + antialiased resize")
    result = {"n": args.n, "cores": cores, "rates": rates, "quality": quality, "stages": stages}
    if "featurehead" in rates and "peer" in rates:
        result["featurehead_over_peer"] = rates["featurehead"] / rates["peer"]
        print(f"  featurehead / peer                     {result['featurehead_over_peer']:.2f}x  (goal >= 1.0)")
        result["featurehead_over_peer_per_repeat"] = pairs
        print(f"    per repeat (back to back): median {float(np.median(pairs)):.2f}x, "
              f"range {min(pairs):.2f}-{max(pairs):.2f}x")
    if "featurehead" in rates and "pillow_decode_1core" in rates:
        ceiling = rates["pillow_decode_1core"] * cores
        result["featurehead_over_ceiling"] = rates["featurehead"] / ceiling
        print(f"  featurehead / (decode_1core x {cores})       {result['featurehead_over_ceiling']:.2f}x  (goal >= 0.6)")
        if "featurehead_model_only" in rates:
            # not the goal: a ceiling that also pays the forward pass on the same cores
            both = 1 / (1 / ceiling + 1 / rates["featurehead_model_only"])
            result["featurehead_over_decode_and_model_ceiling"] = rates["featurehead"] / both
            print(f"  featurehead / (decode on {cores} cores + model only) "
                  f"{result['featurehead_over_decode_and_model_ceiling']:.2f}x  (for reference; no goal)")
    if "vgg16_end_to_end" in rates:
        result["vgg16_e2e_over_model_only"] = rates["vgg16_end_to_end"] / rates["vgg16_model_only"]
        print(f"  VGG16 end to end / model-only          {result['vgg16_e2e_over_model_only']:.2f}x  (goal >= 0.95)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
