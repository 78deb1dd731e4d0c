"""Saving and loading weights as .npz, atomically and without pickle; torchvision .pth conversion."""
from __future__ import annotations

import os
import tempfile
import zipfile
from collections import OrderedDict

import numpy as np


class WeightsFileError(ValueError):
    """A weights or checkpoint file that is missing, unreadable or not in the expected format."""


def save_npz(path, arrays):
    """Write ``arrays`` (name -> array) to ``path`` as a .npz atomically.

    The data goes to a temporary file in the same folder, is flushed to disk, then renamed over ``path``:
    a crash mid-write leaves the previous file intact.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npz", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)                                   # mkstemp makes 0600; use the usual mode
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_npz(path, what="weights file"):
    """Read every array of a .npz into an OrderedDict, never unpickling; clear errors naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsFileError(f"{what} {path!r} does not exist")
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic[:2] != b"PK":                                   # every .npz is a zip archive
        kind = "a single .npy array" if magic == b"\x93NUMPY" else "not a zip archive"
        raise WeightsFileError(f"{what} {path!r} is not a .npz file: it is {kind} (it starts with {magic!r})")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise WeightsFileError(f"{what} {path!r} holds a single .npy array, not a .npz archive of named arrays")
        with data:
            return OrderedDict((k, data[k]) for k in data.files)
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise WeightsFileError(f"{what} {path!r} holds pickled objects, which are never loaded; "
                                   f"save plain arrays with numpy_densenet.io.save_weights") from None
        raise WeightsFileError(f"{what} {path!r} is not a valid .npz file: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise WeightsFileError(f"{what} {path!r} is not a valid .npz file (a zip of .npy arrays): {e}") from None


def save_weights(model, path):
    """Save ``model.state_dict()`` (parameters and buffers, torchvision's key names) to a .npz atomically."""
    save_npz(path, model.state_dict())


def load_weights(model, path, strict=True):
    """Load a .npz written by :func:`save_weights` (or :func:`convert_torch_checkpoint`) into ``model``."""
    state = load_npz(path)
    weights = OrderedDict((k, v) for k, v in state.items() if not k.startswith("_"))
    try:
        return model.load_state_dict(weights, strict=strict)
    except ValueError as e:
        raise WeightsFileError(f"weights file {os.fspath(path)!r} does not fit the model: {e}") from None


def convert_torch_checkpoint(src, dst):
    """Convert a torchvision DenseNet ``.pth`` state dict to a numpy_densenet ``.npz``.

    Needs PyTorch (only here); the file is read with ``torch.load(weights_only=True)``, which refuses
    arbitrary pickled objects. Old ``norm.1``-style keys are renamed as torchvision does. The file is
    self-describing (see :mod:`numpy_densenet.hub`): the architecture inferred from the tensors' shapes, ImageNet
    preprocessing and, for 1000 outputs, the ImageNet class names, so ``predict`` and ``hub.load`` need nothing
    else. Returns the number of weight arrays written.
    """
    try:
        import torch
    except ImportError:
        raise RuntimeError("converting a .pth file needs PyTorch (the CPU build is enough): pip install torch "
                           "--index-url https://download.pytorch.org/whl/cpu") from None
    from .model import rename_old_keys
    if not os.path.isfile(src):
        raise WeightsFileError(f"checkpoint {os.fspath(src)!r} does not exist")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
        first = (str(e).strip().splitlines() or [""])[0]
        raise WeightsFileError(f"checkpoint {os.fspath(src)!r} is not a PyTorch state dict that "
                               f"torch.load(weights_only=True) can read ({type(e).__name__}: {first})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsFileError(f"checkpoint {os.fspath(src)!r} does not hold a state dict")
    arrays = OrderedDict()
    for key, value in rename_old_keys(state).items():
        key = key[len("module."):] if key.startswith("module.") else key      # DataParallel prefix
        if not hasattr(value, "detach"):
            raise WeightsFileError(f"checkpoint {os.fspath(src)!r}: entry {key!r} is not a tensor")
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype not in (torch.float32, torch.float64):
            value = value.float()                                       # bfloat16 / float16 have no NumPy twin
        arrays[key] = value.numpy()
    from .hub import checked_description, hub_metadata
    try:
        description = checked_description(arrays)
    except ValueError as e:
        raise WeightsFileError(f"checkpoint {os.fspath(src)!r} is not a DenseNet this package can describe: {e}") \
            from None
    save_npz(dst, {**arrays, **hub_metadata(description)})
    return len(arrays)
