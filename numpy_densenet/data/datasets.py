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

import os
from pathlib import Path

from .base import Dataset, DatasetError, to_float
from .cifar import CIFAR10_CLASSES, CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES, load_cifar10, load_cifar100
from .digits import DIGITS_CLASSES, DIGITS_FILE, load_digits  # noqa: F401  (DIGITS_FILE: kept importable here)
from .idx import FASHION_MNIST_CLASSES, MNIST_CLASSES, find_mnist_folder, load_mnist, mnist_subfolders, mnist_url
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
    "data_search_path",
    "find_dataset",
    "DATA_ENV",
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

DATA_ENV = "NUMPY_DENSENET_DATA"    # folders (os.pathsep-separated) searched first for a data set's files

# Data sets found without data_dir, by the folder name they have under a data directory, and the Debian package
# that installs them (into /usr/share/datasets/<name>), when there is one.
_SEARCHED = {"mnist": ("mnist", None), "fashion-mnist": ("fashion-mnist", "dataset-fashion-mnist")}


def data_search_path(name):
    """The folders searched, in order, for data set ``name`` when no data_dir is given.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist"}

    Returns
    -------
    list of pathlib.Path
        Absolute paths: each folder of ``$NUMPY_DENSENET_DATA`` (os.pathsep-separated, ``~`` expanded), then
        ``./data``, ``~/data``, ``/usr/local/share/datasets`` and ``/usr/share/datasets`` (where Debian's ``dataset-*``
        packages put their files), duplicates removed. Each is searched for the files themselves and for the
        sub-folders named after the data set (``fashion-mnist/``, ``FashionMNIST/raw/``, ...).
    """
    if name not in _SEARCHED:
        raise ValueError(f"name must be one of {', '.join(_SEARCHED)} (the data sets searched for), got {name!r}")
    env = [Path(os.path.expanduser(p)).absolute() for p in os.environ.get(DATA_ENV, "").split(os.pathsep)
           if p.strip()]
    roots = env + [Path("data").absolute(), Path(os.path.expanduser("~/data")).absolute(),
                   Path("/usr/local/share/datasets"), Path("/usr/share/datasets")]
    unique = []
    for root in roots:
        if root not in unique:
            unique.append(root)
    return unique


def find_dataset(name):
    """The folder holding data set ``name``'s files, found on :func:`data_search_path`; nothing is downloaded.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist"}

    Returns
    -------
    pathlib.Path
        The first folder of the search path (or its sub-folder named after the data set) holding the training
        images file.

    Raises
    ------
    DatasetError
        Nothing found: the message names every folder searched, the sub-folder names tried in each, the
        ``--data-dir`` option and the Debian package that installs the data set, when there is one.
    """
    roots = data_search_path(name)
    for root in roots:
        folder = find_mnist_folder(root, name)
        if folder is not None:
            return folder
    folder_name, package = _SEARCHED[name]
    install = (f"Install it with `apt-get install {package}` (Debian, Ubuntu: it puts the files in "
               f"/usr/share/datasets/{folder_name}), or give" if package else "Give")
    shown = ", ".join(str(r) for r in roots)
    raise DatasetError(
        f"data set {name!r} is not bundled and was not found: searched {shown}, each for the IDX files and for "
        f"the sub-folders {', '.join(mnist_subfolders(name))} (${DATA_ENV} adds folders in front). {install} "
        f"the folder holding its four IDX files with data_dir (--data-dir on the command line; the files are "
        f"published at {mnist_url(name)}). Nothing is downloaded.")


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
        Without it, MNIST and Fashion-MNIST are searched for on :func:`data_search_path` (``$NUMPY_DENSENET_DATA``,
        ``./data``, ``~/data``, ``/usr/local/share/datasets``, ``/usr/share/datasets``: Debian's
        ``dataset-fashion-mnist`` package puts its files in ``/usr/share/datasets/fashion-mnist``).
    label_mode : {"fine", "coarse"}
        CIFAR-100 only: the 100 fine labels (default) or the 20 coarse super-class labels.

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        Unknown name, missing ``data_dir`` (for MNIST / Fashion-MNIST: not found on the search path; the message
        names every folder searched), or a missing / truncated / corrupt file.
    """
    key = _ALIASES.get(str(name).strip().lower().replace("_", "-"))
    if key is None:
        raise DatasetError(f"unknown data set {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    if key == "digits":
        return load_digits()
    if data_dir is None and key in _SEARCHED:
        data_dir = find_dataset(key)
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
