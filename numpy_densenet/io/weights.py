"""The weights-file format: a ``state_dict`` as ``.npz`` (torchvision's key names), optionally self-describing.

A self-describing file (``best.npz`` from ``train``, a converted torchvision model from ``convert``) also holds
metadata, under keys that start with ``_``, each a small JSON document or array (:func:`metadata_arrays`):

``_model_config``
    The :func:`numpy_densenet.DenseNet` arguments (growth_rate, block_config, ...).
``_train_config``
    The training options of the run that made it (``train`` only).
``_mean`` / ``_std``
    The per-channel normalisation of the inputs, in [0, 1] pixel units.
``_classes``
    One name per class.
``_inputs``
    The training images' size and pixel range, which ``predict`` checks its inputs against (``train`` only).
``_preprocess``
    The photo preprocessing (resize, crop, scale; ``convert`` of an ImageNet model only).

Every value is checked when a file is read (:func:`load_model_file`): the description is pinned to the
tensors present, so its sizes can never make the model larger than the file itself.
"""
from __future__ import annotations

import inspect
import math
import os
from collections import OrderedDict

import numpy as np

from ..zoo import DenseNet, state_size
from .files import WeightsFileError, check_state_values, json_array, json_entry, label, load_npz, save_npz

__all__ = ["MODEL_CONFIG_KEYS", "METADATA_KEYS", "metadata_arrays", "describe_inputs", "check_metadata_keys",
           "model_config_from_arrays", "load_model_file", "save_weights", "load_weights", "load_weights_arrays",
           "weights_only", "check_state_size"]

MODEL_CONFIG_KEYS = ("growth_rate", "block_config", "num_init_features", "bn_size", "drop_rate", "num_classes",
                     "compression", "stem", "in_channels")
METADATA_KEYS = {"_model_config", "_train_config", "_mean", "_std", "_classes", "_inputs", "_preprocess"}
NOT_WEIGHTS = ("_", "optim.", "sched.", "run.")         # metadata, and a checkpoint's optimizer and run state


# -- writing ------------------------------------------------------------------------------------------------------
def metadata_arrays(model_config, train_config=None, mean=None, std=None, classes=None, inputs=None,
                    preprocess=None):
    """The arrays that make a weights file self-describing (see the module docstring); None leaves a key out.

    Parameters
    ----------
    model_config : dict
        ``DenseNet.config``.
    train_config : dict, optional
    mean, std : array-like (in_channels,), optional
    classes : list of str, optional
    inputs : dict, optional
        ``{"image_size": [H, W], "pixel_range": [lo, hi]}`` (:func:`describe_inputs`).
    preprocess : dict, optional
        resize, crop, interpolation, scale, mean, std.
    """
    arrays = {"_model_config": json_array(dict(model_config, block_config=list(model_config["block_config"])))}
    documents = {"_train_config": train_config, "_classes": None if classes is None else list(classes),
                 "_inputs": inputs, "_preprocess": preprocess}
    arrays.update({key: json_array(value) for key, value in documents.items() if value is not None})
    arrays.update({key: np.asarray(value) for key, value in (("_mean", mean), ("_std", std)) if value is not None})
    return arrays


def describe_inputs(x):
    """{"image_size": [H, W], "pixel_range": [lo, hi]} of training images x (N, C, H, W), in [0, 1] units."""
    scale = 255.0 if x.dtype.kind in "ui" else 1.0
    return {"image_size": [int(x.shape[2]), int(x.shape[3])],
            "pixel_range": [float(x.min()) / scale, float(x.max()) / scale]}


def save_weights(model, path):
    """Save ``model.state_dict()`` (parameters and buffers, torchvision's key names) to a .npz atomically."""
    save_npz(path, model.state_dict())


# -- reading ------------------------------------------------------------------------------------------------------
def check_metadata_keys(arrays, path, what="weights file"):
    """Refuse metadata (``_``-prefixed) or checkpoint entries this version does not know (a newer file)."""
    unknown = [k for k in arrays if (k.startswith("_") and k not in METADATA_KEYS)
               or (k.startswith("run.") and k != "run.state")]
    if unknown:
        raise WeightsFileError(f"{what} {os.fspath(path)!r} has entries this version does not know: "
                               f"{', '.join(unknown[:5])}; it was written by a newer numpy_densenet")


