"""MNIST and Fashion-MNIST from their official IDX files, gzipped or not."""
from __future__ import annotations

import math
import os

import numpy as np

from .base import Dataset, DatasetError, check_labels, existing_dir, fail
from .files import MAX_IMAGE_PIXELS, FileFormatError, read_gzip

__all__ = ["MNIST_CLASSES", "FASHION_MNIST_CLASSES", "load_mnist", "find_mnist_folder", "mnist_subfolders", "mnist_url"]

MNIST_CLASSES = tuple(str(d) for d in range(10))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_MNIST_VARIANTS = {
    # variant: (title, dataset name, classes, sub-folders of data_dir also searched, URL)
    "mnist": ("MNIST", "mnist", MNIST_CLASSES, ("mnist", "MNIST", "MNIST/raw"),
              "https://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("Fashion-MNIST", "fashion-mnist", FASHION_MNIST_CLASSES,
                      ("fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw", "data/fashion"),
                      "https://github.com/zalandoresearch/fashion-mnist"),
}

# What --augment means for the 28x28 images: a random 28x28 crop of the image zero-padded by 2 pixels (+-2 pixels
# of shift, the 4-of-32 of CIFAR scaled down). No horizontal flip: never for MNIST (a mirrored digit is another
# glyph), and not for Fashion-MNIST either, although clothes are roughly left-right symmetric: in the one-hour
# budget of the README's recipe the flip cost accuracy (paired runs in benchmarks/README.md, "Real data").
MNIST_AUGMENTATION = {"mnist": {"pad": 2, "flip": False}, "fashion-mnist": {"pad": 2, "flip": False}}


def load_mnist(data_dir, variant="mnist") -> Dataset:
    """MNIST or Fashion-MNIST from the official IDX files.

    Parameters
    ----------
    data_dir : str or path-like
        Folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
        ``t10k-labels-idx1-ubyte``, each either gzipped (``.gz``, as downloaded) or not. A sub-folder named after
        the data set (``mnist``, ``MNIST/raw``, ``fashion-mnist``, ``FashionMNIST/raw``, ...) is also searched.
    variant : {"mnist", "fashion-mnist"}
        Only changes the name and the class names of the result; the format is the same.

    Returns
    -------
    Dataset
        uint8 images (60000, 1, 28, 28) and (10000, 1, 28, 28); 10 classes; ``augmentation`` pad 2, no flip
        (see ``MNIST_AUGMENTATION``).

    Raises
    ------
    DatasetError
        A file is missing, not valid gzip, has the wrong magic number (2051 for images, 2049 for labels), a size
        other than its header promises, a label above 9, or image and label counts disagree.
    """
    if variant not in _MNIST_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(_MNIST_VARIANTS)}, got {variant!r}")
    title, name, classes, subdirs, url = _MNIST_VARIANTS[variant]
    root = existing_dir(data_dir, title)
    folder = find_mnist_folder(root, variant) or root
    splits = []
    for split, (images_name, labels_name) in _MNIST_FILES.items():
        paths = []
        for stem in (images_name, labels_name):
            path = _find_idx(folder, stem)
            if path is None:
                raise DatasetError(f"{folder / stem}: {title} file not found (looked for {stem} and {stem}.gz in "
                                   f"{folder}). Download the four IDX files from {url} into that folder.")
            paths.append(path)
        x = _read_idx(paths[0], _IDX_IMAGES_MAGIC, ndim=3)
        y = _read_idx(paths[1], _IDX_LABELS_MAGIC, ndim=1)
        if x.shape[0] != y.shape[0]:
            raise DatasetError(f"{paths[0]} holds {x.shape[0]} images but {paths[1]} holds {y.shape[0]} labels; "
                               "one of the two files is from another release or corrupt.")
        check_labels(paths[1], y, 10)
        splits.append((x[:, None, :, :], y.astype(np.int64)))
    (x_train, y_train), (x_test, y_test) = splits
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(f"{folder}: training images are {x_train.shape[2:]} but test images are "
                           f"{x_test.shape[2:]} pixels; the files come from different data sets.")
    return Dataset(name, x_train, y_train, x_test, y_test, 10, classes,
                   augmentation=dict(MNIST_AUGMENTATION[variant]))


def mnist_subfolders(variant):
    """The sub-folder names searched below a data directory for ``variant``, e.g. ``("mnist", "MNIST", ...)``."""
    return _MNIST_VARIANTS[variant][3]


def mnist_url(variant):
    """Where ``variant``'s IDX files are published (named in error messages; nothing is downloaded)."""
    return _MNIST_VARIANTS[variant][4]


def find_mnist_folder(root, variant="mnist"):
    """The folder holding ``variant``'s training images: ``root`` itself or one of its sub-folders, or None.

    Parameters
    ----------
    root : pathlib.Path
    variant : {"mnist", "fashion-mnist"}

    Returns
    -------
    pathlib.Path or None
        The first of ``root``, ``root / sub`` (``sub`` in :func:`mnist_subfolders`) where
        ``train-images-idx3-ubyte`` (gzipped or not) exists; None when there is none. Only the training images
        file is looked for: a folder that has it but lacks another file is found, and reading it names the file.
    """
    candidates = (root, *(root / sub for sub in _MNIST_VARIANTS[variant][3]))
    return next((d for d in candidates if _find_idx(d, _MNIST_FILES["train"][0])), None)


def _find_idx(folder, stem):
    """Path of ``stem`` in ``folder``: gzipped or not, and the ``train-images.idx3-ubyte`` spelling too.

    Anything at that path counts (a folder or a broken link too), so that reading it says what is wrong.
    """
    dotted = stem.replace("-idx", ".idx")
    for fname in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if os.path.lexists(folder / fname):
            return folder / fname
    return None


def _read_idx(path, magic, ndim):
    """Read an unsigned-byte IDX file (gzipped if its name ends in ``.gz``) and check it fully.

    The header is checked first: magic number, no zero dimension, images below ``MAX_IMAGE_PIXELS``, and the
    data size (computed with Python integers, so no overflow) within the memory budget; then exactly that many
    bytes are read, decompressing incrementally.
    """
    header_size = 4 + 4 * ndim
    kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"

    def data_size(header):
        found_magic = int.from_bytes(header[:4], "big")
        if found_magic != magic:
            fail(path, f"magic number is {found_magic} (0x{found_magic:08x}), expected {magic} (0x{magic:08x}) "
                        f"for an IDX file of {kind}; this is not the right file or it is corrupt")
        dims = tuple(int.from_bytes(header[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
        if dims[0] == 0:
            fail(path, "header announces 0 items; the file is empty or corrupt")
        if ndim == 3 and 0 in dims[1:]:
            fail(path, f"header gives an image size of {dims[1]}x{dims[2]} pixels")
        if ndim == 3 and dims[1] * dims[2] > MAX_IMAGE_PIXELS:
            fail(path, f"header gives an image size of {dims[1]}x{dims[2]} pixels, more than the limit of "
                        f"{MAX_IMAGE_PIXELS:,} (1024x1024)")
        dims_of[0] = dims
        return math.prod(dims)

    dims_of = [None]
    try:
        _, data = read_gzip(path, header_size, data_size, what=f"{kind} file")
    except FileFormatError as e:
        raise DatasetError(f"{e}.") from None
    return data.reshape(dims_of[0])
