"""Stage two with a trained head: evaluate it on a store (`run_evaluate`), and predict new images through its
extractor (`run_predict`)."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

import classify
import features_store
from extract import WeightsUnavailableError, extractor_from_spec, read_index
from features_store.durable import atomic_write, remove_dead_writers_files, write_error
from features_store.errors import feature_range_error
from features_store.loader import selected_rows
from features_store.manifest import foreign_files, some
from features_store.reader import digest_keys, open_view

from .extraction import run_extract
from .planning import default_store_path
from .training import split_rows
from .views import store_identity


def run_evaluate(bundle_path, store, out_dir, *, split: str | None = None) -> dict:
    """Evaluate a head bundle on a store's ok, labelled original rows; write metrics.json and the plot.

    See `evaluation` for the rows; the writes hold `out_dir`'s `output_lock`. A report in `out_dir` (its page,
    figures and thumbnails) is removed first: it would show other numbers than the new metrics.json.
    """
    from ..report.run import remove_report

    metrics = evaluation(bundle_path, store, out_dir, split=split)
    with output_lock(out_dir):
        remove_report(out_dir)
        write_evaluation(out_dir, metrics, note=not_pretrained_note(bundle_path))
    return metrics


NOT_PRETRAINED = "random-init weights: these are NOT pretrained results"


def random_init(spec: dict) -> bool:
    """Whether an extractor's spec (a store's, a bundle's, `Extractor.spec()`) is a random init (`--weights none`):
    its results are not pretrained ones, and every output that shows them says so."""
    return ((spec or {}).get("config") or {}).get("weights") in (None, "none")


def not_pretrained_note(bundle_path) -> str:
    """`NOT_PRETRAINED` when the bundle's features come from a random-init extractor, else ""."""
    try:
        manifest = classify.bundle.manifest.read_manifest(Path(bundle_path))
    except (classify.ClassifyError, OSError):
        return ""
    return NOT_PRETRAINED if random_init(manifest.get("extractor") or {}) else ""


