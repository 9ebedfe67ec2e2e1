"""The offline demo: scikit-learn's real handwritten digits as PNG files, through both stages, end to end."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from extract import WeightsUnavailableError, get_extractor, read_index
from features_store.durable import atomic_write_bytes, remove_dead_temporaries, write_error
from features_store.lock import folder_lock

from .extraction import run_extract
from .prediction import run_evaluate
from .training import run_train

logger = logging.getLogger(__name__)
DEMO_LOCK = ".featurehead-demo.lock"  # held in the demo's images/ while it runs: a second demo there stops at once


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

    A file of the same name that holds anything else (a user's own index.csv or image in the folder) is refused,
    in one line, before anything is written; the digits an earlier run wrote are kept as they are, and a file an
    earlier run was killed writing (a cut-off PNG or index) is written again. Each file is written to a temporary
    name and renamed, so a killed run never leaves a cut-off one. Returns the index path.
    """
    return _write_planned(_plan_digits(Path(workdir), scale=scale, random_state=random_state))


@dataclass
class _DigitsPlan:
    workdir: Path
    index: Path
    frame: pd.DataFrame
    todo: list  # (path, pixels) of the digits to write
    write_index: bool  # the index is missing or cut off


def _plan_digits(workdir: Path, *, scale: int = 4, random_state: int = 0) -> _DigitsPlan:
    """What `write_digits` writes into `workdir`, checked against what is there; reads only."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    rows, images = [], []
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        rows.append((f"images/{label}/{i:04d}.png", str(label)))
        images.append(np.kron((img * (255.0 / 16.0)).round().astype(np.uint8), np.ones((scale, scale), np.uint8)))
    frame = pd.DataFrame(rows, columns=["filename", "label"])
    idx = np.arange(len(frame))
    train, rest = train_test_split(idx, test_size=0.4, stratify=frame["label"], random_state=random_state)
    val, test = train_test_split(rest, test_size=0.5, stratify=frame["label"][rest], random_state=random_state)
    frame["split"] = ""
    frame.loc[train, "split"], frame.loc[val, "split"], frame.loc[test, "split"] = "train", "val", "test"
    path = workdir / "index.csv"
    index_found = _found_index(path, frame)
    if index_found == "other":
        raise ValueError(f"{path} is not the index the demo writes; refusing to write over it: give --out a new "
                         "folder (or one an earlier demo wrote)")
    todo = []
    for (name, _), pixels in zip(rows, images):
        found = _found_image(workdir / name, pixels)
        if found == "other":
            raise ValueError(f"{workdir / name} is not the digit the demo writes there; refusing to write over it: "
                             "give --out a new folder (or one an earlier demo wrote)")
        if found != "same":
            todo.append((workdir / name, pixels))
    return _DigitsPlan(workdir, path, frame, todo, write_index=index_found != "same")


def _write_planned(plan: _DigitsPlan) -> Path:
    names = {}  # folder -> the names the demo writes there
    for target, _ in plan.todo:
        names.setdefault(target.parent, set()).add(target.name)
    names.setdefault(plan.workdir, set()).add(plan.index.name)
    for folder, ours in names.items():
        remove_dead_temporaries(folder, ours.__contains__)  # a killed run's file, written but not renamed
    try:
        for target, pixels in plan.todo:
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, _png(pixels))  # a kill leaves no cut-off file
        if plan.write_index:
            atomic_write_bytes(plan.index, plan.frame.to_csv(index=False).encode())
    except OSError as err:  # a full disk: one line naming the file, as every other writer's
        raise write_error(err, store=str(plan.workdir), what=str(err.filename or plan.workdir)) from err
    return plan.index


def _found_index(path: Path, frame: pd.DataFrame) -> str:
    """"none" (no file), "same" (the demo's index, whole: ending in its last newline), "cut-off" (the start of
    it, as an earlier version left when killed while writing it in place) or "other" (a user's file); read once."""
    if not (path.exists() or path.is_symlink()):
        return "none"
    try:
        data = path.read_bytes()
    except OSError:  # a folder, a broken link, no permission
        return "other"
    try:
        found = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError):  # empty, or not a CSV
        found = None
    if (found is not None and data.endswith(b"\n") and list(found.columns) == list(frame.columns)
            and found.astype(str).equals(frame.astype(str))):
        return "same"
    cut = path.is_file() and not path.is_symlink() and frame.to_csv(index=False).encode().startswith(data)
    return "cut-off" if cut else "other"


