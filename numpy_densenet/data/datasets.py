"""Image-classification data sets: the bundled "digits" set and loaders for CIFAR, MNIST and generic ``.npz`` files.

Every loader reads the data set's *official* file format from a local folder, checks it, and returns a
:class:`Dataset`. Nothing is downloaded and nothing is unpickled. One module per format:

* :mod:`.base` - :class:`Dataset`, :class:`DatasetError`, :func:`to_float`;
* :mod:`.digits` - the bundled UCI digits;
* :mod:`.cifar` - CIFAR-10 / CIFAR-100, binary version;
* :mod:`.idx` - MNIST / Fashion-MNIST, IDX files;
* :mod:`.npz` - generic ``.npz`` files.

This module holds the dispatcher :func:`load_dataset` and re-exports the loaders.

A missing, truncated or corrupt file raises :class:`DatasetError`, whose message is one paragraph naming the file
and what is wrong with it (for instance the expected size or magic number against the one found), so a command-line
tool can print it without a traceback.
"""
from __future__ import annotations

from .base import Dataset, DatasetError, to_float
from .cifar import CIFAR10_CLASSES, CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES, load_cifar10, load_cifar100
from .digits import DIGITS_CLASSES, DIGITS_FILE, load_digits  # noqa: F401  (DIGITS_FILE: kept importable here)
from .idx import FASHION_MNIST_CLASSES, MNIST_CLASSES, load_mnist
from .npz import load_npz

__all__ = [
    "DATASET_NAMES",
    "CIFAR10_CLASSES",
    "CIFAR100_FINE_CLASSES",
    "CIFAR100_COARSE_CLASSES",
    "MNIST_CLASSES",
    "FASHION_MNIST_CLASSES",
    "DIGITS_CLASSES",
    "DatasetError",
    "Dataset",
    "to_float",
    "load_dataset",
    "load_digits",
    "load_cifar10",
    "load_cifar100",
    "load_mnist",
    "load_npz",
]

DATASET_NAMES = ("digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "npz")

_ALIASES = {
    "digits": "digits",
    "cifar10": "cifar10", "cifar-10": "cifar10",
    "cifar100": "cifar100", "cifar-100": "cifar100",
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
    "npz": "npz",
}


def load_dataset(name, data_dir=None, *, label_mode="fine") -> Dataset:
    """Load a data set by name.

    Parameters
    ----------
    name : str
        One of ``DATASET_NAMES``: ``"digits"``, ``"cifar10"``, ``"cifar100"``, ``"mnist"``, ``"fashion-mnist"``,
        ``"npz"`` (case and ``_``/``-`` are ignored; ``"cifar-10"``, ``"fashion_mnist"`` are accepted).
    data_dir : str or path-like, optional
        Ignored for ``"digits"`` (bundled). For CIFAR, MNIST and Fashion-MNIST the folder holding the official
        files, or its parent (see the individual loaders). For ``"npz"`` the path of the ``.npz`` file.
    label_mode : {"fine", "coarse"}
        CIFAR-100 only: the 100 fine labels (default) or the 20 coarse super-class labels.

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        Unknown name, missing ``data_dir``, or a missing / truncated / corrupt file.
    """
    key = _ALIASES.get(str(name).strip().lower().replace("_", "-"))
    if key is None:
        raise DatasetError(f"unknown data set {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    if key == "digits":
        return load_digits()
    if data_dir is None:
        what = "the path of the .npz file" if key == "npz" else "the folder holding its files"
        raise DatasetError(f"data set {key!r} is not bundled: give data_dir (--data-dir on the command line), {what}")
    if key == "cifar10":
        return load_cifar10(data_dir)
    if key == "cifar100":
        return load_cifar100(data_dir, label_mode=label_mode)
    if key == "mnist":
        return load_mnist(data_dir, variant="mnist")
    if key == "fashion-mnist":
        return load_mnist(data_dir, variant="fashion-mnist")
    return load_npz(data_dir)