def evaluation(bundle_path, store, out_dir, *, split: str | None = None) -> dict:
    """The metrics that `run_evaluate` writes into `out_dir` (checked to be a folder it may write), written nowhere.

    Without `split`, on the store the head was trained on, only its held-out validation rows count (never the
    rows it was fitted on; a head that held none out is refused); on any other store, every row. The training store is refused when its view has
    changed since training (another index, labels or split: its held-out rows are no longer known).
    """
    check_output_folder(out_dir)
    bundle = load_head_bundle(bundle_path, "evaluate")
    info = features_store.read_info(store)
    bundle.check_fingerprint(info.fingerprint)
    if split is None and on_training_store(bundle.manifest, store, info):
        if training_view_changed(bundle.manifest, info):
            raise ValueError(
                f"{store} now lists another index than the one {Path(bundle_path).name} was trained on (its ids, "
                "labels or split changed since), so its held-out rows are unknown; re-extract the training index "
                "into it (nothing is extracted again), or evaluate with --split or on another store"
            )
        meta = features_store.read_meta(store)
        _, rows = trained_rows(bundle.manifest, meta)
        if not len(rows):
            raise ValueError(_none_held_out(bundle_path, store, meta))
        X, y, evaluated = features_store.read_features(store, rows), meta.labels[rows], "held-out validation rows"
        seen = None  # its own held-out rows: never fitted on
    else:
        X, y, _ = features_store.load(store, split=split, views=False, fingerprint=info.fingerprint)
        evaluated = f"split {split!r}" if split else "all rows"
        if split == "" and _has_split_column(features_store.read_meta(store)):  # '' is the rows of no split
            evaluated = "the rows without a split value"
        seen = _fitted_images(bundle.manifest, store, split, info)
    keep = y != ""
    if not keep.any():
        meta = features_store.read_meta(store)
        if split and not _has_split_column(meta):
            if (on_training_store(bundle.manifest, store, info) and not training_view_changed(bundle.manifest, info)
                    and not len(trained_rows(bundle.manifest, meta)[1])):  # without --split: no row either
                raise ValueError(_none_held_out(bundle_path, store, meta))
            raise ValueError(f"{store} has no split column (its index named no train, val or test rows), so no row is "
                             f"in split {split!r}: evaluate without --split, or give the index a split column")
        if split is not None and not (meta.split == split).any():  # not failed or unlabelled: the index names none
            named = " and ".join(repr(s) for s in ("train", "val", "test") if (meta.split == s).any())
            which = f"rows in split {split!r}" if split else "rows without a split value (--split '')"
            raise ValueError(f"{store} has no {which} (its index names only {named} rows): evaluate "
                             "another --split, or on a store whose index has such rows")
        raise ValueError(f"{store} has no labelled ok rows" + (f" in split {split!r}" if split is not None else ""))
    classes = [str(c) for c in bundle.manifest["classes"]]
    if not set(map(str, y[keep])) & set(classes):
        found = sorted(set(map(str, y[keep])))
        raise ValueError(f"none of the labels in {store} ({', '.join(found[:5])}{', ...' if len(found) > 5 else ''}) "
                         f"is a class of {Path(bundle_path).name} ({', '.join(classes[:5])}"
                         f"{', ...' if len(classes) > 5 else ''}); evaluate it on a store of the images of its classes")
    metrics = classify.evaluate(bundle, X[keep], y[keep])  # by the manifest's class names, as `predict` names them
    metrics["evaluated_on"] = evaluated
    if split is not None or not on_training_store(bundle.manifest, store, info):
        # (a view rewritten between the two reads, by an extract meanwhile, gives other rows: then not counted)
        fitted = int(np.count_nonzero(seen[keep])) if seen is not None and len(seen) == len(keep) else 0
        if fitted:  # another store of the same images: its rows are not unseen (the score counts them)
            metrics["fitted_on"] = fitted
    return metrics


def fitted_on_note(metrics: dict) -> str:
    """What `evaluate` and `report` say when the head was fitted on some of the evaluated images (`fitted_on`)."""
    n = metrics.get("fitted_on")
    if not n:
        return ""
    return (f"the head was fitted on {n} of these {metrics['n_samples']} images (the same content in its training "
            "store): these numbers are not held-out results")


def _fitted_images(manifest: dict, store, split, info) -> np.ndarray | None:
    """Per row that `features_store.load(store, split=split, views=False)` returns: whether the head was fitted on
    that image (by content key), read from its training store; None when that store is gone or of another index."""
    trained_on = manifest.get("trained_on")
    if not trained_on or not features_store.is_store(trained_on):
        return None
    try:
        trained = open_view(trained_on)
        visible = trained.visible(fingerprint=info.fingerprint, allow_incomplete=False)
        index_sha256 = trained.attrs.get("index_sha256", "")  # the view's attribute: info() reads every shard
        if (index_sha256.decode() if isinstance(index_sha256, bytes) else str(index_sha256)) != manifest.get(
                "trained_index_sha256"):
            return None  # its view changed since: the rows fitted on are unknown
        keys = manifest.get("trained_keys_sha256")  # the same index over edited images holds other content
        if keys is not None and keys != digest_keys(trained.cols["keys"]):
            return None
        rows, _ = trained_rows(manifest, trained.meta(visible))
        fitted = set(trained.cols["keys"][visible][rows].tolist())
        view = open_view(store)
        visible = view.visible(fingerprint=info.fingerprint, allow_incomplete=False)
        meta = view.meta(visible)
        rows = selected_rows(meta, split, ok_only=True, views=False)  # the rows `evaluation`'s load returns
        keys = view.cols["keys"][visible][rows].tolist()  # a set lookup: np.isin sorts 64-character strings
        return np.fromiter((key in fitted for key in keys), dtype=bool, count=len(keys))
    except (features_store.FeatureStoreError, OSError, ValueError):
        return None


