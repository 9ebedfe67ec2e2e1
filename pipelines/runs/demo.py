"""The offline demo: scikit-learn's real handwritten digits as PNG files, through both stages, end to end."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from extract import WeightsUnavailableError, get_extractor, read_index

from .extraction import run_extract
from .prediction import run_evaluate
from .training import run_train

logger = logging.getLogger(__name__)


@dataclass
class DemoResult:
    workdir: Path
    weights: str
    store: Path
    accuracy: dict = field(default_factory=dict)
    bundles: dict = field(default_factory=dict)
    reports: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)


def write_digits(workdir, *, scale: int = 4, random_state: int = 0) -> Path:
    """Write the 1797 digits as PNG files (8x8 scaled up `scale` times) and `index.csv` with a 60/20/20 split.

    Returns the index path.
    """
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    workdir = Path(workdir)
    (workdir / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        name = f"images/{label}/{i:04d}.png"
        (workdir / "images" / str(label)).mkdir(exist_ok=True)
        pixels = np.kron((img * (255.0 / 16.0)).round().astype(np.uint8), np.ones((scale, scale), np.uint8))
        Image.fromarray(pixels, "L").save(workdir / name)
        rows.append((name, str(label)))
    frame = pd.DataFrame(rows, columns=["filename", "label"])
    idx = np.arange(len(frame))
    train, rest = train_test_split(idx, test_size=0.4, stratify=frame["label"], random_state=random_state)
    val, test = train_test_split(rest, test_size=0.5, stratify=frame["label"][rest], random_state=random_state)
    frame["split"] = ""
    frame.loc[train, "split"], frame.loc[val, "split"], frame.loc[test, "split"] = "train", "val", "test"
    path = workdir / "index.csv"
    frame.to_csv(path, index=False)
    return path


def choose_extractor(*, input_size: int = 64, batch_size: int = 32, weights: str = "imagenet"):
    """VGG16 with ImageNet weights when they can be had, else random init; returns (extractor, note)."""
    extractor = get_extractor("vgg16", weights=weights, input_size=input_size, batch_size=batch_size)
    try:
        extractor.model  # noqa: B018  (builds it: loads or downloads the weights now)
        return extractor, None
    except WeightsUnavailableError as err:
        if weights != "imagenet":
            raise
        fallback = get_extractor("vgg16", weights="none", input_size=input_size, batch_size=batch_size)
        return fallback, f"ImageNet weights unavailable, so this demo uses RANDOM-INIT VGG16: {err}"


def run_demo(workdir, *, input_size: int = 64, weights: str = "imagenet", epochs: int = 30, progress=None) -> DemoResult:
    """Digits -> VGG16 features -> logistic regression and the 1000-500-150 MLP, evaluated on held-out digits.

    The store, heads and reports are named by the extractor's fingerprint, so a run with other options (input
    size, weights) adds its own beside those of earlier runs, and a repeated run finds its store up to date.
    """
    workdir = Path(workdir)
    index_path = write_digits(workdir)
    index = read_index(index_path)
    extractor, note = choose_extractor(input_size=input_size, weights=weights)
    result = DemoResult(workdir=workdir, weights=extractor.weights_source(), store=Path())
    if note:
        result.notes.append(note)
    tag = extractor.fingerprint()[:12]
    extraction = run_extract(index, extractor, workdir / f"digits.vgg16-{tag}", progress=progress)
    result.store = extraction.store
    for head, params in (("logreg", {}), ("mlp", {"epochs": epochs})):
        trained = run_train(extraction.store, workdir / f"head-{head}-{tag}", head=head, params=params)
        metrics = run_evaluate(trained.bundle, extraction.store, workdir / f"eval-{head}-{tag}", split="test")
        result.accuracy[head] = metrics["accuracy"]
        result.bundles[head] = trained.bundle
        result.reports[head] = workdir / f"eval-{head}-{tag}"
    return result
