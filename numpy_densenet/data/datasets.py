"""Image-classification data sets: the bundled "digits" set and loaders for CIFAR, MNIST and generic ``.npz`` files.

Every loader reads the data set's *official* file format from a local folder, checks it, and returns a
:class:`Dataset`. Nothing is downloaded and nothing is unpickled: CIFAR is read from its *binary* version,
MNIST / Fashion-MNIST from their IDX files, ``.npz`` files with ``np.load(..., allow_pickle=False)``.

A missing, truncated or corrupt file raises :class:`DatasetError`, whose message is one paragraph naming the file
and what is wrong with it (for instance the expected size or magic number against the one found), so a command-line
tool can print it without a traceback.

Conventions for every :class:`Dataset`:

* images are ``(N, C, H, W)`` arrays, either ``uint8`` raw pixels 0..255 (CIFAR, MNIST, ``.npz`` files storing
  integers) or floating point values in [0, 1] (the bundled digits, ``.npz`` files storing floats);
  :func:`to_float` / :meth:`Dataset.as_float` turn either into float32/float64 in [0, 1];
* labels are ``(N,)`` int64 arrays with values in ``0 .. num_classes - 1``.
"""
from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

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

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

CIFAR100_FINE_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger",
    "tractor", "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes", "large_omnivores_and_herbivores",
    "medium_mammals", "non-insect_invertebrates", "people", "reptiles", "small_mammals", "trees",
    "vehicles_1", "vehicles_2",
)

DIGITS_CLASSES = tuple(str(d) for d in range(10))
MNIST_CLASSES = DIGITS_CLASSES
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

DIGITS_FILE = Path(__file__).with_name("digits.npz")


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

    def __post_init__(self):
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

    def as_float(self, dtype=np.float32) -> "Dataset":
        """Return a copy whose images are ``dtype`` values in [0, 1] (see :func:`to_float`); labels are shared."""
        return replace(self, x_train=to_float(self.x_train, dtype), x_test=to_float(self.x_test, dtype),
                       x_val=None if self.x_val is None else to_float(self.x_val, dtype))

    def __repr__(self):
        c, (h, w) = self.in_channels, self.image_size
        return (f"Dataset(name={self.name!r}, train={self.x_train.shape[0]}, test={self.x_test.shape[0]}, "
                f"image={c}x{h}x{w} {self.x_train.dtype}, num_classes={self.num_classes})")


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


# --------------------------------------------------------------------------------------------------------------
# Dispatcher
# --------------------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------------------
# Bundled digits
# --------------------------------------------------------------------------------------------------------------

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
    arrays = _read_npz(path, required=("images", "labels", "train_idx", "test_idx"))
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim != 3 or images.shape[1:] != (8, 8) or images.dtype != np.uint8:
        _fail(path, f"'images' should be uint8 of shape (N, 8, 8), found {images.dtype} {images.shape}")
    if images.max(initial=0) > 16:
        _fail(path, f"'images' should hold grey levels 0..16, found a maximum of {images.max()}")
    _check_labels(path, labels, 10, what="'labels'", count=images.shape[0])
    n = images.shape[0]
    train_idx, test_idx = arrays["train_idx"], arrays["test_idx"]
    for key, idx in (("train_idx", train_idx), ("test_idx", test_idx)):
        if idx.ndim != 1 or idx.dtype.kind not in "iu" or idx.size == 0 or idx.min() < 0 or idx.max() >= n:
            _fail(path, f"{key!r} should be a non-empty 1-D integer array of indices in 0..{n - 1}")
    if np.intersect1d(train_idx, test_idx).size:
        _fail(path, "'train_idx' and 'test_idx' overlap")
    x = (images.astype(np.float32) / 16)[:, None, :, :]
    y = labels.astype(np.int64)
    return Dataset("digits", x[train_idx], y[train_idx], x[test_idx], y[test_idx], 10, DIGITS_CLASSES)


# --------------------------------------------------------------------------------------------------------------
# CIFAR, binary version
# --------------------------------------------------------------------------------------------------------------

_CIFAR_PIXELS = 3 * 32 * 32