def _found_image(path: Path, pixels: np.ndarray) -> str:
    """"none" (no file), "same" (this digit, whole), "cut-off" (the start of the PNG the demo writes, as an earlier
    version left when killed while writing it in place) or "other" (anything else: a user's file, a folder, a
    link)."""
    from PIL import Image

    if not (path.exists() or path.is_symlink()):
        return "none"
    if not path.is_file() or path.is_symlink():
        return "other"
    data = path.read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as im:
            same = im.mode == "L" and np.array_equal(np.asarray(im), pixels)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        same = False
    if same and data.endswith(_PNG_END):
        return "same"
    expected = _png(pixels)  # cut off: the start of this very PNG (it may decode to the same pixels, without its end)
    return "cut-off" if len(data) < len(expected) and expected.startswith(data) else "other"


_PNG_END = b"IEND\xaeB`\x82"  # a PNG's last chunk: a whole file ends with it


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


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


def run_demo(workdir, *, input_size: int = 64, weights: str = "imagenet", epochs: int = 30, progress=None,
             train_progress=None) -> DemoResult:
    """Digits -> VGG16 features -> logistic regression and the 1000-500-150 MLP, evaluated on held-out digits.

    The store, heads and reports are named by the extractor's fingerprint, so a run with other options (input
    size, weights) adds its own beside those of earlier runs, and a repeated run finds its store up to date.
    `progress` (tqdm-like factories) shows the extraction, `train_progress` the MLP's epochs.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:  # the MLP's wording, before any work
        raise ValueError(f"`epochs` must be a positive integer. Received: epochs={epochs!r}")
    get_extractor("vgg16", weights=weights, input_size=input_size).validate()  # its size, a weights file: also now
    workdir = Path(workdir)
    plan = _plan_digits(workdir)  # a folder of the user's own files is refused before anything is written
    (workdir / "images").mkdir(parents=True, exist_ok=True)
    busy = ValueError(f"{workdir} is being written by another featurehead demo; re-run when it has finished")
    with folder_lock(workdir / "images", DEMO_LOCK, timeout=0, busy=busy):  # in the demo's own images/
        return _run_demo(plan, input_size=input_size, weights=weights, epochs=epochs, progress=progress,
                         train_progress=train_progress)


def _run_demo(plan: _DigitsPlan, *, input_size: int, weights: str, epochs: int, progress,
              train_progress) -> DemoResult:
    workdir = plan.workdir
    index_path = _write_planned(plan)
    index = read_index(index_path)
    extractor, note = choose_extractor(input_size=input_size, weights=weights)
    result = DemoResult(workdir=workdir, weights=extractor.weights_source(), store=Path())
    if note:
        result.notes.append(note)
    tag = extractor.fingerprint()[:12]
    extraction = run_extract(index, extractor, workdir / f"digits.vgg16-{tag}", progress=progress)
    result.store = extraction.store
    for head, params in (("logreg", {}), ("mlp", {"epochs": epochs})):
        trained = run_train(extraction.store, workdir / f"head-{head}-{tag}", head=head, params=params,
                            progress=train_progress)  # the MLP's epochs on a bar
        metrics = run_evaluate(trained.bundle, extraction.store, workdir / f"eval-{head}-{tag}", split="test")
        result.accuracy[head] = metrics["accuracy"]
        result.bundles[head] = trained.bundle
        result.reports[head] = workdir / f"eval-{head}-{tag}"
    return result
