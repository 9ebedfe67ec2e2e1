"""The four-scenario transfer-learning guidance: dataset size x similarity to ImageNet -> a strategy and its commands.

`choose_strategy` is the pure decision; `advise` adds the reasons and the exact featurehead commands.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

import numpy as np

# "Small" means fewer labelled training images than this in the smallest class. A thousand per class is the
# scale at which the Keras "very little data" recipe (frozen base, augmentation) stops being the safe choice;
# below it a fully trainable VGG (14.7M weights) overfits.
SMALL_PER_CLASS = 1000
SIMILARITIES = ("high", "low")

STRATEGIES = {
    ("small", "high"): (
        "frozen base + linear head",
        "few images and ImageNet-like content: the frozen features already separate the classes, and anything "
        "more flexible than a linear head would overfit",
    ),
    ("small", "low"): (
        "freeze the early layers, train the rest, with augmentation",
        "few images of unusual content: the early layers (edges, textures) transfer, the late ones do not; "
        "augmented views stretch the few images while the top blocks adapt",
    ),
    ("large", "low"): (
        "train the full architecture",
        "many images of unusual content: there is enough data to adapt every layer; the pretrained weights are "
        "only a starting point",
    ),
    ("large", "high"): (
        "fine-tune the top blocks",
        "many images, ImageNet-like content: the generic layers are already right; fine-tuning the top block at "
        "a low learning rate gains accuracy without the risk of overfitting",
    ),
}


@dataclass(frozen=True)
class Advice:
    """A strategy for one (size, similarity) scenario, with the commands that carry it out."""

    size: str
    similarity: str
    n_per_class: int
    strategy: str
    reason: str
    commands: tuple[str, ...]


def choose_strategy(n_per_class: int, similarity: str, *, small_threshold: int = SMALL_PER_CLASS) -> tuple[str, str]:
    """Classify a scenario (pure).

    Parameters
    ----------
    n_per_class : int
        Labelled training images in the smallest class.
    similarity : {"high", "low"}
        How close the images are to ImageNet photos.
    small_threshold : int, default=SMALL_PER_CLASS
        Below this many images per class, the dataset is "small".

    Returns
    -------
    (size, similarity) : tuple of str
        A key of `STRATEGIES`.
    """
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, (int, np.integer)) or n_per_class < 0:
        raise ValueError(f"`n_images` must be a non-negative integer. Received: n_images={n_per_class!r}")
    if similarity not in SIMILARITIES:
        raise ValueError(f"`similarity` must be one of 'high', 'low'. Received: similarity={similarity!r}")
    return ("small" if n_per_class < small_threshold else "large"), similarity


def strategy_commands(key: tuple[str, str], *, index: str = "INDEX", model: str = "vgg16",
                      has_test: bool = False) -> tuple[str, ...]:
    """The featurehead commands that carry out the strategy of `key`, for `index` and `model`; `has_test`: the index
    names 'test' rows, which `evaluate` then scores (without it, the head's own held-out rows)."""
    vgg = model in ("vgg16", "vgg19")
    top_block = "--unfreeze-from block5_conv1" if vgg else "--unfreeze 2"
    late_blocks = "--unfreeze-from block4_conv1" if vgg else "--unfreeze 4"
    extract = f"featurehead extract {index} --model {model} --out feats/"
    mlp = "featurehead train feats/ --head mlp --out head-mlp/"
    if key == ("small", "high"):
        return (extract, "featurehead train feats/ --head logreg --out head/",
                f"featurehead evaluate head/ feats/{' --split test' if has_test else ''} --out report/")
    if key == ("small", "low"):
        return (f"featurehead augment-preview {index} --rotation 0.1 --zoom 0.1 --out augment.png",
                f"featurehead extract {index} --model {model} --augment 4 --rotation 0.1 --zoom 0.1 --out feats/",
                mlp, f"featurehead finetune head-mlp/ {late_blocks} --augment --epochs 10 --out finetuned/")
    if key == ("large", "low"):
        return (extract, mlp,
                "featurehead finetune head-mlp/ --unfreeze all --learning-rate 1e-4 --epochs 20 --out finetuned/")
    return (extract, mlp, f"featurehead finetune head-mlp/ {top_block} --epochs 5 --out finetuned/")


def advise(n_per_class: int, similarity: str, *, index: str = "INDEX", model: str = "vgg16",
           small_threshold: int = SMALL_PER_CLASS, has_test: bool = False) -> Advice:
    """The strategy, its reason and its commands for a scenario (`has_test`: the index names 'test' rows)."""
    key = choose_strategy(n_per_class, similarity, small_threshold=small_threshold)
    strategy, reason = STRATEGIES[key]
    return Advice(key[0], key[1], int(n_per_class), strategy, reason,
                  strategy_commands(key, index=index, model=model, has_test=has_test))


def images_per_class(labels, split) -> int:
    """Labelled images in the smallest class, counting only "train" rows when the index has a split column (a
    class with no train row counts 0) (pure)."""
    labels, split = np.asarray(labels, dtype=str), np.asarray(split, dtype=str)
    classes = np.unique(labels[labels != ""])
    if len(classes) < 2:
        raise ValueError(f"the index must have at least 2 labelled classes to advise on. Received: classes "
                         f"{classes.tolist()}")
    has_split = np.isin(split, ("train", "val", "test")).any()
    keep = (labels != "") & ((split == "train") if has_split else True)  # val/test never count as training data
    counts = dict(zip(*np.unique(labels[keep], return_counts=True)))
    empty = [str(c) for c in classes if counts.get(c, 0) == 0]
    if empty:  # advice "for 0 images" led to commands that train without those classes, or refuse
        raise ValueError(f"the index has no 'train' rows of {len(empty)} of its {len(classes)} classes "
                         f"({', '.join(map(repr, empty[:5]))}{', ...' if len(empty) > 5 else ''}): the heads train on "
                         "'train' rows only (val and test rows never count); give those classes training images")
    return int(min(counts[c] for c in classes))


def run_advise(*, n_images: int | None = None, similarity: str, index=None, images_root=None, model: str = "vgg16",
               small_threshold: int = SMALL_PER_CLASS) -> Advice:
    """Advise from a per-class count, or from an index whose smallest class is counted."""
    if (n_images is None) == (index is None):
        raise ValueError("give exactly one of `--n-images` and `--index`. "
                         f"Received: n_images={n_images!r}, index={index!r}")
    from extract.backbones import BACKBONES

    if model not in BACKBONES:  # the advice weighs the images against ImageNet: a pretrained backbone's
        raise ValueError(f"`--model` must be a keras.applications backbone, as `featurehead models` lists them (the "
                         f"advice is about ImageNet-pretrained features). Received: --model {model}")
    if index is not None:
        from extract import read_index

        frame = read_index(index, images_root)
        n_images = images_per_class(frame.labels, frame.split)
        has_test = "test" in frame.split
    else:
        has_test = False
    # what the commands take as their index: with its --images-root, quoted for the shell
    source = "INDEX" if index is None else shlex.join(
        [str(index), *(["--images-root", str(images_root)] if images_root is not None else [])])
    return advise(n_images, similarity, index=source, model=model, small_threshold=small_threshold, has_test=has_test)


def format_advice(advice: Advice, small_threshold: int = SMALL_PER_CLASS) -> str:
    """Human-readable advice: the scenario, the strategy, why, and the commands."""
    images = "image" if advice.n_per_class == 1 else "images"
    lines = [f"scenario: {advice.size} dataset ({advice.n_per_class} {images} in the smallest class; small means "
             f"< {small_threshold} per class), {advice.similarity} similarity to ImageNet",
             f"strategy: {advice.strategy}", f"why: {advice.reason}", "commands:"]
    return "\n".join(lines + [f"  {c}" for c in advice.commands])