def load_cifar10(data_dir) -> Dataset:
    """CIFAR-10 from its binary version (``cifar-10-binary.tar.gz``).

    Parameters
    ----------
    data_dir : str or path-like
        The extracted folder ``cifar-10-batches-bin`` or its parent. It must hold ``data_batch_1.bin`` ..
        ``data_batch_5.bin`` and ``test_batch.bin``, each a sequence of 3,073-byte records: one label byte
        (0..9) and 3,072 pixel bytes, the red, green and blue 32x32 planes in row-major order.

    Returns
    -------
    Dataset
        uint8 images (50000, 3, 32, 32) and (10000, 3, 32, 32); 10 classes named as in ``CIFAR10_CLASSES``.

    Raises
    ------
    DatasetError
        If the folder holds the pickled "python version" (never unpickled here), or a file is missing, empty, not a
        whole number of records, or holds a label above 9.
    """
    folder = _find_cifar_folder(data_dir, "CIFAR-10", "cifar-10-batches-bin", "data_batch_1.bin",
                                "cifar-10-batches-py", ("data_batch_1", "test_batch", "batches.meta"),
                                "cifar-10-binary.tar.gz")
    labels = [(0, 10, "label byte")]
    train = [_read_cifar_file(folder / f"data_batch_{k}.bin", labels, official_records=10000) for k in range(1, 6)]
    x_test, (y_test,) = _read_cifar_file(folder / "test_batch.bin", labels, official_records=10000)
    x_train = np.concatenate([x for x, _ in train])
    y_train = np.concatenate([y for _, (y,) in train])
    return Dataset("cifar10", x_train, y_train, x_test, y_test, 10, CIFAR10_CLASSES)


def load_cifar100(data_dir, label_mode="fine") -> Dataset:
    """CIFAR-100 from its binary version (``cifar-100-binary.tar.gz``).

    Parameters
    ----------
    data_dir : str or path-like
        The extracted folder ``cifar-100-binary`` or its parent. It must hold ``train.bin`` and ``test.bin``, each a
        sequence of 3,074-byte records: the coarse label byte (0..19), the fine label byte (0..99) and 3,072 pixel
        bytes (red, green, blue 32x32 planes).
    label_mode : {"fine", "coarse"}
        Which labels to return: the 100 fine classes (default) or the 20 coarse super-classes.

    Returns
    -------
    Dataset
        uint8 images (50000, 3, 32, 32) and (10000, 3, 32, 32); 100 (or 20) classes.

    Raises
    ------
    DatasetError
        As :func:`load_cifar10`; both label bytes are range-checked whatever ``label_mode``.
    """
    if label_mode not in ("fine", "coarse"):
        raise ValueError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    folder = _find_cifar_folder(data_dir, "CIFAR-100", "cifar-100-binary", "train.bin",
                                "cifar-100-python", ("train", "test", "meta"), "cifar-100-binary.tar.gz")
    # Both label bytes are checked, whichever is returned: an out-of-range value in either means a corrupt file.
    labels = [(0, 20, "coarse label byte"), (1, 100, "fine label byte")]
    x_train, (c_train, f_train) = _read_cifar_file(folder / "train.bin", labels, official_records=50000)
    x_test, (c_test, f_test) = _read_cifar_file(folder / "test.bin", labels, official_records=10000)
    if label_mode == "fine":
        return Dataset("cifar100", x_train, f_train, x_test, f_test, 100, CIFAR100_FINE_CLASSES)
    return Dataset("cifar100", x_train, c_train, x_test, c_test, 20, CIFAR100_COARSE_CLASSES)


def _find_cifar_folder(data_dir, title, bin_dir, marker, py_dir, py_markers, archive):
    """Return the folder holding the binary files: ``data_dir`` itself or ``data_dir / bin_dir``."""
    root = _existing_dir(data_dir, title)
    if (root / marker).is_file():
        return root
    if (root / bin_dir).is_dir():
        return root / bin_dir
    for folder in (root, root / py_dir):
        found = [m for m in py_markers if (folder / m).is_file()]
        if found:
            raise DatasetError(
                f"{folder / found[0]}: this is the {title} \"python version\", whose batches are Python pickles; "
                f"numpy_densenet never unpickles files, because unpickling can run arbitrary code. Download the "
                f"binary version instead, {archive} from {CIFAR_URL}, extract it (it creates the folder "
                f"{bin_dir}/) and pass that folder or its parent as the data directory.")
    if (root / archive).is_file():
        raise DatasetError(f"{root / archive}: the archive has not been extracted; run `tar -xzf {archive}` in "
                           f"{root} (it creates {bin_dir}/) and pass that folder or its parent.")
    if root.name == bin_dir:
        return root  # the per-file check names the missing file
    raise DatasetError(f"{root}: no {title} binary files found; expected {root / bin_dir / marker} or "
                       f"{root / marker}. Download {archive} (the binary version) from {CIFAR_URL} and extract it.")


