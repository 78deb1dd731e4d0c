"""The bundled UCI handwritten digits (``digits.npz``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Dataset, check_labels, fail
from .npz import read_npz_members

__all__ = ["DIGITS_CLASSES", "DIGITS_FILE", "load_digits"]

DIGITS_CLASSES = tuple(str(d) for d in range(10))
DIGITS_FILE = Path(__file__).with_name("digits.npz")


def load_digits(path=None) -> Dataset:
    """The bundled UCI handwritten digits: 1,797 grey 8x8 images of the digits 0..9, with a fixed split.

    The images are those of Alpaydin & Kaynak's "Optical Recognition of Handwritten Digits" (UCI Machine
    Learning Repository, https://doi.org/10.24432/C50P49, CC BY 4.0; see ``LICENSE-digits.txt``) as shipped by
    scikit-learn. The train/test split (1,438 / 359 images, stratified, about 80/20) is stored in the file, so
    it never changes.

    Parameters
    ----------
    path : path-like, optional
        Defaults to the bundled ``digits.npz``.

    Returns
    -------
    Dataset
        ``x_train`` (1438, 1, 8, 8) and ``x_test`` (359, 1, 8, 8) float32 in [0, 1] (grey levels 0..16 / 16);
        int64 labels; ``classes`` ``"0" .. "9"``.
    """
    path = Path(DIGITS_FILE if path is None else path)
    arrays = read_npz_members(path, required=("images", "labels", "train_idx", "test_idx"))
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 3 or images.shape[1:] != (8, 8) or images.dtype != np.uint8:
        fail(path, f"'images' should be uint8 of shape (N, 8, 8), found {images.dtype} {images.shape}")
    if images.max(initial=0) > 16:
        fail(path, f"'images' should hold grey levels 0..16, found a maximum of {images.max()}")
    check_labels(path, labels, 10, what="'labels'", count=images.shape[0])
    n = images.shape[0]
    train_idx, test_idx = arrays["train_idx"], arrays["test_idx"]
    for key, idx in (("train_idx", train_idx), ("test_idx", test_idx)):
        if idx.ndim != 1 or idx.dtype.kind not in "iu" or idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            fail(path, f"{key!r} should be a non-empty 1-D integer array of indices in 0..{n - 1}")
    if np.intersect1d(train_idx, test_idx).size:
        fail(path, "'train_idx' and 'test_idx' overlap")
    x = (images.astype(np.float32) / 16)[:, None, :, :]
    y = labels.astype(np.int64)
    return Dataset("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], 10, DIGITS_CLASSES)
