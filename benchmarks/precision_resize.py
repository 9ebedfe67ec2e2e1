"""What the decoder, the resize mode, the compute precision and the storage dtype change: linear-probe accuracy on
scikit-learn's real digits, and bf16/fp16 against fp32 throughput, side by side in one run.

    python benchmarks/precision_resize.py --workdir /tmp/fh/pr --json /tmp/precision_resize.json

Data: the 1797 digits, each 8x8 image upscaled (bilinear) to 240x240 and set on a 320x240 black canvas
(centred), saved as JPEG (quality 90): big enough that the decoder's DCT-domain downscaling is used, and
non-square, so `squash` and `crop` differ. Features: VGG16 at 64 px, average pooling, **random-init weights
(seed 0): not pretrained**; the probe's absolute accuracy means little, the differences between settings are the
point. Probe: `LogisticRegression(max_iter=2000)` on standardised features, 5-fold stratified CV accuracy.

Settings (each against the first):
- `pillow_full_squash`: the previous decoder (Pillow full-size decode, antialiased bilinear resize), fp32;
- `turbo_pillow_squash`: the fallback without OpenCV (libjpeg-turbo DCT-domain downscale by 1/8, 1/4 or 1/2,
  then Pillow's antialiased bilinear resize), fp32;
- `turbo_linear_squash`: session 4's decoder (the smallest n/8 DCT scale, one OpenCV bilinear pass), fp32;
- `turbo_squash`: this decoder (DCT-domain downscale by 1/8, 1/4 or 1/2, then OpenCV's pyramid: a bilinear pass
  of at most 2x, then exact 2x halvings), fp32;
- `turbo_crop`: the same with `--resize crop`;
- `turbo_squash_bf16`, `turbo_squash_fp16`: `--precision bfloat16` / `float16`;
- `turbo_squash_store_fp16`: fp32 features stored as float16 (`--dtype float16`) and read back.
Throughput: the forward pass alone over the same decoded images, fp32, bf16 and fp16.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_digits(root: Path) -> tuple[list[str], np.ndarray]:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        path = root / f"{i:04d}_{label}.jpg"
        paths.append(str(path))
        if path.exists():
            continue
        small = Image.fromarray((img * (255 / 16)).astype(np.uint8)).resize((240, 240), Image.Resampling.BILINEAR)
        canvas = Image.new("L", (320, 240))
        canvas.paste(small, (40, 0))
        canvas.convert("RGB").save(path, quality=90)
    return paths, digits.target


def pillow_full(paths, size) -> np.ndarray:
    """The previous decoder: Pillow at full size, then the antialiased bilinear resize."""
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
    return out


def turbo_linear(paths, size) -> np.ndarray:
    """Session 4's decoder (`input_pipeline.session4_load`) on every path."""
    from input_pipeline import session4_load

    return np.stack([session4_load(p, size) for p in paths])


def turbo_pillow(paths, size) -> np.ndarray:
    """The DCT-domain downscale (1/8, 1/4, 1/2), then Pillow's antialiased bilinear resize: what `extract.images`
    does on a machine without OpenCV (issue 11's first decoder used every n/8 scale)."""
    import extract.images as images
    from extract import read_batch

    saved, images.cv2 = images.cv2, None
    try:
        return read_batch(paths, size)[0]
    finally:
        images.cv2 = saved


def probe(features: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    return float(cross_val_score(clf, features, y, cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default="/tmp/fh/pr")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    from extract import get_extractor, read_batch

    paths, y = make_digits(Path(args.workdir) / "digits320x240")
    size = args.size
    decoded = {
        "pillow_full_squash": pillow_full(paths, size),
        "turbo_pillow_squash": turbo_pillow(paths, size),
        "turbo_linear_squash": turbo_linear(paths, size),
        "turbo_squash": read_batch(paths, size)[0],
        "turbo_crop": read_batch(paths, size, resize="crop")[0],
    }
    extractors = {prec: get_extractor("vgg16", weights="none", input_size=size, pooling="avg", precision=prec)
                  for prec in ("float32", "bfloat16", "float16")}
    for e in extractors.values():
        e(decoded["turbo_squash"][:1])  # build and compile outside the timings
    results, timings = {}, {}
    for name, images in decoded.items():
        results[name] = probe(extractors["float32"](images), y)
    for prec, label in (("bfloat16", "turbo_squash_bf16"), ("float16", "turbo_squash_fp16")):
        results[label] = probe(extractors[prec](decoded["turbo_squash"]), y)
    fp32 = extractors["float32"](decoded["turbo_squash"])
    results["turbo_squash_store_fp16"] = probe(fp32.astype(np.float16).astype(np.float32), y)
    for prec, e in extractors.items():
        t = time.perf_counter()
        e(decoded["turbo_squash"])
        timings[prec] = len(paths) / (time.perf_counter() - t)
    base = results["pillow_full_squash"]
    print(f"linear-probe 5-fold accuracy, digits ({len(paths)}), VGG16 random init (NOT pretrained), {size} px, avg")
    for name, acc in results.items():
        print(f"  {name:26s} {acc:.4f}  ({acc - base:+.4f} against pillow_full_squash)")
    print("forward pass only, img/s: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"  bf16 / fp32 {timings['bfloat16'] / timings['float32']:.2f}x, "
          f"fp16 / fp32 {timings['float16'] / timings['float32']:.2f}x")
    diffs = {}
    for name in ("turbo_pillow_squash", "turbo_linear_squash", "turbo_squash"):
        diff = np.abs(decoded[name].astype(int) - decoded["pillow_full_squash"].astype(int))
        diffs[name] = float(diff.mean())
        print(f"pixels, {name} against pillow_full_squash: mean |diff| {diff.mean():.2f}, max {diff.max()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": size, "accuracy": results, "img_per_s": timings,
                                               "pixel_mean_abs_diff": diffs}, indent=2))


if __name__ == "__main__":
    main()
