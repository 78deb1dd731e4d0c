"""Saving and loading weights as .npz, atomically and without pickle; torchvision .pth conversion."""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections import OrderedDict

import numpy as np


class WeightsFileError(ValueError):
    """A weights or checkpoint file that is missing, unreadable, not in the expected format or holds bad values.

    The message is one sentence naming the file and what is wrong; the command line prints it as is.
    """


# -- writing ------------------------------------------------------------------------------------------------------
TEMP_MARK = ".tmp-"            # temporary files are ".<name>.tmp-<pid>-<random>" next to their target


def atomic_write(path, write, mode="wb"):
    """Write a file atomically: ``write(f)`` fills a temporary file in the same folder, then it is renamed.

    The temporary name, ``.<name>.tmp-<pid>-<random>``, is unique per process and per call, so concurrent
    writers never share one. The data is flushed to disk before the rename; a failure or a kill at any point
    leaves the previous file intact (a kill may leave the temporary file, which :func:`remove_stale_temp_files`
    removes). An ``OSError`` (disk full, read-only file system, ...) is re-raised naming ``path``, not the
    temporary file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{TEMP_MARK}{os.getpid()}-", dir=folder)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)                                   # mkstemp makes 0600; use the usual mode
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if e.errno is None:
            raise
        raise type(e)(e.errno, e.strerror, path) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def remove_stale_temp_files(folder):
    """Remove the temporary files that killed writers left in ``folder``; returns their names.

    Only call it while no other process writes there (``train`` holds the folder's lock). Matches this
    module's ``.<name>.tmp-*`` names and the names of earlier versions (``.tmp-*.npz``, ``*.tmp``,
    ``*.tmp.png``).
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        stale = (name.startswith(".") and TEMP_MARK in name) or name.startswith(".tmp-") or \
            name in ("metrics.jsonl.tmp", "curves.png.tmp.png")
        full = os.path.join(folder, name)
        if stale and os.path.isfile(full) and not os.path.islink(full):
            try:
                os.unlink(full)
                removed.append(name)
            except OSError:
                pass
    return removed


