"""Tests of numpy_densenet.data: file formats, error reporting, the bundled digits, BatchIterator."""
import gzip
import re
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpy_densenet.data import (
    CIFAR10_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_CLASSES,
    FASHION_MNIST_CLASSES,
    BatchIterator,
    Dataset,
    DatasetError,
    channel_stats,
    load_dataset,
    normalize,
    to_float,
)
from numpy_densenet.data import datasets as datasets_module
from numpy_densenet.data import loader as loader_module


# ----------------------------------------------------------------------------------------------------------------
# Writers of tiny files in the official formats (written from the format specifications, not from the reader)
# ----------------------------------------------------------------------------------------------------------------

def cifar_records(rng, n, label_columns):
    """``n`` records: the given label byte columns, then 3072 random pixel bytes. Returns (bytes, pixels, labels)."""
    pixels = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    records = np.concatenate([np.asarray(label_columns, dtype=np.uint8).reshape(len(label_columns), n).T, pixels],
                             axis=1)
    return records.tobytes(), pixels


def write_cifar10(root, rng, per_batch=3, n_test=2, folder="cifar-10-batches-bin"):
    d = root / folder
    d.mkdir(parents=True)
    xs, ys = [], []
    for name, n in [(f"data_batch_{k}.bin", per_batch) for k in range(1, 6)] + [("test_batch.bin", n_test)]:
        labels = rng.integers(0, 10, size=n)
        raw, pixels = cifar_records(rng, n, [labels])
        (d / name).write_bytes(raw)
        xs.append(pixels)
        ys.append(labels)
    return d, xs, ys


def write_cifar100(root, rng, n_train=4, n_test=3):
    d = root / "cifar-100-binary"
    d.mkdir(parents=True)
    out = {}
    for name, n in (("train.bin", n_train), ("test.bin", n_test)):
        coarse, fine = rng.integers(0, 20, size=n), rng.integers(0, 100, size=n)
        raw, pixels = cifar_records(rng, n, [coarse, fine])
        (d / name).write_bytes(raw)
        out[name] = (pixels, coarse, fine)
    return d, out


def idx_bytes(magic, dims, data):
    return struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + bytes(data)


