"""What every data set loader shares: the :class:`Dataset` container, :class:`DatasetError`, :func:`to_float`
and the helpers that check files and labels.

Conventions for every :class:`Dataset`:

* images are ``(N, C, H, W)`` arrays, either ``uint8`` raw pixels 0..255 (CIFAR, MNIST, ``.npz`` files storing
  integers) or floating point values in [0, 1] (the bundled digits, ``.npz`` files storing floats);
  :func:`to_float` / :meth:`Dataset.as_float` turn either into float32/float64 in [0, 1];
* labels are ``(N,)`` int64 arrays with values in ``0 .. num_classes - 1``.
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .files import MAX_CLASSES, MAX_IMAGE_PIXELS, digest_arrays, os_problem

__all__ = ["DatasetError", "Dataset", "to_float"]

SPLIT_ARRAYS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


class DatasetError(Exception):
    """A data set could not be found or read: a missing, truncated or corrupt file, or unusable contents.

    The message is one paragraph that names the file and says what is wrong; it is meant to be shown to the
    user as is, without a traceback.
    """


# --------------------------------------------------------------------------------------------------------------
# The Dataset container
# --------------------------------------------------------------------------------------------------------------

@dataclass(eq=False, repr=False)
class Dataset:
    """A train/test pair of labelled image arrays.

    Attributes
    ----------
    name : str
        Short name, e.g. ``"cifar10"``.
    x_train : ndarray, shape (N_train, C, H, W)
        Training images, ``uint8`` (raw pixels 0..255) or float (values in [0, 1]), as stored by the source.
    y_train : ndarray of int64, shape (N_train,)
        Training labels in ``0 .. num_classes - 1``.
    x_test : ndarray, shape (N_test, C, H, W)
        Test images, same dtype and image shape as ``x_train``.
    y_test : ndarray of int64, shape (N_test,)
        Test labels.
    x_val, y_val : ndarray or None
        The data set's official validation split, when it has one (``train`` then selects on it); None otherwise.
    augmentation : dict
        What ``--augment`` means for these images: the ``pad`` (zero padding before the random crop back to
        H x W) and ``flip`` (random horizontal mirroring) of :class:`~numpy_densenet.data.BatchIterator`.
        Default ``{"pad": 4, "flip": True}``, the paper's for 32x32 CIFAR; MNIST and Fashion-MNIST
        ``{"pad": 2, "flip": False}`` (a mirrored digit is another glyph; for clothes the flip cost accuracy in
        short runs, as measured in benchmarks/README.md).
    num_classes : int
        Number of classes.
    classes : tuple of str
        Class names, ``classes[k]`` is the name of label ``k``; ``len(classes) == num_classes``.
    in_channels : int
        ``C`` (read-only property).
    image_size : tuple of int
        ``(H, W)`` (read-only property).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    classes: tuple = field(default=())
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    augmentation: dict = field(default_factory=lambda: dict(DEFAULT_AUGMENTATION))

    def __post_init__(self):
        _check_augmentation(self.augmentation)
        if not isinstance(self.num_classes, (int, np.integer)) or isinstance(self.num_classes, bool) or \
                not 1 <= self.num_classes <= MAX_CLASSES:
            raise ValueError(f"num_classes must be an integer in 1..{MAX_CLASSES}, got {self.num_classes!r}")
        self.classes = tuple(str(c) for c in self.classes) or tuple(str(k) for k in range(self.num_classes))
        if (self.x_val is None) != (self.y_val is None):
            raise ValueError("give both x_val and y_val (an official validation split) or neither")
        for split in ("train", "test") + (("val",) if self.x_val is not None else ()):
            x, y = getattr(self, "x_" + split), getattr(self, "y_" + split)
            if not isinstance(x, np.ndarray) or x.ndim != 4:
                raise ValueError(f"x_{split} must be a 4-D array (N, C, H, W), got {_describe(x)}")
            if not isinstance(y, np.ndarray) or y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise ValueError(f"y_{split} must be a 1-D array with one label per image of x_{split} "
                                 f"({x.shape[0]}), got {_describe(y)}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(f"x_train images {self.x_train.shape[1:]} and x_test images {self.x_test.shape[1:]} "
                             "differ in shape")
        if self.x_val is not None and self.x_val.shape[1:] != self.x_train.shape[1:]:
            raise ValueError(f"x_train images {self.x_train.shape[1:]} and x_val images {self.x_val.shape[1:]} "
                             "differ in shape")
        if len(self.classes) != self.num_classes:
            raise ValueError(f"classes has {len(self.classes)} names but num_classes is {self.num_classes}")

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> tuple:
        return (int(self.x_train.shape[2]), int(self.x_train.shape[3]))

    def digest(self) -> str:
        """A SHA-256 (hex) of the images, labels and class names of every split: the same data gives the same
        digest wherever it was read from (a resumed run and the MPI ranks of one compare it)."""
        return digest_arrays([(name, getattr(self, name)) for name in SPLIT_ARRAYS]
                             + [("classes", np.array(self.classes, dtype=str))])

    def as_float(self, dtype=np.float32) -> "Dataset":
        """Return a copy whose images are ``dtype`` values in [0, 1] (see :func:`to_float`); labels are shared."""
        return replace(self, x_train=to_float(self.x_train, dtype), x_test=to_float(self.x_test, dtype),
                       x_val=None if self.x_val is None else to_float(self.x_val, dtype))

    def __repr__(self):
        c, (h, w) = self.in_channels, self.image_size
        return (f"Dataset(name={self.name!r}, train={self.x_train.shape[0]}, test={self.x_test.shape[0]}, "
                f"image={c}x{h}x{w} {self.x_train.dtype}, num_classes={self.num_classes})")


