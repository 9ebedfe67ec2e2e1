"""Shared by the examples: write the first `n` of scikit-learn's real handwritten digits of some classes (by
default 0, 1 and 2) as small 32x32 PNG files."""

from pathlib import Path

import numpy as np
from PIL import Image


def digit_images(workdir, n=60, classes=(0, 1, 2)):
    """Write `n` digit images (of `classes`) under `workdir`; return (paths, labels)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    keep = np.flatnonzero(np.isin(digits.target, classes))[:n]
    root = Path(workdir) / "digits"
    paths, labels = [], []
    for i in keep:
        path = root / str(digits.target[i]) / f"{i:04d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            gray = (digits.images[i] * (255 / 16)).astype(np.uint8)
            Image.fromarray(gray).resize((32, 32), Image.Resampling.NEAREST).convert("RGB").save(path)
        paths.append(str(path))
        labels.append(str(digits.target[i]))
    return paths, np.array(labels)


# weights="none" keeps the examples offline (random-init VGG16: NOT pretrained); use "imagenet" for real work
EXTRACTOR = dict(model="vgg16", weights="none", input_size=32, pooling="avg", batch_size=16)