def _has_split_column(meta) -> bool:
    """Whether a store's index named train, val or test rows."""
    return bool(np.isin(meta.split, ("train", "val", "test")).any())


def _none_held_out(bundle_path, store, meta) -> str:
    """Why a head has no rows of its training store to be evaluated on, and where to evaluate it instead: the
    store's test split when it has a split column, another store when every row of it trained the head."""
    name = Path(bundle_path).name
    if not _has_split_column(meta):
        return (f"{name} was fitted on every labelled row of {store} (the store has no split column, and the head "
                f"held none of its rows out), so none of its rows is unseen: evaluate {name} on another store")
    return (f"{name} was fitted on every labelled 'train' row of {store} and holds none out (its validation source "
            "is 'none'); evaluate with --split test, or on another store")


def check_output_folder(out_dir) -> None:
    """Refuse, in one line, an --out of evaluate or report that is a file, a feature store, or a folder holding
    files they do not write (a website's index.html, the images: a report's thumbs/ became a class folder there);
    hidden files do not count."""
    out_dir = Path(out_dir)
    if features_store.is_store(out_dir):
        raise ValueError(f"{out_dir} is a feature store; write the evaluation to another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; --out is the folder to write metrics.json and the plot into")
    if out_dir.is_dir():
        foreign = foreign_files(out_dir, OUTPUT_NAMES)
        if (out_dir / "index.html").is_file() and not is_report_page(out_dir / "index.html"):
            foreign = sorted([*foreign, "index.html"])  # a website's page: only the name is report's
        if foreign:
            raise ValueError(f"{out_dir} holds files that evaluate and report do not write ({some(foreign)}); refusing "
                             "to write among them: give --out a new or empty folder (or one they wrote)")


def is_report_page(path: Path) -> bool:
    """Whether `path` is a page that `featurehead report` wrote (its <title>, near the top, says so)."""
    try:
        with open(path, "rb") as f:
            return b"<title>featurehead report" in f.read(4096)
    except OSError:
        return False


def write_evaluation(out_dir, metrics: dict, *, note: str = "") -> None:
    """`out_dir/metrics.json` and `out_dir/confusion_matrix.png` (`note` in red on the plot), each replaced whole."""
    out_dir = Path(out_dir)
    text = json.dumps(metrics, indent=2)
    write_output(out_dir / "metrics.json", lambda tmp: Path(tmp).write_text(text))
    classify.plot_confusion_matrix(metrics, out_dir / "confusion_matrix.png", note=note)


OUTPUT_LOCK = ".featurehead.lock"
# what evaluate and report write in their --out (report: index.html, figures/, thumbs/), each into the other's
OUTPUT_NAMES = frozenset({"metrics.json", "confusion_matrix.png", "index.html", "figures", "thumbs"})


