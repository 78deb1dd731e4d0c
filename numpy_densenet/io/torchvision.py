"""torchvision's DenseNet weights: what architecture a state dict describes, and conversion of a ``.pth`` to a
self-describing ``.npz`` (PyTorch is needed for the conversion only, and imported only then).
"""
from __future__ import annotations

import math
import os
import re
from collections import OrderedDict

import numpy as np

from ..data.files import FileFormatError, check_regular_file
from ..data.imagenet import IMAGENET_MEAN, IMAGENET_PREPROCESS, IMAGENET_STD, imagenet_classes
from ..model import rename_old_keys
from ..zoo import DenseNet
from .files import WeightsFileError, save_npz
from .weights import metadata_arrays

__all__ = ["describe_torchvision_state", "checked_description", "converted_metadata", "convert_torch_checkpoint"]


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
            b, l = int(m.group(1)), int(m.group(2))
            layers[b] = max(layers.get(b, 0), l)
    if not layers or sorted(layers) != list(range(1, len(layers) + 1)):
        raise ValueError(f"the dense blocks should be numbered 1, 2, ...; found {sorted(layers)}")
    block_config = tuple(layers[b] for b in sorted(layers))
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
    try:
        description = checked_description(arrays)
    except ValueError as e:
        raise WeightsFileError(f"checkpoint {os.fspath(src)!r} is not a DenseNet this package can describe: {e}") \
            from None
    save_npz(dst, {**arrays, **converted_metadata(description)})
    return len(arrays)