def _read_cifar_file(path, labels, official_records):
    """Read one CIFAR binary file of records ``[label bytes..., 3072 pixel bytes]``.

    ``labels`` lists ``(byte index, number of classes, description)`` for each label byte of a record.
    Returns ``x`` uint8 (N, 3, 32, 32) and a list of int64 (N,) label arrays, in the order of ``labels``.
    """
    record = len(labels) + _CIFAR_PIXELS
    if not path.is_file():
        _fail(path, "file not found", f"the official file holds {official_records} records of {record} bytes")
    size = path.stat().st_size
    if size == 0 or size % record:
        _fail(path, f"size {size} bytes is not a whole, non-zero number of {record}-byte records "
                    f"(the official file is {official_records * record} bytes = {official_records} records); "
                    "the file is truncated or corrupt, download and extract it again")
    data = np.fromfile(path, dtype=np.uint8).reshape(-1, record)
    ys = []
    for byte, num_classes, what in labels:
        _check_labels(path, data[:, byte], num_classes, what=what)
        ys.append(data[:, byte].astype(np.int64))
    x = np.ascontiguousarray(data[:, len(labels):]).reshape(-1, 3, 32, 32)
    return x, ys


# --------------------------------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST, IDX format
# --------------------------------------------------------------------------------------------------------------

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
        uint8 images (60000, 1, 28, 28) and (10000, 1, 28, 28); 10 classes.

    Raises
    ------
    DatasetError
        A file is missing, not valid gzip, has the wrong magic number (2051 for images, 2049 for labels), a size
        other than its header promises, a label above 9, or image and label counts disagree.
    """
    if variant not in _MNIST_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(_MNIST_VARIANTS)}, got {variant!r}")
    title, name, classes, subdirs, url = _MNIST_VARIANTS[variant]
    root = _existing_dir(data_dir, title)
    folder = next((d for d in (root, *(root / s for s in subdirs)) if _find_idx(d, _MNIST_FILES["train"][0])),
                  root)
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
        _check_labels(paths[1], y, 10)
        splits.append((x[:, None, :, :], y.astype(np.int64)))
    (x_train, y_train), (x_test, y_test) = splits
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(f"{folder}: training images are {x_train.shape[2:]} but test images are "
                           f"{x_test.shape[2:]} pixels; the files come from different data sets.")
    return Dataset(name, x_train, y_train, x_test, y_test, 10, classes)


def _find_idx(folder, stem):
    """Path of ``stem`` in ``folder``: gzipped or not, and the ``train-images.idx3-ubyte`` spelling too."""
    dotted = stem.replace("-idx", ".idx")
    for fname in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / fname).is_file():
            return folder / fname
    return None


def _read_idx(path, magic, ndim):
    """Read an unsigned-byte IDX file (gzipped if its name ends in ``.gz``) and check it fully."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        _fail(path, f"cannot be decompressed ({exc}); the download is truncated or corrupt")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        _fail(path, f"only {len(raw)} bytes, shorter than the {header_size}-byte IDX header")
    found_magic = int.from_bytes(raw[:4], "big")
    if found_magic != magic:
        kind = "images" if magic == _IDX_IMAGES_MAGIC else "labels"
        _fail(path, f"magic number is {found_magic} (0x{found_magic:08x}), expected {magic} (0x{magic:08x}) for "
                    f"an IDX file of {kind}; this is not the right file or it is corrupt")
    dims = tuple(int.from_bytes(raw[4 + 4 * k: 8 + 4 * k], "big") for k in range(ndim))
    if dims[0] == 0:
        _fail(path, "header announces 0 items; the file is empty or corrupt")
    if ndim == 3 and 0 in dims[1:]:
        _fail(path, f"header gives an image size of {dims[1]}x{dims[2]} pixels")
    expected = header_size + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        shape = " x ".join(str(d) for d in dims)
        what = "decompressed size" if path.suffix == ".gz" else "size"
        _fail(path, f"{what} is {len(raw)} bytes but its header promises {shape} bytes of data, i.e. {expected} "
                    f"bytes; the file is {'truncated' if len(raw) < expected else 'longer than it should be'}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims).copy()


# --------------------------------------------------------------------------------------------------------------
# Generic .npz
# --------------------------------------------------------------------------------------------------------------

def load_npz(path, *, test_fraction=0.2, seed=0) -> Dataset:
    """A data set stored in a ``.npz`` file (read with ``allow_pickle=False``).

    Keys
    ----
    ``x`` : (N, C, H, W), (N, H, W, C) or (N, H, W)
        Training images. uint8 is kept as is; other integer types must lie in 0..255 and become uint8;
        floats (expected in [0, 1]) are kept, float16 becoming float32. A 3-D array is one grey channel.
        **Layout rule** for 4-D arrays: channels-last when the last dimension is 1 or 3 and the second is
        not (so ``(N, 32, 32, 3)`` and ``(N, 28, 28, 1)`` are transposed to NCHW), channels-first otherwise;
        an ambiguous shape such as ``(N, 3, 3, 3)`` is read as channels-first.
    ``y`` : (N,) integers >= 0
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
        _fail(path, "is a folder; for the 'npz' data set give the path of the .npz file itself")
    arrays = _read_npz(path, required=("x", "y"))
    has_test = ("x_test" in arrays, "y_test" in arrays)
    if any(has_test) and not all(has_test):
        _fail(path, "holds only one of 'x_test' and 'y_test'; give both or neither")

    x = _npz_images(path, arrays["x"], "x")
    y = _npz_labels(path, arrays["y"], "y", x.shape[0], "x")
    if all(has_test):
        x_test = _npz_images(path, arrays["x_test"], "x_test")
        y_test = _npz_labels(path, arrays["y_test"], "y_test", x_test.shape[0], "x_test")
        if x_test.shape[1:] != x.shape[1:] or x_test.dtype != x.dtype:
            _fail(path, f"'x_test' images are {x_test.dtype} {x_test.shape[1:]} (C, H, W) but 'x' images are "
                        f"{x.dtype} {x.shape[1:]}")
        x_train, y_train = x, y
    else:
        if x.shape[0] < 2:
            _fail(path, f"'x' holds {x.shape[0]} image(s): at least 2 are needed to split off a test set")
        perm = np.random.default_rng(seed).permutation(x.shape[0])
        n_test = min(max(1, int(round(test_fraction * x.shape[0]))), x.shape[0] - 1)
        test_idx, train_idx = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        x_train, y_train, x_test, y_test = x[train_idx], y[train_idx], x[test_idx], y[test_idx]

    x_val = y_val = None
    if ("x_val" in arrays) != ("y_val" in arrays):
        _fail(path, "holds only one of 'x_val' and 'y_val'; give both or neither")
    if "x_val" in arrays:
        x_val = _npz_images(path, arrays["x_val"], "x_val")
        if x_val.shape[0] == 0:
            _fail(path, "'x_val' holds no images; leave 'x_val' and 'y_val' out to hold out part of 'x' instead")
        y_val = _npz_labels(path, arrays["y_val"], "y_val", x_val.shape[0], "x_val")
        if x_val.shape[1:] != x_train.shape[1:] or x_val.dtype != x_train.dtype:
            _fail(path, f"'x_val' images are {x_val.dtype} {x_val.shape[1:]} (C, H, W) but 'x' images are "
                        f"{x_train.dtype} {x_train.shape[1:]}")

    if "classes" in arrays:
        classes = arrays["classes"]
        if classes.ndim != 1 or classes.dtype.kind not in "US" or classes.size == 0:
            _fail(path, f"'classes' should be a non-empty 1-D array of strings, found {classes.dtype} "
                        f"{classes.shape}")
        classes = tuple(c.decode() if isinstance(c, bytes) else str(c) for c in classes.tolist())
        num_classes = len(classes)
        for key, labels in (("y", y), ("y_test", y_test)) + ((("y_val", y_val),) if y_val is not None else ()):
            _check_labels(path, labels, num_classes, what=f"{key!r} (with {num_classes} names in 'classes')")
    else:
        num_classes = int(max(y_train.max(), y_test.max(), -1 if y_val is None else y_val.max())) + 1
        classes = tuple(str(k) for k in range(num_classes))
    return Dataset(path.stem, x_train, y_train, x_test, y_test, num_classes, classes, x_val=x_val, y_val=y_val)


def _npz_images(path, x, key):
    """Validate and convert an image array of a ``.npz`` file to (N, C, H, W)."""
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim == 4:
        if x.shape[3] in (1, 3) and x.shape[1] not in (1, 3):
            x = x.transpose(0, 3, 1, 2)
    else:
        _fail(path, f"{key!r} should be 3-D (N, H, W) or 4-D (N, C, H, W) / (N, H, W, C), found shape {x.shape}")
    if x.shape[0] == 0 or 0 in x.shape[2:]:
        _fail(path, f"{key!r} is empty (shape {x.shape} after conversion to N, C, H, W)")
    if x.dtype == np.uint8:
        pass
    elif x.dtype.kind in "iu":
        lo, hi = x.min(), x.max()
        if lo < 0 or hi > 255:
            _fail(path, f"{key!r} holds {x.dtype} values in {lo}..{hi}; integer images must lie in 0..255")
        x = x.astype(np.uint8)
    elif x.dtype.kind == "f":
        if not np.isfinite(x).all():
            _fail(path, f"{key!r} holds NaN or infinite values")
        if x.dtype.itemsize < 4:
            x = x.astype(np.float32)
    else:
        _fail(path, f"{key!r} has dtype {x.dtype}; images must be uint8 (0..255) or floats (in [0, 1])")
    return np.ascontiguousarray(x)


def _npz_labels(path, y, key, n, x_key):
    if y.ndim != 1 or y.shape[0] != n:
        _fail(path, f"{key!r} should be a 1-D array of {n} labels, one per image of {x_key!r}, found shape {y.shape}")
    if y.dtype.kind not in "iu":
        _fail(path, f"{key!r} has dtype {y.dtype}; labels must be integers")
    if y.size and y.min() < 0:
        _fail(path, f"{key!r} holds the negative label {y.min()}; labels must be 0 .. num_classes - 1")
    return y.astype(np.int64)


# --------------------------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------------------------

def _fail(path, problem, hint=None):
    message = f"{path}: {problem}"
    if hint:
        message += f" ({hint})"
    raise DatasetError(message if message.endswith(".") else message + ".")


def _existing_dir(data_dir, title):
    root = Path(os.path.expanduser(os.fspath(data_dir)))
    if not root.exists():
        raise DatasetError(f"{root}: the {title} data directory does not exist.")
    if not root.is_dir():
        raise DatasetError(f"{root}: the {title} data directory is a file, not a folder.")
    return root


def _check_labels(path, labels, num_classes, what="label", count=None):
    """Raise DatasetError unless ``labels`` is 1-D (of length ``count``) with values in ``0 .. num_classes-1``."""
    if labels.ndim != 1 or (count is not None and labels.shape[0] != count):
        _fail(path, f"{what} should be 1-D with {count} entries, found shape {labels.shape}")
    if labels.size == 0:
        return
    lo, hi = labels.min(), labels.max()
    if lo < 0 or hi >= num_classes:
        bad = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        _fail(path, f"{what} at index {bad} is {labels[bad]}, outside the valid range 0..{num_classes - 1}; "
                    "the file is corrupt or not the expected data set")


def _read_npz(path, required):
    """Load every array of an ``.npz`` file into memory (``allow_pickle=False``), checking ``required`` keys."""
    if not path.is_file():
        _fail(path, "file not found")
    try:
        with open(path, "rb") as f:  # our own handle: closed even when np.load fails half-way
            npz = np.load(f, allow_pickle=False)
            if not hasattr(npz, "files"):
                _fail(path, "is a single .npy array, not an .npz archive of named arrays")
            missing = [k for k in required if k not in npz.files]
            if missing:
                _fail(path, f"missing the array(s) {', '.join(map(repr, missing))} (found: "
                            f"{', '.join(map(repr, npz.files)) or 'none'})")
            arrays = {k: npz[k] for k in npz.files}
            npz.close()
            return arrays
    except DatasetError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            _fail(path, "holds object arrays, which would need unpickling; store plain numeric or string arrays")
        _fail(path, f"is not a valid .npz file ({exc})")
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        _fail(path, f"is not a valid .npz file or is truncated ({type(exc).__name__}: {exc})")
