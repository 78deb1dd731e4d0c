"""torchvision's DenseNet weights: what architecture a state dict describes, and conversion of a ``.pth`` to a
self-describing ``.npz`` (PyTorch is needed for the conversion only, and imported only then).
"""
from __future__ import annotations

import math
import os
import re
import warnings
import zipfile
from collections import OrderedDict

import numpy as np

from ..data.files import (FileFormatError, check_budget, check_compression, check_regular_file, format_bytes,
                          memory_budget)
from ..data.imagenet import IMAGENET_MEAN, IMAGENET_PREPROCESS, IMAGENET_STD, imagenet_classes
from ..model import rename_old_keys
from ..zoo import DenseNet
from .files import WeightsFileError, check_state_values, save_npz
from .weights import check_state_size, metadata_arrays

__all__ = ["describe_torchvision_state", "checked_description", "converted_metadata", "convert_torch_checkpoint",
           "check_torch_archive", "tensor_arrays"]


# -- the architecture, from the tensors' shapes -------------------------------------------------------------
def describe_torchvision_state(state):
    """Infer the ``DenseNet(...)`` keyword arguments from a torchvision-style DenseNet state dict.

    Parameters
    ----------
    state : mapping of key -> array
        torchvision's key names (``features.conv0.weight``, ``features.denseblock1.denselayer1.conv1.weight``,
        ...); old ``norm.1``-style keys should already be renamed.

    Returns
    -------
    dict with growth_rate, block_config, num_init_features, bn_size, drop_rate (0: not recorded in weights),
    num_classes, compression, stem ("imagenet" for a 7x7 first convolution, "cifar" for 3x3) and in_channels.

    Raises
    ------
    ValueError
        When a tensor needed for the description is missing or the shapes do not fit a DenseNet.
    """
    def shape(key):
        if key not in state:
            raise ValueError(f"not a torchvision DenseNet state dict: there is no {key!r}")
        return tuple(np.shape(state[key]))

    conv0 = shape("features.conv0.weight")
    if len(conv0) != 4 or conv0[2] not in (3, 7):
        raise ValueError(f"features.conv0.weight has shape {conv0}; expected (C, in_channels, 7, 7) for the "
                         f"ImageNet stem or (C, in_channels, 3, 3) for the CIFAR stem")
    stem = "imagenet" if conv0[2] == 7 else "cifar"
    layers = {}
    for key in state:
        m = re.match(r"features\.denseblock(\d+)\.denselayer(\d+)\.", key)
        if m:
            layers.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    if not layers or sorted(layers) != list(range(1, len(layers) + 1)):
        raise ValueError(f"the dense blocks should be numbered 1, 2, ...; found {sorted(layers)[:10]}")
    for b, present in layers.items():               # counted, never taken from a number in a key
        if present != set(range(1, len(present) + 1)):
            gaps = sorted(set(range(1, max(present) + 1)) - present)
            raise ValueError(f"the dense layers of block {b} should be numbered 1, 2, ...; layer {gaps[0]} is "
                             f"missing (found {len(present)} layers, numbered up to {max(present)})")
    block_config = tuple(len(layers[b]) for b in sorted(layers))
    first = "features.denseblock1.denselayer1."
    if first + "conv2.weight" in state:                                   # bottleneck layers
        growth_rate = shape(first + "conv2.weight")[0]
        width = shape(first + "conv1.weight")[0]
        if width % growth_rate:
            raise ValueError(f"{first}conv1 has {width} output channels, not a multiple of the growth rate "
                             f"{growth_rate}")
        bn_size = width // growth_rate
    else:
        growth_rate, bn_size = shape(first + "conv1.weight")[0], None
    compression = 0.5                                                    # the default; no transition uses it
    pairs = [shape(f"features.transition{t}.conv.weight")[:2] for t in range(1, len(block_config))]
    if pairs:                                                            # (out, in) = (floor(theta * in), in)
        fits = [c for c in (0.5, 1.0) if all(math.floor(c * i + 1e-9) == o for o, i in pairs)]
        low, high = max(o / i for o, i in pairs), min((o + 1) / i for o, i in pairs)
        if not fits and not low < high:
            raise ValueError(f"the transitions' channel counts (out, in) {pairs} fit no single compression")
        compression = fits[0] if fits else low
    classifier = shape("classifier.weight")
    return dict(growth_rate=int(growth_rate), block_config=block_config, num_init_features=int(conv0[0]),
                bn_size=None if bn_size is None else int(bn_size), drop_rate=0.0, num_classes=int(classifier[0]),
                compression=float(compression), stem=stem, in_channels=int(conv0[1]))


def checked_description(state):
    """:func:`describe_torchvision_state`, checked by loading ``state`` into the model it describes (strict:
    every key and shape must fit). Raises ValueError otherwise."""
    config = describe_torchvision_state(state)
    check_state_size(config, state, "the state dict")       # no larger than the tensors, before building it
    DenseNet(**config, fast=False).load_state_dict(state)
    return config


def converted_metadata(model_config, classes=None):
    """The metadata of a converted file (:func:`~numpy_densenet.io.weights.metadata_arrays`).

    ``_model_config``: the architecture. For an ImageNet model (the ImageNet stem on RGB images, as torchvision's
    DenseNets) also ``_preprocess``: torchvision's ImageNet evaluation transforms, ``_mean`` / ``_std``: the
    normalisation, and ``_classes``: the class names (ImageNet's 1000 when the model has 1000 outputs). Other
    models (a CIFAR stem, grey images) get the architecture only: their preprocessing is not ImageNet's and is
    not known here.
    """
    if model_config["stem"] != "imagenet" or model_config["in_channels"] != 3:
        return metadata_arrays(model_config)
    if classes is None and model_config["num_classes"] == 1000:
        classes = imagenet_classes()
    return metadata_arrays(model_config, mean=IMAGENET_MEAN, std=IMAGENET_STD, classes=classes,
                           preprocess=IMAGENET_PREPROCESS)


