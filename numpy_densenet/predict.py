"""What ``numpy-densenet predict`` checks before it classifies: the inputs must look like the training images.

A model from ``train`` records the size and the pixel range of its training images (``_inputs`` in best.npz):

* an image of another size is refused, naming the expected size, unless ``--resize`` is given (then it is
  resized with Pillow's bilinear filter, antialiased when shrinking);
* pixel values outside the training images' range are warned about (a float array in 0..255 instead of [0, 1],
  for instance), since the model's answer on them means little.

Converted torchvision weights (``numpy-densenet convert``) carry ImageNet preprocessing instead and are handled
by :func:`predict_photos`, which does what PyTorch Hub's DenseNet example does (see :mod:`numpy_densenet.hub`).
"""
from __future__ import annotations

import numpy as np

__all__ = ["fit_image_size", "resize_images", "pixel_range_warning", "predict_photos"]

#: how far (in [0, 1] units) an input may stray outside the training range before a warning: about 3/255
RANGE_TOLERANCE = 0.01


def resize_images(x, size):
    """Resize images (N, C, H, W) of floats to ``size`` = (H', W') with Pillow's bilinear filter per channel."""
    from .hub import _pil
    Image = _pil()
    h, w = int(size[0]), int(size[1])
    out = np.empty(x.shape[:2] + (h, w), dtype=np.float64)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            img = Image.fromarray(np.ascontiguousarray(x[n, c], dtype=np.float32), mode="F")
            out[n, c] = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float64)
    return out


def fit_image_size(x, label, expected, resize=False):
    """Return images ``x`` (N, C, H, W) at the training size ``expected`` = (H, W).

    Raises
    ------
    ValueError
        When the size differs and ``resize`` is False; the message names the input, both sizes and ``--resize``.
    """
    expected = tuple(int(v) for v in expected)
    if tuple(x.shape[2:]) == expected:
        return x
    if not resize:
        raise ValueError(f"{label} holds {x.shape[2]}x{x.shape[3]} images, but the model was trained on "
                         f"{expected[0]}x{expected[1]} images; give --resize to resize the inputs to "
                         f"{expected[0]}x{expected[1]} (bilinear)")
    return resize_images(x, expected)


def pixel_range_warning(x, label, trained_range):
    """A warning (str) when the pixel values of ``x`` ([0, 1] units) leave ``trained_range`` = (lo, hi), else None."""
    lo, hi = float(np.min(x)), float(np.max(x))
    t_lo, t_hi = (float(v) for v in trained_range)
    if lo >= t_lo - RANGE_TOLERANCE and hi <= t_hi + RANGE_TOLERANCE:
        return None
    return (f"warning: {label} has pixel values in [{lo:.4g}, {hi:.4g}], outside the range of the training images, "
            f"[{t_lo:.4g}, {t_hi:.4g}] (in [0, 1] units: integer arrays and image files are read as 8-bit pixels "
            f"/ 255, float arrays must already be in [0, 1]); the predictions may mean little")


def predict_photos(weights, paths, top=5, log=print):
    """Hub-style inference on image files with converted weights; prints one line per image.

    Parameters
    ----------
    weights : path of a .npz from ``convert``, or a :class:`~numpy_densenet.hub.HubModel`
    paths : image files
    top : int
    log : callable receiving each line

    Each line is ``path: name (probability), ...`` with the ``top`` most probable classes, best first.
    Returns the list of (path, [(name, probability), ...]).
    """
    from .hub import HubModel, load, top_k
    model = weights if isinstance(weights, HubModel) else load(weights)
    results = []
    for path in paths:                                         # one at a time: photos differ in size
        if str(path).lower().endswith(".npy"):
            raise ValueError(f"{path}: converted ImageNet weights take image files (JPEG, PNG, ...), which are "
                             f"resized and cropped as torchvision does; for arrays use numpy_densenet.hub.load "
                             f"from Python")
        best = top_k(model([path])[0], top, model.classes)
        results.append((path, best))
        log(f"{path}: " + ", ".join(f"{name} ({p:.3f})" for name, p in best))
    return results