MNIST_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_mnist(d, rng, gz, n_train=5, n_test=3, rows=6, cols=4):
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, rows, cols), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).astype(np.uint8)
        for name, raw in zip(MNIST_NAMES[split], (idx_bytes(2051, (n, rows, cols), images.tobytes()),
                                                  idx_bytes(2049, (n,), labels.tobytes()))):
            if gz:
                (d / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (d / name).write_bytes(raw)
        out[split] = (images, labels)
    return out


def assert_error_names(excinfo, path, *fragments):
    message = str(excinfo.value)
    assert str(path) in message, message
    for fragment in fragments:
        assert re.search(fragment, message), f"{fragment!r} not in: {message}"


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 binary
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pass_parent", [True, False])
def test_cifar10_round_trip(tmp_path, pass_parent):
    d, xs, ys = write_cifar10(tmp_path, np.random.default_rng(1))
    ds = load_dataset("cifar10", tmp_path if pass_parent else d)
    assert ds.name == "cifar10" and ds.num_classes == 10 and ds.classes == CIFAR10_CLASSES
    assert ds.x_train.shape == (15, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (2, 3, 32, 32)
    assert ds.in_channels == 3 and ds.image_size == (32, 32)
    assert ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.y_train, np.concatenate(ys[:5]))
    np.testing.assert_array_equal(ds.y_test, ys[5])
    # Pixel byte k of a record is channel k // 1024 (R, G, B planes), row (k % 1024) // 32, column k % 32.
    k = np.arange(3072)
    for n, record_pixels in enumerate(np.concatenate(xs[:5])):
        np.testing.assert_array_equal(ds.x_train[n, k // 1024, (k % 1024) // 32, k % 32], record_pixels)
    np.testing.assert_array_equal(ds.x_test[1, 2, 0, :], xs[5][1, 2048:2080])


def test_cifar10_plane_order(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    record = np.concatenate([[7], np.full(1024, 200), np.full(1024, 100), np.full(1024, 50)]).astype(np.uint8)
    for name in [f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]:
        (d / name).write_bytes(record.tobytes())
    ds = load_dataset("cifar-10", d)
    assert ds.y_test.tolist() == [7]
    assert [int(ds.x_test[0, c].min()) for c in range(3)] == [200, 100, 50]
    assert [int(ds.x_test[0, c].max()) for c in range(3)] == [200, 100, 50]


def test_cifar100_fine_and_coarse(tmp_path):
    d, out = write_cifar100(tmp_path, np.random.default_rng(2))
    fine = load_dataset("cifar100", tmp_path)
    assert fine.num_classes == 100 and fine.classes == CIFAR100_FINE_CLASSES and fine.classes[99] == "worm"
    assert fine.x_train.shape == (4, 3, 32, 32) and fine.x_test.shape == (3, 3, 32, 32)
    np.testing.assert_array_equal(fine.y_train, out["train.bin"][2])
    np.testing.assert_array_equal(fine.y_test, out["test.bin"][2])
    np.testing.assert_array_equal(fine.x_train.reshape(4, -1), out["train.bin"][0])
    coarse = load_dataset("cifar100", d, label_mode="coarse")
    assert coarse.num_classes == 20 and coarse.classes == CIFAR100_COARSE_CLASSES
    np.testing.assert_array_equal(coarse.y_train, out["train.bin"][1])
    np.testing.assert_array_equal(coarse.y_test, out["test.bin"][1])


def test_cifar10_truncated_file(tmp_path):
    d, _, _ = write_cifar10(tmp_path, np.random.default_rng(3))
    path = d / "data_batch_3.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar10", tmp_path)
    assert_error_names(excinfo, path, "3073", str(3 * 3073 - 1), "30730000")


def test_cifar10_empty_file(tmp_path):
    d, _, _ = write_cifar10(tmp_path, np.random.default_rng(3))
    (d / "test_batch.bin").write_bytes(b"")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar10", d)
    assert_error_names(excinfo, d / "test_batch.bin", "size 0 bytes")


def test_cifar10_label_out_of_range(tmp_path):
    d, _, _ = write_cifar10(tmp_path, np.random.default_rng(4))
    raw = bytearray((d / "test_batch.bin").read_bytes())
    raw[3073] = 10  # label byte of the second record
    (d / "test_batch.bin").write_bytes(bytes(raw))
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar10", d)
    assert_error_names(excinfo, d / "test_batch.bin", r"index 1 is 10", r"0\.\.9")


@pytest.mark.parametrize("byte, value, fragment", [(1, 100, r"fine label.*0\.\.99"), (0, 20, r"coarse label.*0\.\.19")])
def test_cifar100_label_out_of_range(tmp_path, byte, value, fragment):
    d, _ = write_cifar100(tmp_path, np.random.default_rng(5))
    raw = bytearray((d / "train.bin").read_bytes())
    raw[2 * 3074 + byte] = value
    (d / "train.bin").write_bytes(bytes(raw))
    with pytest.raises(DatasetError) as excinfo:  # the coarse byte is checked even when fine labels are used
        load_dataset("cifar100", d)
    assert_error_names(excinfo, d / "train.bin", fragment, f"is {value}")


def test_cifar_missing_file_and_folder(tmp_path):
    d, _, _ = write_cifar10(tmp_path, np.random.default_rng(6))
    (d / "data_batch_5.bin").unlink()
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar10", tmp_path)
    assert_error_names(excinfo, d / "data_batch_5.bin", "not found")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar10", tmp_path / "nowhere")
    assert_error_names(excinfo, tmp_path / "nowhere", "does not exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("cifar100", tmp_path / "empty")
    assert_error_names(excinfo, tmp_path / "empty", "cifar-100-binary.tar.gz")


@pytest.mark.parametrize("name, folder, marker, archive", [
    ("cifar10", "cifar-10-batches-py", "data_batch_1", "cifar-10-binary.tar.gz"),
    ("cifar100", "cifar-100-python", "train", "cifar-100-binary.tar.gz"),
])
@pytest.mark.parametrize("pass_parent", [True, False])
def test_cifar_python_version_is_refused(tmp_path, name, folder, marker, archive, pass_parent):
    d = tmp_path / folder
    d.mkdir()
    # Not a valid pickle at all: if the loader tried to unpickle it, it would fail with another error.
    (d / marker).write_bytes(b"\x80\x04 this would be a pickle")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset(name, tmp_path if pass_parent else d)
    assert_error_names(excinfo, d / marker, "python version", archive, "binary version", "pickle")


# ----------------------------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST IDX
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [True, False])
def test_mnist_round_trip(tmp_path, gz):
    out = write_mnist(tmp_path, np.random.default_rng(7), gz)
    ds = load_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (5, 1, 6, 4) and ds.x_test.shape == (3, 1, 6, 4) and ds.x_train.dtype == np.uint8
    assert ds.image_size == (6, 4) and ds.in_channels == 1 and ds.classes == tuple("0123456789")
    np.testing.assert_array_equal(ds.x_train[:, 0], out["train"][0])
    np.testing.assert_array_equal(ds.x_test[:, 0], out["test"][0])
    np.testing.assert_array_equal(ds.y_train, out["train"][1])
    np.testing.assert_array_equal(ds.y_test, out["test"][1])


def test_fashion_mnist_in_subfolder(tmp_path):
    out = write_mnist(tmp_path / "fashion-mnist", np.random.default_rng(8), gz=True)
    ds = load_dataset("fashion_mnist", tmp_path)
    assert ds.name == "fashion-mnist" and ds.classes == FASHION_MNIST_CLASSES and ds.classes[9] == "Ankle boot"
    np.testing.assert_array_equal(ds.y_test, out["test"][1])


def rewrite(path, transform):
    """Apply ``transform`` to the decompressed content of an IDX file, keeping it gzipped if it was."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(transform(gzip.decompress(raw))))
    else:
        path.write_bytes(transform(raw))


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_wrong_magic(tmp_path, gz):
    write_mnist(tmp_path, np.random.default_rng(9), gz)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    rewrite(path, lambda raw: struct.pack(">I", 2049) + raw[4:])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_error_names(excinfo, path, "magic number is 2049", "expected 2051")


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_size_differs_from_header(tmp_path, gz):
    write_mnist(tmp_path, np.random.default_rng(10), gz)
    path = tmp_path / ("t10k-images-idx3-ubyte" + (".gz" if gz else ""))
    rewrite(path, lambda raw: raw[:-5])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_error_names(excinfo, path, str(16 + 3 * 6 * 4 - 5), str(16 + 3 * 6 * 4), "truncated")
    # Too long is an error as well.
    rewrite(path, lambda raw: raw + bytes(10))
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_error_names(excinfo, path, "longer")


def test_mnist_truncated_gzip(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(11), gz=True)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_error_names(excinfo, path, "decompressed")


def test_mnist_label_out_of_range_and_count_mismatch(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(12), gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    rewrite(path, lambda raw: raw[:8 + 2] + bytes([12]) + raw[8 + 3:])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_error_names(excinfo, path, "index 2 is 12", r"0\.\.9")
    path.write_bytes(idx_bytes(2049, (4,), bytes(4)))  # 4 labels for 5 images
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_error_names(excinfo, path, "5 images", "4 labels")


def test_mnist_missing_file(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(13), gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("mnist", tmp_path)
    assert_error_names(excinfo, tmp_path / "t10k-labels-idx1-ubyte", "not found")


# ----------------------------------------------------------------------------------------------------------------
# Generic .npz
# ----------------------------------------------------------------------------------------------------------------

def indexed_images(n, shape, dtype=np.uint8):
    """Image ``i`` is filled with the value ``i``: makes it easy to see which images went where."""
    return (np.arange(n).reshape(n, 1, 1, 1) * np.ones(shape)).astype(dtype)


def test_npz_channels_first_and_last(tmp_path):
    rng = np.random.default_rng(14)
    nchw = rng.integers(0, 256, size=(6, 3, 5, 4), dtype=np.uint8)
    y = np.array([0, 1, 2, 0, 1, 2])
    test = rng.integers(0, 256, size=(2, 3, 5, 4), dtype=np.uint8)
    np.savez(tmp_path / "first.npz", x=nchw, y=y, x_test=test, y_test=np.array([2, 1]))
    np.savez(tmp_path / "last.npz", x=nchw.transpose(0, 2, 3, 1), y=y,
             x_test=test.transpose(0, 2, 3, 1), y_test=np.array([2, 1]))
    for name in ("first", "last"):
        ds = load_dataset("npz", tmp_path / f"{name}.npz")
        assert ds.name == name and ds.num_classes == 3 and ds.in_channels == 3 and ds.image_size == (5, 4)
        np.testing.assert_array_equal(ds.x_train, nchw)
        np.testing.assert_array_equal(ds.x_test, test)
        np.testing.assert_array_equal(ds.y_train, y)
        assert ds.y_test.tolist() == [2, 1] and ds.y_train.dtype == np.int64


def test_npz_grey_float_and_class_names(tmp_path):
    x = np.random.default_rng(15).random((5, 7, 7)).astype(np.float32)
    np.savez(tmp_path / "grey.npz", x=x, y=np.arange(5), x_test=x[:2], y_test=np.array([4, 4]),
             classes=np.array(["a", "b", "c", "d", "e", "f"]))
    ds = load_dataset("npz", tmp_path / "grey.npz")
    assert ds.x_train.shape == (5, 1, 7, 7) and ds.x_train.dtype == np.float32
    np.testing.assert_array_equal(ds.x_train[:, 0], x)
    assert ds.num_classes == 6 and ds.classes == ("a", "b", "c", "d", "e", "f")


def test_npz_fixed_split(tmp_path):
    n = 20
    np.savez_compressed(tmp_path / "d.npz", x=indexed_images(n, (1, 4, 4)), y=np.arange(n) % 4)
    first = load_dataset("npz", tmp_path / "d.npz")
    second = load_dataset("npz", tmp_path / "d.npz")
    train_ids, test_ids = first.x_train[:, 0, 0, 0], first.x_test[:, 0, 0, 0]
    assert len(test_ids) == 4 and len(train_ids) == 16
    assert sorted(np.concatenate([train_ids, test_ids]).tolist()) == list(range(n))
    np.testing.assert_array_equal(first.y_train, train_ids % 4)  # labels stay with their images
    np.testing.assert_array_equal(second.x_test, first.x_test)
    assert test_ids.tolist() != list(range(4)) and test_ids.tolist() != list(range(16, 20))  # it is shuffled


@pytest.mark.parametrize("arrays, fragment", [
    (dict(x=np.zeros((3, 1, 4, 4), np.uint8)), "missing.*'y'"),
    (dict(x=np.zeros((3, 1, 4, 4), np.uint8), y=np.array([0, 1])), "3 labels"),
    (dict(x=np.zeros((3, 1, 4, 4), np.uint8), y=np.array([0, -1, 1])), "negative label -1"),
    (dict(x=np.zeros((3, 1, 4, 4), np.uint8), y=np.array([0.0, 1.0, 1.0])), "labels must be integers"),
    (dict(x=np.full((3, 1, 4, 4), 300), y=np.array([0, 1, 1])), r"0\.\.255"),
    (dict(x=np.zeros((3, 4), np.uint8), y=np.array([0, 1, 1])), "shape"),
    (dict(x=np.zeros((3, 1, 4, 4), np.uint8), y=np.array([0, 1, 2]), classes=np.array(["a", "b"])),
     r"index 2 is 2.*0\.\.1"),
    (dict(x=np.zeros((3, 1, 4, 4), np.uint8), y=np.array([0, 1, 2]), x_test=np.zeros((1, 1, 4, 4), np.uint8)),
     "both or neither"),
])
def test_npz_bad_contents(tmp_path, arrays, fragment):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("npz", path)
    assert_error_names(excinfo, path, fragment)


def test_npz_never_unpickles_and_reports_corruption(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x=np.array([None, {"a": 1}], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("npz", path)
    assert_error_names(excinfo, path, "object arrays")
    good = tmp_path / "good.npz"
    np.savez_compressed(good, x=np.random.default_rng(0).integers(0, 255, (50, 3, 8, 8), dtype=np.uint8),
                        y=np.zeros(50, int))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("npz", broken)
    assert_error_names(excinfo, broken, "not a valid .npz")
    with pytest.raises(DatasetError) as excinfo:
        load_dataset("npz", tmp_path / "absent.npz")
    assert_error_names(excinfo, tmp_path / "absent.npz", "not found")


def test_load_dataset_arguments():
    with pytest.raises(DatasetError, match="unknown data set 'svhn'.*digits"):
        load_dataset("svhn")
    with pytest.raises(DatasetError, match="data_dir"):
        load_dataset("cifar10")
    with pytest.raises(ValueError, match="label_mode"):
        load_dataset("cifar100", "/nonexistent", label_mode="medium")


# ----------------------------------------------------------------------------------------------------------------
# Bundled digits
# ----------------------------------------------------------------------------------------------------------------

def test_digits():
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.num_classes == 10 and ds.classes == tuple("0123456789")
    assert ds.x_train.shape == (1438, 1, 8, 8) and ds.x_test.shape == (359, 1, 8, 8)
    assert ds.x_train.dtype == np.float32 and ds.in_channels == 1 and ds.image_size == (8, 8)
    assert len(ds.y_train) + len(ds.y_test) == 1797
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.min() == 0.0 and x.max() == 1.0
        np.testing.assert_array_equal(x * 16, np.round(x * 16))  # grey levels k / 16
        assert set(y.tolist()) == set(range(10)) and y.dtype == np.int64
    assert np.bincount(ds.y_test, minlength=10).min() >= 35  # stratified: every class about 20 % in test


def test_digits_split_is_fixed_and_disjoint():
    with np.load(datasets_module.DIGITS_FILE, allow_pickle=False) as npz:
        train_idx, test_idx, labels = npz["train_idx"], npz["test_idx"], npz["labels"]
    assert np.intersect1d(train_idx, test_idx).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(1797))
    # Fingerprint of the split and the labels: changes if the bundled file is ever rebuilt differently.
    assert (train_idx.size, test_idx.size) == (1438, 359)
    assert int(test_idx.sum()) == 324981 and test_idx[:5].tolist() == [5, 9, 12, 14, 16]
    assert np.bincount(labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    ds = load_dataset("digits")
    np.testing.assert_array_equal(ds.y_test, labels[test_idx])


def test_digits_matches_scikit_learn():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    ref = sklearn_datasets.load_digits()
    with np.load(datasets_module.DIGITS_FILE, allow_pickle=False) as npz:
        train_idx, test_idx = npz["train_idx"], npz["test_idx"]
    ds = load_dataset("digits")
    np.testing.assert_array_equal(ds.x_train[:, 0] * 16, ref.images[train_idx])
    np.testing.assert_array_equal(ds.x_test[:, 0] * 16, ref.images[test_idx])
    np.testing.assert_array_equal(ds.y_test, ref.target[test_idx])


# ----------------------------------------------------------------------------------------------------------------
# to_float, channel_stats, normalize
# ----------------------------------------------------------------------------------------------------------------

def test_to_float_and_as_float():
    x = np.array([0, 51, 255], dtype=np.uint8).reshape(1, 1, 1, 3)
    np.testing.assert_array_equal(to_float(x, np.float64).ravel(), [0.0, 0.2, 1.0])
    f = np.full((1, 1, 2, 2), 0.5, np.float32)
    out = to_float(f)
    assert out is not f and out.dtype == np.float32
    with pytest.raises(ValueError, match="dtype"):
        to_float(x, np.int32)
    ds = Dataset("t", x, np.array([0]), x, np.array([0]), 1).as_float(np.float64)
    assert ds.x_train.dtype == np.float64 and ds.x_train.max() == 1.0 and ds.classes == ("0",)


def test_channel_stats_and_normalize(monkeypatch):
    monkeypatch.setattr(loader_module, "_STATS_CHUNK", 3)  # exercise the chunked accumulation
    rng = np.random.default_rng(16)
    x = rng.integers(0, 256, size=(10, 3, 5, 5), dtype=np.uint8)
    x[:, 1] //= 4  # channels with different statistics
    mean, std = channel_stats(x)
    ref = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-12)
    z = normalize(x, mean, std, np.float64)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1, rtol=1e-12)
    assert normalize(x, mean, std).dtype == np.float32
    with pytest.raises(ValueError, match="std must be positive"):
        normalize(x, mean, [0.1, 0.0, 0.1])
    with pytest.raises(ValueError, match="mean must have one value per channel"):
        normalize(x, [0.5, 0.5], std)


# ----------------------------------------------------------------------------------------------------------------
# BatchIterator
# ----------------------------------------------------------------------------------------------------------------

def epoch(it):
    return [(xb.copy(), yb.copy()) for xb, yb in it]


def assert_same_epochs(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


@pytest.mark.parametrize("drop_last", [False, True])
def test_iterator_covers_every_sample_once(drop_last):
    n = 10
    x = indexed_images(n, (2, 3, 3))
    it = BatchIterator(x, np.arange(n), 3, seed=0, drop_last=drop_last)
    assert len(it) == (3 if drop_last else 4)
    for _ in range(2):
        batches = epoch(it)
        assert len(batches) == len(it)
        assert [len(yb) for _, yb in batches] == ([3, 3, 3] if drop_last else [3, 3, 3, 1])
        seen = np.concatenate([yb for _, yb in batches])
        assert len(set(seen.tolist())) == len(seen) == (9 if drop_last else 10)
        for xb, yb in batches:  # each image travels with its own label
            assert xb.dtype == np.float32 and yb.dtype == np.int64 and xb.shape[1:] == (2, 3, 3)
            np.testing.assert_allclose(xb[:, 0, 0, 0] * 255, yb, rtol=1e-6)
    assert seen.tolist() != list(range(9 if drop_last else 10))  # shuffled


def test_iterator_seeds_and_shuffle_off():
    x = indexed_images(12, (1, 2, 2))
    y = np.arange(12)
    assert_same_epochs(epoch(BatchIterator(x, y, 5, seed=3, augment=True, pad=1)),
                       epoch(BatchIterator(x, y, 5, seed=3, augment=True, pad=1)))
    a = np.concatenate([yb for _, yb in BatchIterator(x, y, 5, seed=3)])
    b = np.concatenate([yb for _, yb in BatchIterator(x, y, 5, seed=4)])
    assert a.tolist() != b.tolist()
    ordered = np.concatenate([yb for _, yb in BatchIterator(x, y, 5, shuffle=False)])
    assert ordered.tolist() == list(range(12))
    gen = np.random.default_rng(0)
    assert BatchIterator(x, y, 5, seed=gen).rng is gen


def test_augmentation_identity_when_disabled():
    rng = np.random.default_rng(17)
    x = rng.integers(0, 256, size=(9, 3, 6, 6), dtype=np.uint8)
    y = np.arange(9)
    mean, std = channel_stats(x)
    plain = BatchIterator(x, y, 4, augment=True, pad=0, flip=False, mean=mean, std=std, seed=1)
    for xb, yb in plain:
        np.testing.assert_array_equal(xb, normalize(x[yb], mean, std))
    augmented = epoch(BatchIterator(x, y, 4, augment=True, mean=mean, std=std, seed=1))
    assert all(xb.shape == (len(yb), 3, 6, 6) for xb, yb in augmented)
    assert any(not np.array_equal(xb, normalize(x[yb], mean, std)) for xb, yb in augmented)


def windows(img, pad):
    """Every crop of the zero-padded ``img`` (C, H, W), unflipped and flipped: the reference, one by one."""
    c, h, w = img.shape
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad), img.dtype)
    padded[:, pad:pad + h, pad:pad + w] = img
    out = {}
    for top in range(2 * pad + 1):
        for left in range(2 * pad + 1):
            crop = padded[:, top:top + h, left:left + w]
            out[(top, left, False)] = crop
            out[(top, left, True)] = crop[:, :, ::-1]
    return out


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(1, 3), h=st.integers(1, 5), w=st.integers(1, 5), pad=st.integers(0, 3),
       flip=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_augmentation_is_a_crop_of_the_padded_image(n, c, h, w, pad, flip, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, size=(n, c, h, w), dtype=np.uint8)  # no zeros, so the padding is recognisable
    it = BatchIterator(x, np.arange(n), 4, augment=True, pad=pad, flip=flip, dtype=np.float64, seed=seed)
    for xb, yb in it:
        for img, k in zip(xb, yb):
            raw = np.rint(img * 255).astype(np.uint8)
            matches = [key for key, win in windows(x[k], pad).items() if np.array_equal(win, raw)]
            assert matches, "augmented image is not a (flipped) crop of the zero-padded original"
            if not flip:
                assert any(not flipped for _, _, flipped in matches)


def test_augmentation_varies_and_pads_black():
    x = np.full((64, 1, 4, 4), 200, np.uint8)
    it = BatchIterator(x, np.zeros(64, int), 64, augment=True, pad=2, mean=[0.5], std=[0.25], dtype=np.float64,
                       seed=5)
    (xb, _), = list(it)
    border, inside = (0 - 0.5) / 0.25, (200 / 255 - 0.5) / 0.25
    assert set(np.unique(xb).round(9)) == {round(border, 9), round(inside, 9)}  # zero padding in raw space
    assert len({im.tobytes() for im in xb}) > 10  # many different crops
    # Flips: asymmetric images, no padding; about half are mirrored.
    x = np.arange(16, dtype=np.uint8).reshape(1, 1, 4, 4).repeat(200, axis=0)
    (xb, _), = list(BatchIterator(x, np.zeros(200, int), 200, augment=True, pad=0, seed=6))
    flipped = np.array([np.array_equal(im, to_float(x[0])[..., ::-1]) for im in xb])
    unflipped = np.array([np.array_equal(im, to_float(x[0])) for im in xb])
    assert np.all(flipped ^ unflipped) and 70 < flipped.sum() < 130


def test_rng_state_restore_reproduces_next_epoch():
    rng = np.random.default_rng(18)
    x = rng.integers(0, 256, size=(11, 3, 5, 5), dtype=np.uint8)
    y = rng.integers(0, 10, size=11)
    kwargs = dict(augment=True, mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    it = BatchIterator(x, y, 4, seed=7, **kwargs)
    epoch(it)
    saved = it.rng.bit_generator.state  # checkpoint at an epoch boundary
    expected = epoch(it)
    it_mid = iter(it)
    next(it_mid)
    saved_mid = it.rng.bit_generator.state  # checkpoint in the middle of epoch 3
    list(it_mid)
    expected_4 = epoch(it)

    resumed = BatchIterator(x, y, 4, seed=999, **kwargs)
    assert epoch(resumed)[0][1].tolist() != expected[0][1].tolist()  # a different seed differs...
    resumed.rng.bit_generator.state = saved
    assert_same_epochs(epoch(resumed), expected)  # ...until the state is restored
    resumed.rng.bit_generator.state = saved_mid
    assert_same_epochs(epoch(resumed), expected_4)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(batch_size=0), "batch_size"),
    (dict(batch_size=-2), "batch_size"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(batch_size=True), "batch_size"),
    (dict(y=np.arange(5)), "same length"),
    (dict(y=np.zeros(6)), "integer labels"),
    (dict(x=np.zeros((6, 4, 4), np.uint8)), "x must be a 4-D"),
    (dict(x=np.zeros((6, 1, 4, 4), np.int32)), "dtype int32"),
    (dict(pad=-1), "pad"),
    (dict(mean=[0.5]), "mean and std"),
    (dict(mean=[0.5, 0.5], std=[0.2, 0.2]), "mean must have one value per channel"),
    (dict(dtype=np.int64), "dtype"),
    (dict(batch_size=7, drop_last=True), "batch_size.*drop_last"),
    (dict(seed="abc"), "seed"),
])
def test_iterator_argument_errors(kwargs, fragment):
    args = dict(x=np.zeros((6, 1, 4, 4), np.uint8), y=np.arange(6), batch_size=2)
    args.update(kwargs)
    x, y, batch_size = args.pop("x"), args.pop("y"), args.pop("batch_size")
    with pytest.raises(ValueError, match=fragment):
        BatchIterator(x, y, batch_size, **args)
