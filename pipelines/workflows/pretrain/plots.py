"""PNG plots of pre-training: the loss curve, and originals above their CAE reconstructions.

Figures use `matplotlib.figure.Figure` on the Agg canvas, never pyplot's global state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from classify.plots import new_figure, save_png


def plot_loss(history: dict, path, *, title: str = "loss") -> Path:
    """Write the per-epoch ``loss`` (and ``val_loss`` when present) of a Keras history as a PNG."""
    from matplotlib.ticker import MaxNLocator

    fig, canvas = new_figure((6, 4))
    ax = fig.add_subplot()
    for key in ("loss", "val_loss"):
        if key in history:
            ax.plot(np.arange(1, len(history[key]) + 1), history[key], marker="o", label=key)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no "epoch 1.5"
    ax.set_ylabel(title)
    ax.legend()
    return save_png(canvas, path)


def plot_reconstructions(images: np.ndarray, reconstructions: np.ndarray, path, *, channels: int = 1,
                         source: str = "original") -> Path:
    """Write originals (top row, raw RGB uint8 or 0..255 floats) above their reconstructions (0..1) as a PNG;
    `source`, when given, says above them which images they are."""
    n = len(images)
    fig, canvas = new_figure((1.2 * n + 0.4, 2.8))
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        axes[0, i].imshow(np.clip(images[i], 0, 255).astype(np.uint8))
        rec = np.clip(reconstructions[i], 0.0, 1.0)
        axes[1, i].imshow(rec[..., 0] if channels == 1 else rec, cmap="gray" if channels == 1 else None, vmin=0, vmax=1)
        for ax in axes[:, i]:
            ax.set_axis_off()
    axes[0, 0].set_title("original", loc="left", fontsize=9)
    if source != "original":  # a figure title: a long axes title would widen the first column only
        fig.suptitle(source, x=0.01, ha="left", fontsize=9)
    axes[1, 0].set_title("reconstruction", loc="left", fontsize=9)
    return save_png(canvas, path)