def output_lock(out_dir):
    """Make the folder `out_dir` and hold its `.featurehead.lock` while a command writes its files there; a second
    command writing the same folder meanwhile stops at once with one line (its files would mix with ours); a
    folder of other files is refused first (`check_output_folder`)."""
    from features_store.lock import folder_lock

    check_output_folder(out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return folder_lock(out_dir, OUTPUT_LOCK, timeout=0, busy=ValueError(
        f"{out_dir} is being written by another featurehead command (an evaluate or a report with the same --out?); "
        "re-run when it has finished"))


def write_output(path: Path, write) -> None:
    """Write `path` through `write(tmp)` atomically (a temporary file renamed into place): a full disk leaves the
    previous file, if any, and never a cut-off one that looks whole; a failure is one line naming the file."""
    remove_dead_writers_files(path)  # a killed run's temporary file, beside it
    try:
        atomic_write(path, write)
    except OSError as err:
        raise write_error(err, store=str(path.parent), what=str(path)) from err


def trained_rows(manifest: dict, meta, *, head: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The (train, validation) rows a bundle's head was trained with, from its manifest's parameters.

    `head` stands in for a manifest that does not name its head (one saved outside `run_train`).
    """
    params = manifest.get("params") or {}
    return split_rows(meta, head=params.get("head", head or "logreg"),
                      validation_fraction=params.get("validation_fraction", 0.2),
                      random_state=params.get("random_state", 0),
                      singles_to_train=(manifest.get("validation") or {}).get("single_image_classes") == "train")


def on_training_store(manifest: dict, store, info: features_store.StoreInfo) -> bool:
    """Whether `store` holds the rows a head was trained on: the store it names (`trained_on`; a relative path of
    an older bundle is taken from here), or a copy of it, reached by another path: a store of its extractor whose
    view is the index it was trained on with the same images in the same rows (`trained_keys_sha256`; bundles
    that predate it: the same index). Evaluated there, every row would count the rows it was fitted on. The
    caller has checked the fingerprint."""
    trained_on = manifest.get("trained_on")
    if trained_on and Path(trained_on).resolve() == Path(store).resolve():
        return True
    trained = manifest.get("trained_index_sha256")
    if not trained or trained != info.index_sha256:
        return False
    keys = manifest.get("trained_keys_sha256")  # the same CSV over other images (another --images-root) is not it
    return keys is None or keys == features_store.keys_sha256(store)


def training_view_changed(manifest: dict, info: features_store.StoreInfo) -> bool:
    """Whether the store's view is no longer the one a head was trained on (bundles of before v2 cannot say)."""
    trained = manifest.get("trained_index_sha256")
    return bool(trained) and trained != info.index_sha256


@dataclass(frozen=True)
class PredictResult:
    csv: Path
    n_rows: int
    n_failed: int


def run_predict(bundle_path, index_source, out_csv, *, images_root=None, store=None, progress=None,
                weights=None) -> PredictResult:
    """Predict every row of an index with a bundle, extracting with exactly the bundle's extractor.

    The store (`store`, default: the directory next to the index) is brought up to date first: images whose
    content it holds under the bundle's extractor are not extracted again, and its view becomes this index's.
    Failed rows are kept, marked `ok=False`. `weights`: where the weights file of the bundle's extractor is now
    (moved, or on another machine); its content must be the one the head was trained on (its sha256).
    """
    if Path(out_csv).is_dir():
        raise ValueError(f"{out_csv} is a folder; --out is the CSV file to write, e.g. {Path(out_csv) / 'predictions.csv'}")
    if Path(out_csv).exists() and not _is_predictions_csv(out_csv):
        raise ValueError(f"{out_csv} exists and is not a predictions CSV of featurehead (the index? an image?); "
                         "refusing to overwrite it: choose another --out")
    bundle = load_any_bundle(bundle_path)
    index = read_index(index_source, images_root)
    classes = list(bundle.manifest["classes"])
    if bundle.kind == "full" and weights is not None:
        raise ValueError(f"{bundle_path} is a fine-tuned whole model, which holds its weights: leave out --weights")
    if bundle.kind == "full" and store is not None:  # it was ignored without a word
        raise ValueError(f"{bundle_path} is a fine-tuned whole model, which predicts from the images and keeps no "
                         "features: leave out --store")
    if bundle.kind == "full":  # a fine-tuned model: images in, probabilities out; no store
        ids, ok, errors, proba, best = _predict_images(bundle, index, progress)
    else:
        ids, ok, errors, proba, best = _predict_features(bundle, index, store, progress, weights)
    frame = pd.DataFrame({"filename": ids, "ok": ok})
    frame["predicted"] = np.where(frame["ok"], np.asarray(classes, dtype=object)[best], "")
    frame["probability"] = np.where(frame["ok"], proba[np.arange(len(ids)), best], np.nan)
    for j, c in enumerate(classes):
        frame[f"p_{c}"] = proba[:, j]
    frame["error"] = errors
    if any(index.labels):  # a labelled index: its labels beside the predictions (last: the header's start is ours)
        known = dict(zip(index.ids, index.labels))
        frame["label"] = [known.get(i, "") for i in ids]
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    write_output(out_csv, lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))
    return PredictResult(out_csv, len(frame), int((~frame["ok"]).sum()))


PREDICTIONS_HEADER = "filename,ok,predicted,probability"  # the first columns `run_predict` writes


def _is_predictions_csv(path) -> bool:
    """Whether `path` is empty or begins with the header of the CSV that `run_predict` writes (one it may
    replace)."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(PREDICTIONS_HEADER) + 4)
    except OSError:
        return False
    # an empty file (`mktemp`, `touch`) holds nothing to lose; a spreadsheet may have saved ours with a BOM
    return not head or head.decode("utf-8", "replace").lstrip("\ufeff").startswith(PREDICTIONS_HEADER + ",")


def load_head_bundle(bundle_path, command: str):
    """`classify.load_bundle` of a head on features (kind "sklearn"); a fine-tuned whole model is refused with one
    line before anything is loaded (`command` names what needs a head)."""
    if _is_full_model(bundle_path):
        raise ValueError(
            f"{bundle_path} is a fine-tuned whole model (images in, classes out), not a head on stored features; "
            f"{command} needs a head trained by `featurehead train` (run the fine-tuned model on images with "
            f"`featurehead predict {bundle_path} INDEX`; its validation accuracy is in its manifest.json)"
        )
    return classify.load_bundle(bundle_path)


def _is_full_model(bundle_path) -> bool:
    """Whether a bundle's manifest says it is a whole Keras model (kind "full"); False for anything unreadable,
    which `classify.load_bundle` then names."""
    try:
        return classify.bundle.manifest.read_manifest(Path(bundle_path)).get("kind") == "full"
    except (classify.ClassifyError, OSError):
        return False


def load_any_bundle(bundle_path):
    """`classify.load_bundle`, registering extract's custom Keras layers first when the bundle is a full model."""
    if _is_full_model(bundle_path):
        from extract.layers import register_layers

        register_layers()
    return classify.load_bundle(bundle_path)


def bundle_extractor(bundle, weights=None):
    """The extractor of a head bundle's features: its spec, with its weights file at `weights` when given (the
    head records the file's path and its sha256; a moved file is named by its new path, and must hold the same
    content). A missing file says that --weights names its new place."""
    spec = copy.deepcopy(bundle.manifest["extractor"])
    recorded = spec.get("weights_sha256")
    if weights is not None:
        if recorded is None:
            raise ValueError(f"--weights: this head's features come from {spec['config'].get('weights')!r} weights, "
                             "not a weights file; leave it out")
        spec["config"]["weights"] = str(Path(weights).expanduser().absolute())
    extractor = extractor_from_spec(spec)
    try:
        actual = extractor.weights_sha256()
    except WeightsUnavailableError as err:
        if weights is None:
            raise WeightsUnavailableError(f"{err}: the head's features were made with it (sha256 {recorded[:12]}); "
                                          "if it moved, give its new place with --weights FILE") from err
        raise
    if weights is not None and actual != recorded:
        raise WeightsUnavailableError(f"{weights} is not the weights file this head's features were made with (its "
                                      f"sha256 is {actual[:12]}, the head's {recorded[:12]})")
    return extractor


# the head fixes its extractor's precision (the fingerprint): predict has no option that changes it
PREDICT_OVERFLOW_ADVICE = ("this head's extractor runs at that precision: predict with a head trained on features "
                           "extracted with --precision bfloat16 (float32's range) or float32")


def _predict_features(bundle, index, store, progress, weights=None):
    extractor = bundle_extractor(bundle, weights)
    bundle.check_fingerprint(extractor.fingerprint())  # an edited spec: refused before anything is extracted
    if store is not None:  # the default store, next to the index, is predict's own: its view follows the index
        _keep_a_labelled_view(Path(store), index, extractor)
    store = Path(store) if store is not None else default_store_path(index, extractor)
    try:
        # an existing store keeps its own dtype; an overflow's way out is another head, not extract's another --out
        result = run_extract(index, extractor, store, progress=progress, overflow_advice=PREDICT_OVERFLOW_ADVICE)
    except features_store.StoreMismatchError as err:  # predict's store option is --store (its --out is the CSV)
        raise features_store.StoreMismatchError(str(err).replace("use another --out", "use another --store")) from err
    except features_store.FeatureRangeError as err:  # a float16 store: predict has no --dtype; a new store is float32
        raise feature_range_error(err.store, err.reason.replace(
            "extract with --dtype float32 into another --out", "use another --store (a new one is float32)")) from err
    bundle.check_fingerprint(result.fingerprint)
    meta = features_store.read_meta(store)
    rows = np.flatnonzero(meta.view == 0)
    ok_rows = rows[meta.ok[rows]]
    proba = np.full((len(rows), len(bundle.classes)), np.nan)
    best = np.zeros(len(rows), dtype=np.intp)  # the predicted class's column (0 on a failed row: not written)
    if len(ok_rows):
        pred, proba[meta.ok[rows]] = bundle.predict_with_proba(features_store.read_features(store, ok_rows))
        best[meta.ok[rows]] = _columns(pred, bundle.classes)
    return meta.ids[rows], meta.ok[rows], meta.errors[rows], proba, best


def _columns(predicted: np.ndarray, classes: list) -> np.ndarray:
    """The column of each predicted class name among `classes`."""
    position = {c: i for i, c in enumerate(classes)}
    return np.array([position[c] for c in predicted.tolist()], dtype=np.intp)


def _keep_a_labelled_view(store: Path, index, extractor) -> None:
    """Predicting makes the store's view the predicted index: refuse, in one line, when that would drop the labels
    and splits of another index from it (a training store given as --store; its features stay, but `train` would
    find no labelled rows, and `compact` would then delete them)."""
    if not features_store.is_store(store):
        return
    try:
        view = open_view(store)  # read once: its summary and its labels
        info = view.info()
    except (OSError, ValueError):  # not readable as a store of this version: run_extract says why
        return
    labelled = int(np.count_nonzero((view.cols["labels"] >= 0) & (view.cols["view"] == 0)))
    if labelled and info.fingerprint == extractor.fingerprint() and info.index_sha256 != store_identity(index, None):
        raise ValueError(
            f"{store} lists {labelled} labelled images of another index (a training store?); predicting into it would "
            f"replace that view, labels and splits with the {len(index.ids)} images to predict: use another --store, "
            "or leave --store out (predict's own store, next to the index)"
        )


def _predict_images(bundle, index, progress, batch_size: int = 32):
    from extract import read_batch

    size = tuple(bundle.manifest["input_shape"][:2])
    resize = (bundle.manifest.get("extractor") or {}).get("config", {}).get("resize", "squash")  # as extracted
    paths = index.paths
    proba = np.full((len(paths), len(bundle.classes)), np.nan)
    best = np.zeros(len(paths), dtype=np.intp)
    ok, errors = np.zeros(len(paths), bool), [""] * len(paths)
    bar = progress(total=len(paths), initial=0) if progress else None
    for lo, hi in features_store.batch_plan(len(paths), batch_size):
        images, ok[lo:hi], errors[lo:hi] = read_batch(paths[lo:hi], size, resize=resize)
        if ok[lo:hi].any():
            pred, proba[lo:hi][ok[lo:hi]] = bundle.predict_with_proba(images[ok[lo:hi]])
            best[lo:hi][ok[lo:hi]] = _columns(pred, bundle.classes)
        if bar is not None:
            bar.update(hi - lo)
    if bar is not None:
        bar.close()
    return np.asarray(index.ids), ok, np.asarray(errors), proba, best
