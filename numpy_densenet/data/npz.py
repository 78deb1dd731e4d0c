"""Generic data sets stored in ``.npz`` files, read within the memory budget and never unpickled."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .base import Dataset, DatasetError, check_label_range, check_labels, check_pixels, fail
from .files import MAX_CLASSES, FileFormatError, read_npz

__all__ = ["load_npz"]


def load_npz(path, *, test_fraction=0.2, seed=0) -> Dataset:
    """A data set stored in a ``.npz`` file (never unpickled; sizes checked before reading, see :mod:`.files`).

    Keys
    ----
    ``x`` : (N, C, H, W), (N, H, W, C) or (N, H, W)
        Training images. uint8 is kept as is; other integer types must lie in 0..255 and become uint8;
        floats (expected in [0, 1]) are kept, float16 becoming float32. A 3-D array is one grey channel.
        **Layout rule** for 4-D arrays: channels-last when the last dimension is 1 or 3 and the second is
        not (so ``(N, 32, 32, 3)`` and ``(N, 28, 28, 1)`` are transposed to NCHW), channels-first otherwise;
        an ambiguous shape such as ``(N, 3, 3, 3)`` is read as channels-first.
    ``y`` : (N,) integers in 0 .. 65535 (``MAX_CLASSES`` - 1)
    ``x_test``, ``y_test`` : optional, same conventions; give both or neither.
    ``x_val``, ``y_val`` : optional, same conventions; an official validation split (``train`` selects its
        best epoch on it instead of holding out part of ``x``); give both or neither.
    ``classes`` : optional 1-D array of strings, the class names; then labels must be ``< len(classes)``.

    Without ``x_test``, a fixed split is made: the images are permuted by ``np.random.default_rng(seed)`` and
    the first ``round(test_fraction * N)`` (at least one) form the test set.

    Parameters
    ----------
    path : str or path-like
        The ``.npz`` file.
    test_fraction : float in (0, 1)
        Only used without ``x_test``.
    seed : int
        Only used without ``x_test``.

    Returns
    -------
    Dataset
        Named after the file stem; ``num_classes`` is ``len(classes)`` or else ``max(label) + 1``.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    path = Path(os.path.expanduser(os.fspath(path)))
    if path.is_dir():
        fail(path, "is a folder; for the 'npz' data set give the path of the .npz file itself")
    arrays = read_npz_members(path, required=("x", "y"), optional=("x_test", "y_test", "x_val", "y_val", "classes"))
    has_test = ("x_test" in arrays, "y_test" in arrays)
    if any(has_test) and not all(has_test):
        fail(path, "holds only one of 'x_test' and 'y_test'; give both or neither")

    x = _npz_images(path, arrays["x"], "x")
    y = _npz_labels(path, arrays["y"], "y", x.shape[0], "x")
    x_train, y_train, x_test, y_test = _train_and_test(path, arrays, x, y, test_fraction, seed)
    x_val, y_val = _validation(path, arrays, x_train)
    classes, num_classes = _classes(path, arrays, y, y_train, y_test, y_val)
    return Dataset(path.stem, x_train, y_train, x_test, y_test, num_classes, classes, x_val=x_val, y_val=y_val)


def _train_and_test(path, arrays, x, y, test_fraction, seed):
    """The file's own test split (checked against x), or a fixed seeded split of x."""
    if "x_test" in arrays:
        x_test = _npz_images(path, arrays["x_test"], "x_test")
        y_test = _npz_labels(path, arrays["y_test"], "y_test", x_test.shape[0], "x_test")
        if x_test.shape[1:] != x.shape[1:] or x_test.dtype != x.dtype:
            fail(path, f"'x_test' images are {x_test.dtype} {x_test.shape[1:]} (C, H, W) but 'x' images are "
                       f"{x.dtype} {x.shape[1:]}")
        return x, y, x_test, y_test
    if x.shape[0] < 2:
        fail(path, f"'x' holds {x.shape[0]} image(s): at least 2 are needed to split off a test set")
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    n_test = min(max(1, int(round(test_fraction * x.shape[0]))), x.shape[0] - 1)
    test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def _validation(path, arrays, x_train):
    """The file's official validation split (x_val, y_val), checked, or (None, None)."""
    if ("x_val" in arrays) != ("y_val" in arrays):
        fail(path, "holds only one of 'x_val' and 'y_val'; give both or neither")
    if "x_val" not in arrays:
        return None, None
    x_val = _npz_images(path, arrays["x_val"], "x_val")
    if x_val.shape[0] == 0:
        fail(path, "'x_val' holds no images; leave 'x_val' and 'y_val' out to hold out part of 'x' instead")
    y_val = _npz_labels(path, arrays["y_val"], "y_val", x_val.shape[0], "x_val")
    if x_val.shape[1:] != x_train.shape[1:] or x_val.dtype != x_train.dtype:
        fail(path, f"'x_val' images are {x_val.dtype} {x_val.shape[1:]} (C, H, W) but 'x' images are "
                   f"{x_train.dtype} {x_train.shape[1:]}")
    return x_val, y_val


