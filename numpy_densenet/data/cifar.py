"""CIFAR-10 and CIFAR-100 from their official *binary* version (the pickled "python version" is refused)."""
from __future__ import annotations

import os

import numpy as np

from .base import Dataset, DatasetError, check_labels, existing_dir, fail
from .files import FileFormatError, check_regular_file, format_bytes, memory_budget

__all__ = ["CIFAR10_CLASSES", "CIFAR100_FINE_CLASSES", "CIFAR100_COARSE_CLASSES", "load_cifar10", "load_cifar100"]

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
    root = existing_dir(data_dir, title)
    if os.path.lexists(root / marker):           # a link loop or folder there is reported when read
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
    if not os.path.lexists(path):
        fail(path, "file not found", f"the official file holds {official_records} records of {record} bytes")
    try:
        size = check_regular_file(path, "CIFAR file")
    except FileFormatError as e:
        raise DatasetError(f"{e}.") from None
    if size > memory_budget():
        fail(path, f"is {format_bytes(size)}, more than the memory budget of {format_bytes(memory_budget())}; "
                    "set NUMPY_DENSENET_MAX_BYTES to allow more")
    if size == 0 or size % record:
        fail(path, f"size {size} bytes is not a whole, non-zero number of {record}-byte records "
                    f"(the official file is {official_records * record} bytes = {official_records} records); "
                    "the file is truncated or corrupt, download and extract it again")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        fail(path, f"cannot be read: {e.strerror or e}")
    if data.size != size:
        fail(path, f"changed while it was read ({data.size} of {size} bytes)")
    data = data.reshape(-1, record)
    ys = []
    for byte, num_classes, what in labels:
        check_labels(path, data[:, byte], num_classes, what=what)
        ys.append(data[:, byte].astype(np.int64))
    x = np.ascontiguousarray(data[:, len(labels):]).reshape(-1, 3, 32, 32)
    return x, ys
