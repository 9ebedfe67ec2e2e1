"""The row planning of an extraction: which store rows an index has, their content keys, and its view.

`plan_rows` hashes the index's files (size and mtime spare unchanged ones) and lays out one row per image and
augmented view, each keyed by content; `view_args` turns that plan into the store's view of the index.
`default_store_path` names the store an index's extraction goes to.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import features_store
from extract import ImageIndex, canonical_json
from extract.augment import view_layout
from extract.content import content_keys, content_seed, view_key

from .views import AugmentedViews, store_identity, training_split


def default_store_path(index: ImageIndex, extractor, views: AugmentedViews | None = None) -> Path:
    """A store directory next to the index, naming the model and a short fingerprint (and the augmentation)."""
    src = Path(index.source)
    if src.is_dir() and src.name in ("", "..") or str(src) == ".":  # `.` has no name: the store went inside it
        src = src.resolve()
    stem, parent = (src.name, src.parent) if src.is_dir() else (src.stem, src.parent)
    if views is not None:
        stem = f"{stem}.aug{views.k}-{views_identity(views)[:8]}"
    return parent / features_store.default_store_name(stem, extractor.name, extractor.fingerprint())


def views_identity(views: AugmentedViews) -> str:
    import hashlib

    return hashlib.sha256(canonical_json(views.to_dict()).encode()).hexdigest()


def label_codes(labels, classes) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup.get(lab, -1) for lab in labels], dtype=np.int32)


@dataclass
class RowPlan:
    """The store rows of an index: each row's key, and how to compute a key's features."""

    keys: list[str]
    source: np.ndarray
    view: np.ndarray
    split: list[str]
    stats: dict  # size, mtime_ns, inode and ctime_ns of each row's file when it was hashed (-1 unknown)
    reasons: list[str]
    todo: dict = field(default_factory=dict)  # key -> (path, view number, seed, id)

    @property
    def n_keys(self) -> int:
        """The distinct keys of the rows (an image stored twice under two names is one key)."""
        return len(set(self.keys))

    @property
    def n_repeated(self) -> int:
        """Rows that repeat another row's image (its content key; unreadable rows, key "", are not counted)."""
        named = [k for k in self.keys if k]
        return len(named) - len(set(named))

    @property
    def n_unreadable(self) -> int:
        """Rows whose file could not be read when hashed (key ""): failed rows that no run stores."""
        return sum(1 for k in self.keys if not k)

    def hashed_stats(self, keys) -> list[tuple[int, int]]:
        """The (size, mtime_ns) each key's file had when it was hashed: the decoders check that it still has it
        (`extract.ImageChangedError`)."""
        first: dict = {}
        for key, size, mtime in zip(self.keys, self.stats["size"].tolist(), self.stats["mtime_ns"].tolist()):
            first.setdefault(key, (size, mtime))
        return [first[k] for k in keys]


def plan_rows(index: ImageIndex, store: Path, views: AugmentedViews | None, workers: int | None) -> RowPlan:
    """Hash the index's files (sparing those unchanged since the store's last view) and lay out the rows."""
    prev_root, known = (None, {})
    if store.is_dir():
        prev_root, known = features_store.read_file_keys(store)
    if prev_root is None or Path(prev_root).resolve() != index.root.resolve():
        known = {}  # another root: the same ids may be other files, so hash them all (extracting none)
    content, stats, reasons = content_keys(index.root, index.ids, known, workers=workers)
    split = index.split if views is None else training_split(index, views, keys=content)
    source, view = view_layout(split, 0 if views is None else views.k)
    aug = canonical_json(views.to_dict()) if views is not None else ""
    paths, ids = index.paths, index.ids
    keys, todo = [], {}
    for r, v in zip(source.tolist(), view.tolist()):
        base = content[r]
        key = base if (v == 0 or not base) else view_key(base, v, aug)
        keys.append(key)
        if key and key not in todo:
            todo[key] = (paths[r], v, content_seed(base), ids[r])
    return RowPlan(keys, source, view, list(split), {name: column[source] for name, column in stats.items()},
                   [reasons[r] for r in source.tolist()], todo)


def view_args(index: ImageIndex, plan: RowPlan, views: AugmentedViews | None) -> dict:
    """The `StoreSession.write_view` arguments of the current index."""
    classes = index.classes
    ids = np.asarray(index.ids, dtype=object)[plan.source]
    # absolute: `finetune` and `report` find the images from wherever they run (a relative root was relative to
    # where `extract` ran), and the next extract from another folder still takes the quick path
    attrs = {"index_source": os.path.abspath(index.source), "images_root": os.path.abspath(index.root)}
    if views is not None:
        attrs["augmentation"] = canonical_json(views.to_dict())
    return dict(ids=ids.tolist(), keys=plan.keys, labels=label_codes(index.labels, classes)[plan.source],
                classes=classes, split=np.asarray(plan.split, dtype=object)[plan.source].tolist(),
                view=plan.view, source=plan.source, stats=plan.stats, reasons=plan.reasons,
                attrs=attrs, index_sha256=store_identity(index, views))