def _classes(path, arrays, y, y_train, y_test, y_val):
    """(class names, number of classes): the file's ``classes`` (every label of ``y``, the file's own, and of the
    test and validation sets checked below their count), or "0", "1", ... up to the largest label."""
    if "classes" not in arrays:
        num_classes = int(max(y_train.max(), y_test.max(), -1 if y_val is None else y_val.max())) + 1  # < MAX_CLASSES
        return tuple(str(k) for k in range(num_classes)), num_classes
    classes = arrays["classes"]
    if classes.ndim != 1 or classes.dtype.kind not in "US" or classes.size == 0:
        fail(path, f"'classes' should be a non-empty 1-D array of strings, found {classes.dtype} {classes.shape}")
    if classes.size > MAX_CLASSES:
        fail(path, f"'classes' names {classes.size} classes; at most {MAX_CLASSES} are supported")
    classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in classes.tolist())
    num_classes = len(classes)
    for key, labels in (("y", y), ("y_test", y_test)) + ((("y_val", y_val),) if y_val is not None else ()):
        check_labels(path, labels, num_classes, what=f"{key!r} (with {num_classes} names in 'classes')")
    return classes, num_classes


def _npz_images(path, x, key):
    """Validate and convert an image array of a ``.npz`` file to (N, C, H, W)."""
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4:
        if x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
    else:
        fail(path, f"{key!r} should be 3-D (N, H, W) or 4-D (N, C, H, W) / (N, H, W, C), found shape {x.shape}")
    if x.shape[0] == 0 or 0 in x.shape[1:]:
        fail(path, f"{key!r} is empty (shape {x.shape} after conversion to N, C, H, W)")
    check_pixels(path, x.shape, key)
    if x.dtype == np.uint8:
        pass
    elif x.dtype.kind in "iu":
        lo, hi = x.min(), x.max()
        if lo < 0 or hi > 255:
            fail(path, f"{key!r} holds {x.dtype} values in {lo}..{hi}; integer images must lie in 0..255")
        x = x.astype(np.uint8)
    elif x.dtype.kind == "f":
        if not np.isfinite(x).all():
            fail(path, f"{key!r} holds NaN or infinite values")
        if x.dtype.itemsize < 4:
            x = x.astype(np.float32)
    else:
        fail(path, f"{key!r} has dtype {x.dtype}; images must be uint8 (0..255) or floats (in [0, 1])")
    return np.ascontiguousarray(x)


def _npz_labels(path, y, key, n, x_key):
    if y.ndim != 1 or y.shape[0] != n:
        fail(path, f"{key!r} should be a 1-D array of {n} labels, one per image of {x_key!r}, found shape {y.shape}")
    if y.dtype.kind not in "iu":
        fail(path, f"{key!r} has dtype {y.dtype}; labels must be integers")
    if y.size and y.min() < 0:
        fail(path, f"{key!r} holds the negative label {y.min()}; labels must be 0 .. num_classes - 1")
    check_label_range(path, y, key)
    return y.astype(np.int64)


def read_npz_members(path, required, optional=()):
    """Read the ``required`` and ``optional`` arrays of an ``.npz`` file within the memory budget.

    Declared sizes are checked before anything is read (:func:`numpy_densenet.data.files.read_npz`); other
    arrays in the file are not read at all. Nothing is unpickled.
    """
    try:
        arrays = read_npz(path, what="data set", keys=set(required) | set(optional))
    except FileFormatError as e:
        raise DatasetError(f"{e}.") from None
    missing = [k for k in required if k not in arrays]
    if missing:
        fail(path, f"missing the array(s) {', '.join(map(repr, missing))} (found: "
                    f"{', '.join(map(repr, arrays)) or 'none'})")
    return arrays
