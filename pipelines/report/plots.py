"""PNG figures of the HTML report: the row-normalised confusion matrix with counts and the reliability diagram.

Figures use `matplotlib.figure.Figure` on the Agg canvas, never pyplot's global state. The learning curves are
`classify.plot_history`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from classify.plots import new_figure, save_png
from classify.plots import plain_label as _plain

ANNOTATE_MAX_CLASSES = 30  # past this many classes the cells are too small to print numbers in


def plot_confusion_normalized(matrix, classes, path) -> Path:
    """Write the confusion matrix with each row divided by its true class's count, cells annotated
    "fraction (count)" while there are at most `ANNOTATE_MAX_CLASSES` classes."""
    counts = np.asarray(matrix, dtype=np.int64).reshape(len(classes), len(classes))
    totals = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    k = len(classes)
    # at least 7 pt labels: the page shows the picture scaled to its width, and it links to it at full size
    label_in = 0.06 * max((len(str(c)) for c in classes), default=1)
    side = 2.5 + (0.55 * k if k <= ANNOTATE_MAX_CLASSES else min(0.16 * k, 48.0))  # 1000 classes: 7 GB uncapped
    fig, canvas = new_figure((side + label_in + 1.2, side + 0.72 * label_in))
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class", shrink=0.8)
    ticks = np.arange(k)
    size = 9 if k <= 15 else 7
    ax.set_xticks(ticks, labels=[_plain(c) for c in classes], rotation=45, ha="right", fontsize=size)
    ax.set_yticks(ticks, labels=[_plain(c) for c in classes], fontsize=size)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= ANNOTATE_MAX_CLASSES:
        for (i, j), count in np.ndenumerate(counts):
            if count == 0:  # blank, as in most confusion matrices: the eye goes to the counts that matter
                continue
            ax.text(j, i, f"{norm[i, j]:.2f}\n({count})", ha="center", va="center", fontsize=size,
                    color="white" if norm[i, j] > 0.5 else "black")
    return save_png(canvas, path)


def plot_reliability(bins: dict, path) -> Path:
    """Write the reliability diagram of `pipelines.report.data.reliability`'s bins: accuracy against confidence per bin
    above the number of rows in each bin."""
    edges, count = bins["edges"], bins["count"]
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    filled = count > 0
    fig, canvas = new_figure((6, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    top.bar(centers[filled], bins["accuracy"][filled], width=width[filled], edgecolor="black", alpha=0.75,
            label="accuracy in the bin")
    top.plot(bins["confidence"][filled], bins["accuracy"][filled], "o", color="darkred", label="mean confidence")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(f"expected calibration error {bins['ece']:.3f}")
    top.legend(loc="upper left")
    bottom.bar(centers, count, width=width, edgecolor="black", color="lightgrey")
    for x, n in zip(centers[filled], count[filled]):  # a bin of 2 rows is invisible beside one of 300
        bottom.annotate(str(int(n)), (x, n), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7)
    bottom.set_ylim(0, max(int(count.max()), 1) * 1.3)
    bottom.set_xlabel("probability of the predicted class")
    bottom.set_ylabel("rows")
    return save_png(canvas, path)
