"""The image index: which files to extract, in which order, with their labels and splits.

Built from a CSV (`filename` required; `label`, `split` optional; extra columns kept) or from class folders.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pandas as pd

from .errors import IndexValidationError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLIT_NAMES = ("train", "val", "test")
_SPLIT_ALIASES = {"validation": "val", "valid": "val"}


@dataclass(frozen=True)
class ImageIndex:
    """Rows to extract, in index order (never shuffled).

    Attributes
    ----------
    root : Path
        The images root; every id is a path relative to it.
    frame : pandas.DataFrame
        One row per image with the columns `id`, `label` ("" when unlabelled), `split` ("" when none) and any
        extra columns of the CSV.
    source : str
        Where the index came from (the CSV path or the folder), for messages.
    left_out : tuple of str
        The folders of a `root/{train,val,test}/<class>/*` index, beside its split folders, that hold images but
        name no split, so are not in it (for a note); () otherwise.
    """

    root: Path
    frame: pd.DataFrame
    source: str
    left_out: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def ids(self) -> list[str]:
        return self.frame["id"].tolist()

    @property
    def labels(self) -> list[str]:
        return self.frame["label"].tolist()

    @property
    def split(self) -> list[str]:
        return self.frame["split"].tolist()

    @property
    def paths(self) -> list[Path]:
        return [self.root / i for i in self.ids]

    @property
    def classes(self) -> list[str]:
        """The sorted distinct non-empty labels."""
        return sorted({lab for lab in self.labels if lab})

    @property
    def has_labels(self) -> bool:
        return any(self.labels)

    def sha256(self) -> str:
        """Hash of the rows (id, label, split): a changed index never reuses another index's store."""
        h = hashlib.sha256()
        for row in self.frame[["id", "label", "split"]].itertuples(index=False):
            h.update("\x1f".join(row).encode("utf-8") + b"\x1e")
        return h.hexdigest()


def read_index(source, images_root=None) -> ImageIndex:
    """Read an index from a CSV file or from a folder of class subfolders.

    Parameters
    ----------
    source : str or Path
        A CSV with a `filename` column, or a folder laid out as `root/<class>/*` or
        `root/{train,val,test}/<class>/*` (split folders named as a CSV's split values are: in any case, `valid`
        or `validation` for `val`; when one of them holds a class folder with an image, they are the index, and
        other folders beside them are not; when none does, a folder named `test` is a class like the others).
    images_root : str or Path, optional
        The folder the CSV's filenames are relative to; defaults to the CSV's own folder.

    Returns
    -------
    ImageIndex
    """
    source = Path(source)
    if source.is_dir():
        if images_root is not None and Path(images_root).resolve() != source.resolve():
            raise IndexValidationError(
                f"`images_root` is only used with a CSV index; {source} is a folder. Received: images_root={images_root}"
            )
        return _index_from_folders(source)
    if not source.exists():
        raise IndexValidationError(f"the index {source} does not exist (give a CSV file, a folder of class folders or a folder of images)")
    root = Path(images_root) if images_root is not None else source.parent
    if not root.is_dir():
        raise IndexValidationError(f"the images root {root} is not a folder")
    return _index_from_csv(source, root)


def _extra_field(csv_path: Path) -> str:
    """The line of a CSV whose rows have more fields than its header, as pandas says of a row with two more."""
    import csv

    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = csv.reader(f)
        header = len(next(rows))
        for row in rows:
            if len(row) > header:
                return (f"{csv_path} is not a readable CSV: Expected {header} fields in line {rows.line_num}, saw "
                        f"{len(row)} (a comma too many, or a column without a header)")
    return f"{csv_path} is not a readable CSV: its rows have more fields than its header"


def _index_from_csv(csv_path: Path, root: Path) -> ImageIndex:
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise IndexValidationError(f"{csv_path} is not a readable CSV: {err}") from err
    if not isinstance(df.index, pd.RangeIndex):  # every row has one field more than the header: pandas made the
        raise IndexValidationError(_extra_field(csv_path))  # first column the row index, shifting the others
    df.columns = [str(c).strip() for c in df.columns]
    if "filename" not in df.columns:
        raise IndexValidationError(
            f"{csv_path}: the CSV must have a `filename` column. Received columns: {list(df.columns)}"
        )
    if "id" in df.columns:
        raise IndexValidationError(f"{csv_path}: the column name `id` is reserved; rename it")
    if len(df) == 0:
        raise IndexValidationError(f"{csv_path}: the index has no rows")
    frame = pd.DataFrame({"id": df["filename"].str.strip()})
    frame["label"] = df["label"].str.strip() if "label" in df.columns else ""
    frame["split"] = df["split"].str.strip().map(split_name) if "split" in df.columns else ""
    extra = df.drop(columns=[c for c in ("filename", "label", "split") if c in df.columns])
    frame = pd.concat([frame, extra.reset_index(drop=True)], axis=1)
    _validate(frame, csv_path, root, label_required="label" in df.columns)
    frame["id"] = [_normalise(i) for i in frame["id"]]
    return ImageIndex(root=root, frame=frame, source=str(csv_path))


