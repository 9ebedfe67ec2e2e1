"""PNG plots of a head's evaluation and training: the confusion matrix and the loss/accuracy curves.

Figures are built with `matplotlib.figure.Figure` on the Agg canvas, never through pyplot's global state.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

COUNTS_MAX_CLASSES = 60  # past this many classes the counts are not printed in the cells (they are in metrics.json)


def plot_confusion_matrix(metrics: dict, path: str | os.PathLike, *, note: str = "") -> Path:
    """Write the confusion matrix of `evaluate`'s output as a PNG, each cell annotated with its count (up to
    `COUNTS_MAX_CLASSES` classes; past it the counts are in metrics.json only and the figure stops growing).

    Parameters
    ----------
    metrics : dict
        As returned by `classify.evaluate`: ``confusion_matrix`` and ``classes`` are used (``evaluated_on`` and
        ``accuracy``, when present, go in the title).
    path : str or PathLike
        The PNG file to write.
    note : str, default=""
        A warning printed in red under the title (for example that the features are not pretrained).

    Returns
    -------
    path : Path
        The written file.
    """
    matrix = np.asarray(metrics["confusion_matrix"])
    classes = [plain_label(c) for c in metrics["classes"]]
    k = len(classes)
    digits = len(str(int(matrix.max()))) if matrix.size else 1
    annotate = k <= COUNTS_MAX_CLASSES  # past it the figure grew by k squared (150 classes: 4.5 GB to draw)
    # past it cells of 0.16 in, at most 48 in in all (1000 classes at 0.16 in took 7.5 GB to draw)
    cell = max(0.6, 0.12 * digits + 0.2) if annotate else min(0.16, 48 / k)
    if cell < 0.08:  # labels of 6 pt no longer fit: the classes are in metrics.json, in this order
        classes = [""] * k
    # room for the labels (about 0.09 in a character at 10 pt; the x labels are at 45 degrees) and for the
    # widest count in a cell: without it long class names squeeze the matrix and counts spill over their cells
    label_in = (0.09 if annotate else 0.055) * max((len(c) for c in classes), default=1)
    fig, canvas = new_figure(size=(2.2 + cell * k + label_in, 1.6 + cell * k + 0.72 * label_in))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, label="images (count)", shrink=0.8)
    ticks = np.arange(k)
    ax.set_xticks(ticks, labels=classes, rotation=45, ha="right", fontsize=None if annotate else 6)
    ax.set_yticks(ticks, labels=classes, fontsize=None if annotate else 6)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    title = ", ".join(x for x in (str(metrics.get("evaluated_on", "")),
                                  f"accuracy {metrics['accuracy']:.4f}" if "accuracy" in metrics else "") if x)
    if title:
        ax.set_title(plain_label(title))
    if note:
        fig.suptitle(plain_label(note), color="#c92a2a", fontweight="bold", fontsize=10)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix if annotate else np.empty((0, 0))):  # else: in metrics.json
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    return save_png(canvas, path)


def plain_label(text) -> str:
    """A label as literal text: matplotlib reads a pair of `$` as mathematics (and fails on a bad formula)."""
    return str(text).replace("$", r"\$")


def plot_history(history: dict, path: str | os.PathLike) -> Path:
    """Write the per-epoch loss and accuracy curves of a Keras history as a PNG.

    Parameters
    ----------
    history : dict of str to list of float
        For example ``KerasMLPClassifier.history_``: ``loss``, ``accuracy`` and their ``val_`` twins.
    path : str or PathLike
        The PNG file to write.

    Returns
    -------
    path : Path
        The written file.
    """
    return save_png(_history_canvas(history), path)


def history_png(history: dict) -> bytes:
    """`plot_history`'s PNG as bytes (for a file written with others, all or none)."""
    buffer = io.BytesIO()
    _history_canvas(history).print_png(buffer)
    return buffer.getvalue()


def _history_canvas(history: dict):
    from matplotlib.ticker import MaxNLocator

    fig, canvas = new_figure(size=(10, 4))
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for key in (metric, f"val_{metric}"):
            if key in history:
                ax.plot(np.arange(1, len(history[key]) + 1), history[key], label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.25"
        ax.set_ylabel(metric)
        ax.legend()
    return canvas


def new_figure(size: tuple[float, float]):
    """A constrained-layout `Figure` on its own Agg canvas (no pyplot, no global backend): (figure, canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    return fig, FigureCanvasAgg(fig)


def save_png(canvas, path: str | os.PathLike) -> Path:
    """Write the canvas's figure as a PNG at `path` (its folder made) and return the path.

    The write is atomic (a temporary file renamed into place), so never a cut-off PNG that looks whole. A plot is
    drawn of a result just written beside it (a bundle, metrics.json, sweep.csv), so when it cannot be written
    (a full disk) the previous plot at `path`, of an older result, is removed before the error is raised.
    """
    from features_store.durable import atomic_write, remove_dead_writers_files

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_writers_files(path)  # a killed run's temporary PNG, beside it
    try:
        atomic_write(path, canvas.print_png)
    except OSError:
        with contextlib.suppress(OSError):  # a read-only folder: the error to report is the write's
            path.unlink(missing_ok=True)
        raise
    return path
