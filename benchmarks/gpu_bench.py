"""VGG16 from JPEGs on a GPU under one Keras backend: featurehead end to end, its model-only forward, and
seed-style code (every image into memory, then `model.predict`), fp32 and bf16. Run by benchmarks/gpu.sh, once
per backend (KERAS_BACKEND=jax / torch), on the lent GPU machine; also runs on a CPU with small --n/--size.

    KERAS_BACKEND=jax python benchmarks/gpu_bench.py --n 2000 --size 224 --json out.json

The weights are a seeded random init (`weights="none"`): the cost of a forward pass does not depend on the
weights, and no ImageNet download is possible there. These are speed figures, never accuracy.
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


def make_jpegs(root: Path, n: int, photos_dir: Path | None) -> list[str]:
    """n JPEGs of 500x375 cut from the two scikit-learn photos (carried as files), or synthetic if absent."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    photos = []
    if photos_dir is not None:
        photos = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(photos_dir.glob("*.jpg"))]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = root / ("a" if i % 2 else "b") / f"{i:05d}.jpg"
        paths.append(str(path))
        if path.exists():
            continue
        path.parent.mkdir(exist_ok=True)
        if photos:
            photo = photos[i % len(photos)]
            h, w = photo.shape[:2]
            s = rng.uniform(0.7, 1.0)
            ch, cw = int(h * s), int(w * s)
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            im = Image.fromarray(photo[y:y + ch, x:x + cw])
        else:
            base = np.linspace(0, 255, 500)[None, :, None] * rng.uniform(0.3, 1.0, (1, 1, 3))
            im = Image.fromarray((base + rng.normal(0, 20, (375, 500, 3))).clip(0, 255).astype(np.uint8))
        im.resize((500, 375), Image.Resampling.BILINEAR).save(path, quality=90)
    return paths


def device_of(backend: str) -> str:
    """What the forward pass runs on: "gpu: <name>" or "cpu"."""
    if backend == "jax":
        import jax

        d = jax.devices()[0]
        return f"gpu: {d.device_kind}" if d.platform in ("gpu", "cuda") else d.platform
    if backend == "torch":
        import torch

        return f"gpu: {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"
    return "unknown"


def seed_style(paths, size: int, precision: str) -> dict:
    """The seed's code: load every image (Pillow, one by one), preprocess_input, one model.predict. Timed cold (as
    the seed runs: under jax its first predict compiles, twice: batch 32 and the last partial batch) and again warm
    (the same predict repeated), so that a compile is not counted as the seed's forward speed."""
    import keras
    from PIL import Image

    from extract.layers import dtype_policy

    with dtype_policy(precision):
        model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
    t = time.perf_counter()
    x = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size)), dtype=np.float32) for p in paths])
    x = keras.applications.vgg16.preprocess_input(x)
    out = model.predict(x, verbose=0)
    assert len(out) == len(paths)
    cold = len(paths) / (time.perf_counter() - t)
    t = time.perf_counter()
    model.predict(x, verbose=0)
    return {"seed_style_img_s": cold, "seed_style_predict_warm_img_s": len(paths) / (time.perf_counter() - t)}


def float32_math(backend: str) -> str:
    """What "float32" means for the convolutions on this device: on an A100/H100 both backends default to TF32."""
    if backend == "torch":
        import torch

        return f"torch.backends.cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"
    if backend == "jax":
        import jax

        return f"jax_default_matmul_precision={jax.config.jax_default_matmul_precision}"
    return "unknown"


def versions(backend: str) -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("keras", "numpy", "jax" if backend == "jax" else backend)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workdir", default="/tmp/fh-gpu")
    p.add_argument("--photos", default=None, help="folder with the sample JPEGs to cut images from")
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--torch-compile", action="store_true", help="torch only: also time torch.compile")
    p.add_argument("--json", default=None)
    p.add_argument("--require-gpu", action="store_true", help="stop at once if the backend sees no GPU")
    args = p.parse_args(argv)

    import keras

    from extract import get_extractor, read_batch, read_index
    from extract.batches import default_workers
    from extract.forward import make_forward
    from extract.images import DECODER
    from pipelines.runs.extraction import run_extract

    backend = keras.backend.backend()
    device = device_of(backend)
    if args.require_gpu and not device.startswith("gpu"):
        sys.exit(f"{backend}: NO GPU visible to this backend (device: {device}); stopping, no CPU figures reported")
    work = Path(args.workdir)
    paths = make_jpegs(work / f"jpeg{args.n}", args.n, Path(args.photos) if args.photos else None)
    index = read_index(work / f"jpeg{args.n}")
    t = time.perf_counter()
    images, _, _ = read_batch(paths, args.size, executor=None)
    decode_1core = len(paths) / (time.perf_counter() - t)
    result = {"backend": backend, "n": args.n, "size": args.size, "batch_size": args.batch_size,
              "cores": default_workers(), "decoder": DECODER, "decode_1core_img_s": decode_1core, "device": device,
              "float32_math": float32_math(backend),
              "weights": "random init (seeded), speed only: no accuracy", "versions": versions(backend),
              "runs": {}}
    print(f"{backend} on {device}, VGG16 RANDOM-INIT weights (speed only): {args.n} JPEGs 500x375 -> {args.size}, "
          f"batch {args.batch_size}, {default_workers()} cores; "
          f"decoder {DECODER}, decode+resize on 1 core {decode_1core:.0f} img/s", flush=True)
    for precision in args.precisions.split(","):
        run = {}
        extractor = get_extractor("vgg16", weights="none", input_size=args.size, batch_size=args.batch_size,
                                  precision=precision)
        extractor(images[: args.batch_size])  # build and compile outside the timings
        t = time.perf_counter()
        extractor(images)
        run["model_only_img_s"] = args.n / (time.perf_counter() - t)
        if backend == "torch" and args.torch_compile:
            forward = make_forward(extractor.model, args.batch_size, extractor.input_shape, compile=True)
            forward.run(images[: args.batch_size])
            t = time.perf_counter()
            forward.run(images)
            run["model_only_torch_compile_img_s"] = args.n / (time.perf_counter() - t)
        store = work / f"store-{backend}-{precision}"
        shutil.rmtree(store, ignore_errors=True)
        t = time.perf_counter()
        run_extract(index, extractor, store)
        run["end_to_end_img_s"] = args.n / (time.perf_counter() - t)
        run["e2e_over_model_only"] = run["end_to_end_img_s"] / run["model_only_img_s"]
        run.update(seed_style(paths, args.size, precision))
        run["ours_over_seed_style"] = run["end_to_end_img_s"] / run["seed_style_img_s"]
        result["runs"][precision] = run
        print(f"  {precision}: " + ", ".join(f"{k} {v:.2f}" for k, v in run.items()), flush=True)
        if args.json:  # after each precision: a timeout later keeps what was measured
            Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