def model_config_from_arrays(arrays, path, what="weights file", prefix=""):
    """The ``_model_config`` of a self-describing file, checked against the tensors the file holds.

    Every size in it is pinned to a dimension of a tensor that is present (``growth_rate`` to the first dense
    layer's output channels, ``block_config`` to the dense layers present, ``num_classes`` to the classifier,
    ...), so building the model can never allocate more than the file itself holds. Returns a dict of
    :func:`numpy_densenet.DenseNet` keyword arguments.
    """
    where = label(path, what)
    cfg = json_entry(arrays, "_model_config", path, what, dict)
    _check_config_keys(cfg, where)
    _check_config_values(cfg, where)
    _pin_config_to_tensors(cfg, arrays, where, prefix)
    cfg["block_config"] = tuple(cfg["block_config"])
    return cfg


def _check_config_keys(cfg, where):
    # Other DenseNet arguments (flags such as a tier choice) may be recorded too; they are checked by DenseNet.
    known = set(MODEL_CONFIG_KEYS) | (set(inspect.signature(DenseNet).parameters) - {"dtype", "seed"})
    missing = [k for k in MODEL_CONFIG_KEYS if k not in cfg]
    extra = [k for k in cfg if k not in known]
    if missing or extra:
        raise WeightsFileError(f"{where}: '_model_config' " + "; ".join(
            part for part in (f"lacks {', '.join(missing)}" if missing else "",
                              f"has unknown key(s) {', '.join(extra)} (a newer numpy_densenet?)" if extra else "")
            if part))


def _check_config_values(cfg, where):
    def integer(name, value):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise WeightsFileError(f"{where}: '_model_config' {name} should be a positive integer, got {value!r}")

    def number(name, value, low, high, low_open, high_open):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or \
                (value <= low if low_open else value < low) or (value >= high if high_open else value > high):
            raise WeightsFileError(f"{where}: '_model_config' {name} should be a number in "
                                   f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}, got {value!r}")

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


def _pin_config_to_tensors(cfg, arrays, where, prefix):
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
    present = {(parts[1], parts[2]) for parts in (key[len(prefix):].split(".") for key in arrays
                                                  if key.startswith(prefix))
               if len(parts) > 2 and parts[0] == "features" and parts[1].startswith("denseblock")
               and parts[2].startswith("denselayer")}
    blocks = cfg["block_config"]
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


def check_state_size(config, state, where):
    """Refuse a description of more values than ``state`` holds, before the model is built: a model is never
    larger than the file (or state dict) it is loaded from (:func:`numpy_densenet.zoo.state_size`)."""
    described = state_size(config)
    held = sum(int(np.size(v)) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    if described > held:
        raise WeightsFileError(f"{where} describes a model of {described:,} values (block_config "
                               f"{tuple(config['block_config'])}, growth_rate {config['growth_rate']}) but holds "
                               f"{held:,}; the description does not fit the weights")


def inputs_entry(arrays, path):
    """``_inputs``: {"image_size": [H, W], "pixel_range": [lo, hi]}, checked."""
    v = json_entry(arrays, "_inputs", path, kind=dict)
    size, rng = v.get("image_size"), v.get("pixel_range")
    ok = (set(v) == {"image_size", "pixel_range"} and isinstance(size, list) and len(size) == 2
          and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 1024 for n in size)
          and isinstance(rng, list) and len(rng) == 2 and all(isinstance(r, (int, float)) and math.isfinite(r)
                                                              and not isinstance(r, bool) for r in rng))
    if not ok:
        raise WeightsFileError(f"weights file {os.fspath(path)!r}: '_inputs' should be {{\"image_size\": [H, W], "
                               f"\"pixel_range\": [lo, hi]}}, found {str(v)[:120]}")
    return v


def preprocess_entry(arrays, path):
    """``_preprocess`` (resize, crop, scale, mean, std, interpolation), checked."""
    v = json_entry(arrays, "_preprocess", path, kind=dict)
    num = (int, float)
    ok = (set(v) <= {"resize", "crop", "interpolation", "scale", "mean", "std"}
          and all(isinstance(v.get(k), int) and not isinstance(v.get(k), bool) and 1 <= v[k] <= 4096
                  for k in ("resize", "crop"))
          and isinstance(v.get("scale"), num) and v["scale"] > 0
          and all(isinstance(v.get(k), list) and len(v[k]) == 3 and all(isinstance(x, num) and math.isfinite(x)
                                                                        for x in v[k]) for k in ("mean", "std"))
          and all(x > 0 for x in v["std"]) and v["crop"] <= v["resize"])
    if not ok:
        raise WeightsFileError(f"weights file {os.fspath(path)!r}: '_preprocess' is not a valid description of the "
                               f"ImageNet preprocessing, found {str(v)[:160]}")
    return v