DEFAULT_AUGMENTATION = {"pad": 4, "flip": True}   # the paper's "+" augmentation of 32x32 CIFAR


def _check_augmentation(augmentation):
    """Raise ValueError unless ``augmentation`` is ``{"pad": int >= 0, "flip": bool}``."""
    ok = (isinstance(augmentation, dict) and set(augmentation) == {"pad", "flip"}
          and isinstance(augmentation["pad"], (int, np.integer)) and not isinstance(augmentation["pad"], bool)
          and augmentation["pad"] >= 0 and isinstance(augmentation["flip"], bool))
    if not ok:
        raise ValueError(f"augmentation must be a dict {{'pad': int >= 0, 'flip': bool}}, got {augmentation!r}")


def _describe(a):
    if isinstance(a, np.ndarray):
        return f"an array of shape {a.shape} and dtype {a.dtype}"
    return f"an object of type {type(a).__name__}"


def to_float(x, dtype=np.float32):
    """Return images as a new float array with values in [0, 1].

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W) or any shape
        ``uint8`` pixels 0..255 (divided by 255) or floating point values already in [0, 1] (cast only).
    dtype : float32 or float64

    Returns
    -------
    ndarray of ``dtype``, same shape as ``x``; always a new array, never ``x`` itself.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    x = np.asarray(x)
    if x.dtype == np.uint8:
        out = x.astype(dtype)
        out /= 255
        return out
    if x.dtype.kind == "f":
        return x.astype(dtype, copy=True)
    raise ValueError(f"x must hold uint8 pixels (0..255) or floats in [0, 1], got dtype {x.dtype}")


def fail(path, problem, hint=None):
    message = f"{path}: {problem}"
    if hint:
        message += f" ({hint})"
    raise DatasetError(message if message.endswith(".") else message + ".")


def existing_dir(data_dir, title):
    root = Path(os.path.expanduser(os.fspath(data_dir)))
    try:
        st = os.stat(root)
    except OSError as e:
        problem = os_problem(e).replace("does not exist (file not found)", "does not exist")
        raise DatasetError(f"{root}: the {title} data directory {problem}.") from None
    if not stat.S_ISDIR(st.st_mode):
        raise DatasetError(f"{root}: the {title} data directory is a file, not a folder.")
    return root


def check_label_range(path, labels, what):
    """Raise DatasetError if a label is at or above ``MAX_CLASSES``: nothing may be sized by such a label."""
    if labels.size and labels.max() >= MAX_CLASSES:
        bad = int(np.flatnonzero(labels >= MAX_CLASSES)[0])
        fail(path, f"{what!r} holds the label {labels[bad]} at index {bad}; labels must be below "
                    f"{MAX_CLASSES} (2**16 classes at most)")


def check_pixels(path, shape, what):
    """Raise DatasetError if one image of an (N, C, H, W) array has more than ``MAX_IMAGE_PIXELS`` pixels."""
    if shape[2] * shape[3] > MAX_IMAGE_PIXELS:
        fail(path, f"{what!r} holds {shape[2]}x{shape[3]} images, more than the limit of {MAX_IMAGE_PIXELS:,} "
                    "pixels (1024x1024) per image")


def check_labels(path, labels, num_classes, what="label", count=None):
    """Raise DatasetError unless ``labels`` is 1-D (of length ``count``) with values in ``0 .. num_classes-1``."""
    if labels.ndim != 1 or (count is not None and labels.shape[0] != count):
        fail(path, f"{what} should be 1-D with {count} entries, found shape {labels.shape}")
    if labels.size == 0:
        return
    lo, hi = labels.min(), labels.max()
    if lo < 0 or hi >= num_classes:
        bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        fail(path, f"{what} at index {bad} is {labels[bad]}, outside the valid range 0..{num_classes - 1}; "
                    "the file is corrupt or not the expected data set")
