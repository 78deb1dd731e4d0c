"""Data sets and mini-batches.

``load_dataset(name, data_dir)`` returns a :class:`Dataset` (NCHW images, int64 labels) for the bundled "digits"
set or for CIFAR-10/100 (binary version), MNIST / Fashion-MNIST (IDX files) and generic ``.npz`` files in local
folders; problems with the files raise :class:`DatasetError`. :class:`BatchIterator` yields shuffled, optionally
augmented and normalised mini-batches, with :func:`channel_stats` / :func:`normalize` for the statistics.
"""
from .datasets import (
    CIFAR10_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_CLASSES,
    DATASET_NAMES,
    DIGITS_CLASSES,
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    Dataset,
    DatasetError,
    load_cifar10,
    load_cifar100,
    load_dataset,
    load_digits,
    load_mnist,
    load_npz,
    to_float,
)
from .loader import BatchIterator, channel_stats, normalize

__all__ = [
    "BatchIterator",
    "CIFAR10_CLASSES",
    "CIFAR100_COARSE_CLASSES",
    "CIFAR100_FINE_CLASSES",
    "DATASET_NAMES",
    "DIGITS_CLASSES",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "Dataset",
    "DatasetError",
    "channel_stats",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_digits",
    "load_mnist",
    "load_npz",
    "normalize",
    "to_float",
]