def normalisation_entries(arrays, path, in_channels):
    """``_mean`` and ``_std`` (float64 (in_channels,) each, std > 0) as a dict; None for an absent one."""
    meta = dict(mean=None, std=None)
    for key in ("_mean", "_std"):
        if key in arrays:
            a = arrays[key]
            if a.dtype.kind != "f" or a.shape != (in_channels,) or not np.isfinite(a).all() or \
                    (key == "_std" and (a <= 0).any()):
                raise WeightsFileError(f"weights file {os.fspath(path)!r}: {key!r} should hold one finite value per "
                                       f"input channel ({in_channels}){', all > 0' if key == '_std' else ''}, found "
                                       f"{a.dtype} {a.shape}" + (f" {a.tolist()}" if a.size <= 8 else ""))
            meta[key[1:]] = a.astype(np.float64)
    return meta


def classes_entry(arrays, path, num_classes):
    """``_classes``: one name per class, checked; None when absent."""
    if "_classes" not in arrays:
        return None
    classes = json_entry(arrays, "_classes", path, kind=list)
    if len(classes) != num_classes or not all(isinstance(c, str) for c in classes):
        raise WeightsFileError(f"weights file {os.fspath(path)!r}: '_classes' should be a list of {num_classes} names "
                               f"(one per class), found {len(classes)} entries")
    return classes


def weights_only(arrays, prefix=""):
    """The state_dict part of a file's arrays: no metadata, optimizer or run state (``prefix`` removed)."""
    return OrderedDict((k[len(prefix):], v) for k, v in arrays.items()
                       if k.startswith(prefix) and not k.startswith(NOT_WEIGHTS)
                       and not k[len(prefix):].startswith("_"))


def load_model_file(path, dtype=None, fast=True):
    """Rebuild a model from a self-describing file (best.npz / checkpoint.npz / a converted model).

    The file is checked before the model is built: ``_model_config`` against the tensors present (so its
    sizes cannot make the model larger than the file), every tensor finite floating point with running
    variances >= 0, ``_mean`` / ``_std`` one finite value per input channel (std > 0), ``_classes`` one
    name per class. Every problem raises :class:`~numpy_densenet.io.WeightsFileError` naming the file.

    ``fast=False`` builds the model in the plain tier (same weights, same results to rounding).

    Returns (model, metadata dict with mean, std, classes, inputs, preprocess).
    """
    arrays = load_npz(path)
    if "_model_config" not in arrays:
        raise WeightsFileError(f"weights file {os.fspath(path)!r} has no model description (_model_config): it was "
                               f"neither written by `numpy-densenet train` nor by `numpy-densenet convert` (convert a "
                               f"torchvision .pth again to get a self-describing file); give --model to evaluate "
                               f"it, or load it from Python with numpy_densenet.io.load_weights")
    check_metadata_keys(arrays, path)
    prefix = "model." if any(k.startswith("model.") for k in arrays) else ""
    cfg = model_config_from_arrays(arrays, path, prefix=prefix)
    state = weights_only(arrays, prefix)
    check_state_values(state, path)
    check_state_size(cfg, state, label(path, "weights file"))
    stored = arrays[prefix + "classifier.weight"].dtype
    dt = np.dtype(dtype) if dtype else (stored if stored in (np.float32, np.float64) else np.dtype(np.float32))
    meta = normalisation_entries(arrays, path, cfg["in_channels"])
    meta["classes"] = classes_entry(arrays, path, cfg["num_classes"])
    try:
        model = DenseNet(**cfg, dtype=dt, fast=fast)
        model.load_state_dict(state)
    except (ValueError, TypeError) as e:
        raise WeightsFileError(f"weights file {os.fspath(path)!r} does not fit its own model description: {e}") \
            from None
    meta["inputs"] = inputs_entry(arrays, path) if "_inputs" in arrays else None
    meta["preprocess"] = preprocess_entry(arrays, path) if "_preprocess" in arrays else None
    return model, meta


def load_weights_arrays(path, what="weights file"):
    """Read a weights file and check its tensors' values (:func:`check_state_values`): name -> array."""
    arrays = load_npz(path, what=what)
    check_state_values(weights_only(arrays), path, what)
    return arrays


def load_weights(model, path, strict=True):
    """Load a .npz written by :func:`save_weights` (or by ``convert``) into ``model``.

    The file's tensors are checked first (finite floats, running variances >= 0); keys starting with ``_``
    (the metadata of files written by ``train``) are skipped. A ``checkpoint.npz`` (keys ``model.*``) works too.
    """
    state = load_npz(path)
    prefix = "model." if any(k.startswith("model.") for k in state) else ""
    weights = weights_only(state, prefix)
    check_state_values(weights, path)
    try:
        return model.load_state_dict(weights, strict=strict)
    except ValueError as e:
        raise WeightsFileError(f"weights file {os.fspath(path)!r} does not fit the model: {e}") from None