def convert_torch_checkpoint(src, dst):
    """Convert a torchvision DenseNet ``.pth`` state dict to a numpy_densenet ``.npz``.

    Needs PyTorch (only here); the file is read with ``torch.load(weights_only=True)``, which refuses
    arbitrary pickled objects, after its declared storage sizes were checked against the memory budget and the
    compression ratio (:func:`check_torch_archive`). Old ``norm.1``-style keys are renamed as torchvision does.
    Every tensor is checked (:func:`tensor_arrays`: names, dense, no expanded views, within the budget) and
    the whole state validated - the architecture, every value as :func:`~numpy_densenet.io.load_model_file`
    checks it - before ``dst`` is written, atomically: a bad ``.pth`` never replaces a good ``dst``.

    The file is self-describing (see :mod:`numpy_densenet.hub`): the architecture inferred from the tensors'
    shapes, ImageNet preprocessing and, for 1000 outputs, the ImageNet class names, so ``predict`` and
    ``hub.load`` need nothing else. Returns the number of weight arrays written.
    """
    try:
        import torch
    except ImportError:
        raise RuntimeError("converting a .pth file needs PyTorch (the CPU build is enough): pip install torch "
                           "--index-url https://download.pytorch.org/whl/cpu") from None
    where = f"checkpoint {os.fspath(src)!r}"
    try:
        check_regular_file(src, "checkpoint")
        check_torch_archive(src, where)
    except FileFormatError as e:
        raise WeightsFileError(str(e)) from None
    try:
        with warnings.catch_warnings():               # deprecation notes about what a file holds: not ours to print
            warnings.simplefilter("ignore")
            state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
        first = (str(e).strip().splitlines() or [""])[0]
        raise WeightsFileError(f"{where} is not a PyTorch state dict that torch.load(weights_only=True) can read "
                               f"({type(e).__name__}: {first})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsFileError(f"{where} does not hold a state dict")
    arrays = tensor_arrays(state, where, torch)
    check_state_values(arrays, src, "checkpoint")
    try:
        description = checked_description(arrays)
    except ValueError as e:
        raise WeightsFileError(f"{where} is not a DenseNet this package can describe: {e}") from None
    save_npz(dst, {**arrays, **converted_metadata(description)})
    return len(arrays)


def check_torch_archive(path, where):
    """Before ``torch.load``: the records of a zip-format ``.pth`` (PyTorch >= 1.6), as declared in its
    directory, must fit the memory budget together, and a compressed one may expand at most
    ``MAX_COMPRESSION_RATIO`` times (the rules of every ``.npz``). Legacy files hold their storages
    uncompressed, so the file's size bounds them."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as e:
        raise FileFormatError(f"{where} is not a valid zip archive ({type(e).__name__}: {e})") from None
    for info in infos:
        check_compression(info, info.file_size, f"{where} declares a record {info.filename!r} of "
                          f"{format_bytes(info.file_size)},", "save it again with torch.save")
    total, budget = sum(i.file_size for i in infos), memory_budget()
    if total > budget:
        raise FileFormatError(f"{where} declares {format_bytes(total)} of records, more than the memory budget of "
                              f"{format_bytes(budget)} for one file; set NUMPY_DENSENET_MAX_BYTES to allow more")


def tensor_arrays(state, where, torch):
    """The tensors of a loaded state dict as NumPy arrays, each checked: a string key, a dense (strided)
    tensor, no more elements than its storage holds (an expanded stride-0 view would be materialised), all
    together within the memory budget. bfloat16 / float16 become float32."""
    bad = next((k for k in state if not isinstance(k, str)), None)
    if bad is not None:
        raise WeightsFileError(f"{where}: its keys must be tensor names (strings); found the {type(bad).__name__} "
                               f"{str(bad)[:40]!r}")
    arrays, total, budget = OrderedDict(), 0, memory_budget()
    for key, value in rename_old_keys(state).items():
        key = key[len("module."):] if key.startswith("module.") else key      # DataParallel prefix
        if not isinstance(value, torch.Tensor):
            raise WeightsFileError(f"{where}: entry {key!r} is not a tensor ({type(value).__name__})")
        if value.layout != torch.strided or value.is_quantized:
            kind = f"quantized tensor ({value.dtype})" if value.is_quantized else f"sparse tensor ({value.layout})"
            raise WeightsFileError(f"{where}: entry {key!r} is a {kind}; weights are plain dense tensors")
        nbytes = value.numel() * value.element_size()
        stored = value.untyped_storage().nbytes()
        if nbytes > stored:
            raise WeightsFileError(f"{where}: entry {key!r} of shape {tuple(value.shape)} views a storage of "
                                   f"{format_bytes(stored)} but would take {format_bytes(nbytes)} (an expanded, "
                                   f"stride-0 or overlapping view); weights are plain tensors")
        try:
            check_budget(f"{where}, entry {key!r}", tuple(value.shape), value.dtype, nbytes, budget, total)
        except FileFormatError as e:
            raise WeightsFileError(str(e)) from None
        total += nbytes
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype not in (torch.float32, torch.float64):
            value = value.float()                                       # bfloat16 / float16 have no NumPy twin
        try:
            arrays[key] = value.numpy()
        except (TypeError, RuntimeError) as e:                          # complex32 and other dtypes NumPy lacks
            raise WeightsFileError(f"{where}: entry {key!r} has dtype {value.dtype}, which NumPy cannot hold "
                                   f"({e})") from None
    return arrays