def save_npz(path, arrays):
    """Write ``arrays`` (name -> array) to ``path`` as a .npz atomically (see :func:`atomic_write`)."""
    path = os.fspath(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    atomic_write(path, lambda f: np.savez(f, **arrays))


# -- reading ------------------------------------------------------------------------------------------------------
def load_npz(path, what="weights file", keys=None):
    """Read the arrays of a .npz into an OrderedDict, never unpickling, within the memory budget.

    Declared sizes are checked before anything is read (:func:`numpy_densenet.data.files.read_npz`).
    ``keys`` limits what is read. Every problem raises :class:`WeightsFileError` naming the file.
    """
    from .data.files import FileFormatError, read_npz
    try:
        return read_npz(path, what=what, keys=keys)
    except FileFormatError as e:
        raise WeightsFileError(str(e)) from None


def _where(path, what):
    return f"{what} {os.fspath(path)!r}"


def check_state_values(state, path, what="weights file", dtype=None):
    """Check every tensor of a state dict read from a file: the right kind of number, finite, variances >= 0.

    Parameters and running statistics must be real floating point (float16/32/64; int, bool and complex
    are refused, not cast) and finite; ``running_var`` must be >= 0; ``num_batches_tracked`` a non-negative
    integer. With ``dtype`` (the model's), floats of more than its precision's family are still accepted
    (float64 into a float32 model is rounded, as ``load_state_dict`` does).
    """
    where = _where(path, what)
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            if value.dtype.kind not in "iu" or value.size != 1 or int(value.reshape(-1)[0]) < 0:
                raise WeightsFileError(f"{where}: {key!r} should be one non-negative integer, found "
                                       f"{value.dtype} {value.shape}")
            continue
        if value.dtype.kind != "f" or value.dtype.itemsize > 8:
            raise WeightsFileError(f"{where}: {key!r} has dtype {value.dtype}; weights must be float16, float32 "
                                   "or float64 (int, bool and complex values are not cast)")
        if not np.isfinite(value).all():
            bad = int(np.flatnonzero(~np.isfinite(value.reshape(-1)))[0])
            raise WeightsFileError(f"{where}: {key!r} holds {value.reshape(-1)[bad]} at flat index {bad}; weights "
                                   "must be finite (the file comes from a diverged run or is corrupt)")
        if key.endswith("running_var") and value.size and value.min() < 0:
            bad = int(np.flatnonzero(value.reshape(-1) < 0)[0])
            raise WeightsFileError(f"{where}: {key!r} holds the negative variance {value.reshape(-1)[bad]} at index "
                                   f"{bad}; running variances must be >= 0")


def json_entry(arrays, key, path, what="weights file", kind=None):
    """The JSON value stored as a 0-d unicode array under ``key`` (by ``train``), checked to be of ``kind``."""
    where = _where(path, what)
    a = arrays[key]
    if a.ndim != 0 or a.dtype.kind != "U":
        raise WeightsFileError(f"{where}: {key!r} should be a JSON text (a 0-d unicode array), found {a.dtype} "
                               f"{a.shape}")
    try:
        value = json.loads(str(a[()]))
    except (ValueError, RecursionError):
        raise WeightsFileError(f"{where}: {key!r} is not valid JSON") from None
    if kind is not None and not isinstance(value, kind):
        raise WeightsFileError(f"{where}: {key!r} should be a JSON {kind.__name__}, found {type(value).__name__}")
    return value


MODEL_CONFIG_KEYS = ("growth_rate", "block_config", "num_init_features", "bn_size", "drop_rate", "num_classes",
                     "compression", "stem", "in_channels")


def model_config_from_arrays(arrays, path, what="weights file", prefix=""):
    """The ``_model_config`` of a file written by ``train``, checked against the tensors the file holds.

    Every size in it is pinned to a dimension of a tensor that is present (``growth_rate`` to the first dense
    layer's output channels, ``block_config`` to the dense layers present, ``num_classes`` to the classifier,
    ...), so building the model can never allocate more than the file itself holds. Returns a dict of
    :class:`~numpy_densenet.DenseNet` keyword arguments.
    """
    import inspect

    from .model import DenseNet
    where = _where(path, what)
    cfg = json_entry(arrays, "_model_config", path, what, dict)
    # Other DenseNet arguments (flags such as a tier choice) may be recorded too; they are checked by DenseNet.
    known = set(MODEL_CONFIG_KEYS) | (set(inspect.signature(DenseNet).parameters) - {"dtype", "seed"})
    missing = [k for k in MODEL_CONFIG_KEYS if k not in cfg]
    extra = [k for k in cfg if k not in known]
    if missing or extra:
        raise WeightsFileError(f"{where}: '_model_config' " + "; ".join(
            part for part in (f"lacks {', '.join(missing)}" if missing else "",
                              f"has unknown key(s) {', '.join(extra)} (a newer numpy_densenet?)" if extra else "")
            if part))

    def integer(name, value):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise WeightsFileError(f"{where}: '_model_config' {name} should be a positive integer, got {value!r}")
        return value

    def number(name, value, low, high, low_open, high_open):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or \
                (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
            raise WeightsFileError(f"{where}: '_model_config' {name} should be a number in "
                                   f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}, got {value!r}")
        return float(value)

    for name in ("growth_rate", "num_init_features", "num_classes", "in_channels"):
        integer(name, cfg[name])
    if cfg["bn_size"] is not None:
        integer("bn_size", cfg["bn_size"])
    blocks = cfg["block_config"]
    if not isinstance(blocks, list) or not blocks:
        raise WeightsFileError(f"{where}: '_model_config' block_config should be a non-empty list, got {blocks!r}")
    for n in blocks:
        integer("block_config", n)
    number("drop_rate", cfg["drop_rate"], 0, 1, False, True)
    number("compression", cfg["compression"], 0, 1, True, False)
    if cfg["stem"] not in ("imagenet", "cifar"):
        raise WeightsFileError(f"{where}: '_model_config' stem should be 'imagenet' or 'cifar', got {cfg['stem']!r}")

    def shape(key):
        if prefix + key not in arrays:
            raise WeightsFileError(f"{where} lacks the tensor {prefix + key!r} that its '_model_config' implies")
        return arrays[prefix + key].shape

    def pin(name, expected, key, found):
        if expected != found:
            raise WeightsFileError(f"{where}: '_model_config' {name} is {expected} but {prefix + key!r} has "
                                   f"{found}; the description does not fit the weights")

    conv0 = shape("features.conv0.weight")
    kernel = 7 if cfg["stem"] == "imagenet" else 3
    if len(conv0) != 4 or conv0[2:] != (kernel, kernel):
        raise WeightsFileError(f"{where}: {prefix}features.conv0.weight has shape {conv0}, not that of a "
                               f"{cfg['stem']} stem ({kernel}x{kernel} kernels)")
    pin("num_init_features", cfg["num_init_features"], "features.conv0.weight", conv0[0])
    pin("in_channels", cfg["in_channels"], "features.conv0.weight", conv0[1])
    present = set()
    for key in arrays:
        parts = key[len(prefix):].split(".") if key.startswith(prefix) else []
        if len(parts) > 2 and parts[0] == "features" and parts[1].startswith("denseblock") and \
                parts[2].startswith("denselayer"):
            present.add((parts[1], parts[2]))
    for b, n in enumerate(blocks, start=1):
        found = sum(1 for blk, _ in present if blk == f"denseblock{b}")
        pin(f"block_config[{b - 1}]", n, f"features.denseblock{b}.denselayer*", found)
    if len({blk for blk, _ in present}) != len(blocks):
        raise WeightsFileError(f"{where}: '_model_config' block_config has {len(blocks)} blocks but the file holds "
                               f"{len({blk for blk, _ in present})}")
    layer = "features.denseblock1.denselayer1."
    if cfg["bn_size"] is None:
        pin("growth_rate", cfg["growth_rate"], layer + "conv1.weight", shape(layer + "conv1.weight")[0])
    else:
        pin("growth_rate", cfg["growth_rate"], layer + "conv2.weight", shape(layer + "conv2.weight")[0])
        pin("bn_size * growth_rate", cfg["bn_size"] * cfg["growth_rate"], layer + "conv1.weight",
            shape(layer + "conv1.weight")[0])
    pin("num_classes", cfg["num_classes"], "classifier.weight", shape("classifier.weight")[0])
    cfg["block_config"] = tuple(blocks)
    return cfg


def load_weights_arrays(path, what="weights file"):
    """Read a weights file and check its tensors' values (:func:`check_state_values`): name -> array."""
    arrays = load_npz(path, what=what)
    check_state_values(_weights_only(arrays), path, what)
    return arrays


def _weights_only(arrays, prefix=""):
    skip = ("_", "optim.", "sched.", "run.")
    return OrderedDict((k[len(prefix):], v) for k, v in arrays.items()
                       if k.startswith(prefix) and not k.startswith(skip) and not k[len(prefix):].startswith("_"))


def save_weights(model, path):
    """Save ``model.state_dict()`` (parameters and buffers, torchvision's key names) to a .npz atomically."""
    save_npz(path, model.state_dict())


def load_weights(model, path, strict=True):
    """Load a .npz written by :func:`save_weights` (or :func:`convert_torch_checkpoint`) into ``model``.

    The file's tensors are checked first (finite floats, running variances >= 0); keys starting with ``_``
    (the metadata of files written by ``train``) are skipped. A ``checkpoint.npz`` (keys ``model.*``) works too.
    """
    state = load_npz(path)
    prefix = "model." if any(k.startswith("model.") for k in state) else ""
    weights = _weights_only(state, prefix)
    check_state_values(weights, path)
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
    from .data.files import FileFormatError, check_regular_file
    try:
        check_regular_file(src, "checkpoint")
    except FileFormatError as e:
        raise WeightsFileError(str(e)) from None
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
