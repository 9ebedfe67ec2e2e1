"""The seeded, stratified hold-out of a share of the rows (whole groups: an image with its augmented views)."""

from __future__ import annotations

from typing import Any

import numpy as np


def holdout(
    labels: Any,
    fraction: float,
    *,
    groups: Any = None,
    random_state: int | None = 0,
    fallback: bool = False,
    singles_to_train: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (train, held), holding out `fraction` of the groups, stratified by label.

    Parameters
    ----------
    labels : array-like of shape (n_samples,)
        Class labels or codes; the rows of one group share one label.
    fraction : float
        Share of the groups held out, in (0, 1). At least one group of each class is held out.
    groups : array-like of shape (n_samples,), default=None
        Rows of one group (an image and its augmented views) land on the same side; None: each row alone.
    random_state : int or None, default=0
        Seeds the split.
    fallback : bool, default=False
        When a class has fewer than 2 groups (it cannot be on both sides), split without stratifying instead
        of raising.
    singles_to_train : bool, default=False
        Keep every group of a class with fewer than 2 groups in train (it cannot be on both sides, and held out
        it would be a class the model never learns) and stratify the other classes; nothing is held out when no
        class has 2 groups. Takes precedence over `fallback`.

    Returns
    -------
    train, held : ndarray of int
        Sorted row indices.

    Raises
    ------
    ValueError
        When `fraction` is out of range, the shapes differ, or (without `fallback`) a class has fewer than
        2 groups.
    """
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    if not 0 < fraction < 1:
        raise ValueError(f"`fraction` must be in (0, 1). Received: fraction={fraction!r}")
    groups = np.arange(len(labels)) if groups is None else np.asarray(groups)
    if groups.shape != labels.shape:
        raise ValueError(f"`groups` must have shape ({len(labels)},). Received: groups.shape={groups.shape}")
    names, first = np.unique(groups, return_index=True)
    group_labels = labels[first]
    classes, counts = np.unique(group_labels, return_counts=True)
    if singles_to_train and counts.min() < 2:
        splittable = np.isin(labels, classes[counts >= 2])
        if not splittable.any():
            return np.arange(len(labels)), np.arange(0)
        rows = np.flatnonzero(splittable)
        train, held = holdout(labels[rows], fraction, groups=groups[rows], random_state=random_state)
        return np.sort(np.concatenate([np.flatnonzero(~splittable), rows[train]])), rows[held]
    stratify = group_labels if counts.min() >= 2 else None
    if stratify is None and not fallback:
        raise ValueError("every class needs at least 2 groups to hold some out. "
                         f"Received: a class with {counts.min()} group")
    n_held = max(int(round(fraction * len(names))), len(counts) if stratify is not None else 1)
    if stratify is not None and len(names) - n_held < len(counts):  # scikit-learn's "The train_size = 1 should be ..."
        raise ValueError(f"holding out {fraction:g} of {len(names)} images ({n_held}) leaves {len(names) - n_held} to "
                         f"train on, fewer than the {len(counts)} classes; hold out a smaller fraction")
    _, held = train_test_split(names, test_size=n_held, stratify=stratify, random_state=random_state)
    is_held = np.isin(groups, held)
    return np.flatnonzero(~is_held), np.flatnonzero(is_held)