def split_name(value: str) -> str:
    """A split as written (a CSV's split value, a split folder's name) as the index stores it: in lower case, with
    `valid` and `validation` as `val`; an unknown name is returned lowered, for the caller to refuse or pass by."""
    value = value.lower()
    return _SPLIT_ALIASES.get(value, value)


def _normalise(rel: str) -> str:
    return PurePosixPath(rel.replace("\\", "/")).as_posix()


def _validate(frame: pd.DataFrame, csv_path: Path, root: Path, label_required: bool) -> None:
    """Raise IndexValidationError naming the first bad row (rows count from 2: line 1 is the header)."""
    seen: dict[str, int] = {}
    for pos, (rel, label, split) in enumerate(zip(frame["id"], frame["label"], frame["split"])):
        line = pos + 2
        where = f"{csv_path}, line {line}"
        if not rel:
            raise IndexValidationError(f"{where}: empty filename")
        for name, value in (("filename", rel), ("label", label), ("split", split)):
            if "\x00" in value:  # HDF5 strings cannot hold it: refused here, before any model is built
                raise IndexValidationError(f"{where}: the {name} {value!r} holds a NUL character")
        norm = _normalise(rel)
        # the path as written must stay under the root; a symlink under the root may point anywhere (a folder of
        # links into a shared dataset), and one that leads nowhere is a failed row, as a missing file is
        if PurePosixPath(norm).is_absolute() or posixpath.normpath(norm).split("/")[0] == "..":
            raise IndexValidationError(f"{where}: the path {rel!r} escapes the images root {root}")
        if norm in seen:
            raise IndexValidationError(f"{where}: duplicate filename {rel!r} (first seen on line {seen[norm]})")
        seen[norm] = line
        if label_required and not label:
            raise IndexValidationError(f"{where}: blank label for {rel!r}")
        if split and split not in SPLIT_NAMES:
            raise IndexValidationError(
                f"{where}: `split` must be one of 'train', 'val', 'test' or empty. Received: split={split!r}"
            )


def _index_from_folders(root: Path) -> ImageIndex:
    split_dirs = _split_folders(root)
    if not any(_holds_an_image(c) for _, d in split_dirs for c in _subfolders(d)):  # no class folder in them: a
        split_dirs = []  # class named Test (images directly in it) beside the others, not a split
    rows, left_out = [], ()
    if split_dirs:
        for split, split_dir in split_dirs:
            rows += _class_rows(root, split_dir, split)
        named = {d.name for _, d in split_dirs}
        left_out = tuple(p.name for p in _subfolders(root) if p.name not in named and _holds_an_image(p))
    else:
        rows = _class_rows(root, root, "")
    if not rows:  # a flat folder, e.g. new images to predict: unlabelled rows
        rows = [(p.name, "", "") for p in sorted(root.iterdir()) if _is_image_entry(p) and not p.name.startswith(".")]
    if not rows:
        raise IndexValidationError(
            f"{root}: no images found; expected root/<class>/<image>, root/{{train,val,test}}/<class>/<image> or "
            "images directly in it (unlabelled), or give a CSV index with a filename column"
        )
    frame = pd.DataFrame(rows, columns=["id", "label", "split"])
    return ImageIndex(root=root, frame=frame, source=str(root), left_out=left_out)


def _split_folders(root: Path) -> list[tuple[str, Path]]:
    """The folders of `root` that name a split, as (split, folder) in the order train, val, test; two folders of
    one split (`val` and `valid`, `Train` and `train`) are refused: which one is meant is not known."""
    found: dict[str, list[Path]] = {}
    for folder in _subfolders(root):
        split = split_name(folder.name)
        if split in SPLIT_NAMES:
            found.setdefault(split, []).append(folder)
    for split, folders in found.items():
        if len(folders) > 1:
            names = ", ".join(f.name for f in folders[:-1]) + f" and {folders[-1].name}"
            raise IndexValidationError(f"{root}: the folders {names} are {'both' if len(folders) == 2 else 'all'} "
                                       f"split {split!r}; keep one of them "
                                       "(or give a CSV index with a split column)")
    return [(s, found[s][0]) for s in SPLIT_NAMES if s in found]


def _subfolders(base: Path) -> list[Path]:
    """The folders in `base`, sorted, hidden ones left out."""
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_image_entry(path: Path) -> bool:
    """A file with an image suffix, or a link so named that leads to no file: a row (failed when unreadable), as a
    CSV's broken link is; it was left out of a folder index without a word."""
    return path.suffix.lower() in IMAGE_SUFFIXES and (path.is_file() or (path.is_symlink() and not path.exists()))


def _images_under(folder: Path):
    """The images under `folder` at any depth; hidden files and folders (a Mac's `._x.jpg`, `.thumbnails/`) left
    out, as they are in a flat folder and among the class folders."""
    return (f for f in folder.rglob("*")
            if _is_image_entry(f) and not any(part.startswith(".") for part in f.relative_to(folder).parts))


def _holds_an_image(folder: Path) -> bool:
    return any(_images_under(folder))


def _class_rows(root: Path, base: Path, split: str) -> list[tuple[str, str, str]]:
    return [(f.relative_to(root).as_posix(), class_dir.name, split)
            for class_dir in _subfolders(base) for f in sorted(_images_under(class_dir))]
