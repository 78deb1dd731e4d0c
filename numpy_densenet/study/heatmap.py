"""Heatmaps of the study tools' matrices (matplotlib, an optional dependency, imported only when drawing)."""
from __future__ import annotations

import importlib.util

import numpy as np

from .flow import consumer_labels, feature_labels

__all__ = ["heatmap_range", "save_heatmap", "have_matplotlib"]


def heatmap_range(matrices, log=False):
    """(vmin, vmax) over every finite value of several :class:`BlockMatrix` (log10 of them with ``log``): pass it
    to :func:`save_heatmap` to draw several blocks on one colour scale, so that their colours compare."""
    values = np.concatenate([np.asarray(m.values, dtype=np.float64).ravel() for m in matrices])
    values = values[np.isfinite(values) & ((values > 0) if log else True)]
    if values.size == 0:
        return None, None
    values = np.log10(values) if log else values
    return float(values.min()), float(values.max())


def save_heatmap(matrix, path, log=False, title=None, vmin=None, vmax=None, numbers=True):
    """Draw a :class:`BlockMatrix` as a heatmap PNG: x = consumer, y = feature map (as in the paper's Fig. 5).

    Needs matplotlib (``pip install "numpy_densenet[plot]"``); raises ImportError without it.

    Parameters
    ----------
    matrix : BlockMatrix
    path : str or path-like
    log : bool
        Colour by log10 of the values (gradient norms span orders of magnitude).
    title : str, optional
        Defaults to the block's name and what the numbers are, on two lines.
    vmin, vmax : float, optional
        The ends of the colour scale (in log10 units with ``log``); by default this matrix's own range. Give the
        same to several blocks (see :func:`heatmap_range`) to compare them by colour.
    numbers : bool
        Write each cell's value in it (3 significant digits).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = matrix.num_layers
    raw = np.asarray(matrix.values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.ma.masked_invalid(np.log10(raw) if log else raw)
    cell = 0.62 if numbers else 0.4
    width, height = 3.2 + cell * (L + 1), 2.2 + cell * (L + 1)
    fig, ax = plt.subplots(figsize=(max(width, 5.5), max(height, 4.2)))
    image = ax.imshow(values, cmap="viridis", origin="upper", vmin=vmin, vmax=vmax)
    ticks = max(7, min(10, int(110 / (L + 1))))
    ax.set_xticks(range(L + 1), consumer_labels(L), fontsize=ticks)
    ax.set_yticks(range(L + 1), [f"{r} ({c})" for r, c in zip(feature_labels(L), matrix.channels)], fontsize=ticks)
    ax.set_xlabel("consumer (H_j = dense layer j, out = block output)", fontsize=10)
    ax.set_ylabel("feature map x_i (channels)", fontsize=10)
    if title is None:
        what = matrix.what if len(matrix.what) <= 70 else matrix.what[:matrix.what.rfind(" ", 0, 70)] + "\n" + \
            matrix.what[matrix.what.rfind(" ", 0, 70) + 1:]
        ax.set_title(f"{matrix.name}\n{what}", fontsize=10)
    else:
        ax.set_title(title, fontsize=10)
    if numbers:
        lo, hi = image.get_clim()
        size = max(5, min(9, int(80 / (L + 1))))
        for i in range(L + 1):
            for j in range(L + 1):
                if np.ma.is_masked(values[i, j]):
                    continue
                shade = (float(values[i, j]) - lo) / (hi - lo) if hi > lo else 0.5
                ax.text(j, i, format(raw[i, j], ".2g" if log else ".3g"), ha="center", va="center", fontsize=size,
                        color="black" if shade > 0.6 else "white")
    scale = "log10 of the value" if log else "value"
    if vmin is not None or vmax is not None:
        scale += " (one scale for every block)"
    fig.colorbar(image, ax=ax, label=scale)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def have_matplotlib():
    """True when matplotlib is installed (an optional extra: pip install "numpy_densenet[plot]")."""
    return importlib.util.find_spec("matplotlib") is not None
