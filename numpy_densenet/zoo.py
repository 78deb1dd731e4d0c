"""The named models: torchvision's DenseNet-121/161/169/201, the paper's CIFAR DenseNet-BC and DenseNet, and
``DenseNet(..., fast=True)``, which builds the network from either tier.

This module is the one place that knows the model names (:data:`MODELS`), their default depths and growth
rate (:func:`default_depth`) and how to build a model from command-line style options (:func:`build_model`).
"""
from __future__ import annotations

import inspect

import numpy as np

from .fast import DenseNet as FastDenseNet
from .model import DenseNet as PlainDenseNet

__all__ = ["DenseNet", "densenet121", "densenet161", "densenet169", "densenet201", "densenet_bc", "densenet",
           "MODELS", "MODEL_NAMES", "CIFAR_MODELS", "DEFAULT_DEPTH", "DEFAULT_GROWTH_RATE", "default_depth",
           "build_model"]

#: the CIFAR-style models take a depth and a growth rate; torchvision's have fixed architectures
CIFAR_MODELS = ("densenet_bc", "densenet")
DEFAULT_DEPTH = {"densenet_bc": 100, "densenet": 40}   # the paper's DenseNet-BC (L=100, k=12) and DenseNet (L=40)
DEFAULT_GROWTH_RATE = 12
SMALL_DATASETS = {"digits": 16}                         # the bundled 8x8 digits: a depth that trains in a minute


def DenseNet(*args, fast=True, memory_efficient=True, **kwargs):  # noqa: N802 - a class-like factory, as torch's
    """A DenseNet from the fast tier (``fast=True``, the default) or the plain tier (``fast=False``).

    The arguments are :class:`numpy_densenet.model.DenseNet`'s (growth_rate, block_config, ...). Both tiers have
    the same initialisation for the same seed, the same ``state_dict`` keys and the same results to rounding,
    so checkpoints move between them.

    Parameters
    ----------
    fast : bool
        True: :class:`numpy_densenet.fast.DenseNet`, channel-major with one buffer per dense block, fused
        BN-ReLU and threads. False: :class:`numpy_densenet.model.DenseNet`, the plain layers of
        :mod:`numpy_densenet.nn` (NCHW, :class:`~numpy_densenet.nn.Concat`), slow and memory-hungry but written
        to be read.
    memory_efficient : bool
        Fast tier only: recompute each dense layer's first BN -> ReLU in backward instead of storing it
        (:class:`numpy_densenet.fast.DenseNet`). The plain tier always keeps every activation.

    Returns
    -------
    numpy_densenet.model.DenseNet
        (an instance of its fast subclass when ``fast``).
    """
    if not isinstance(fast, (bool, np.bool_)):
        raise TypeError(f"DenseNet: fast must be True or False, got {fast!r}")
    if fast:
        return FastDenseNet(*args, memory_efficient=memory_efficient, **kwargs)
    return PlainDenseNet(*args, **kwargs)


_plain_parameters = list(inspect.signature(PlainDenseNet).parameters.values())
DenseNet.__signature__ = inspect.Signature(_plain_parameters + [
    inspect.Parameter("memory_efficient", inspect.Parameter.KEYWORD_ONLY, default=True),
    inspect.Parameter("fast", inspect.Parameter.KEYWORD_ONLY, default=True)])


# -- torchvision's ImageNet models ----------------------------------------------------------------------------
_TORCHVISION = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}


def _torchvision_factory(name):
    growth_rate, block_config, num_init_features = _TORCHVISION[name]

    def factory(num_classes=1000, **kwargs):
        return DenseNet(growth_rate, block_config, num_init_features, num_classes=num_classes, **kwargs)

    factory.__name__ = factory.__qualname__ = name
    factory.__doc__ = (f"torchvision's {name}: k={growth_rate}, blocks {block_config}, {num_init_features} "
                       f"initial features, ImageNet stem. Keyword arguments go to :func:`DenseNet` (``fast=``, "
                       f"``dtype=``, ``seed=``, ...).")
    return factory


densenet121 = _torchvision_factory("densenet121")
densenet161 = _torchvision_factory("densenet161")
densenet169 = _torchvision_factory("densenet169")
densenet201 = _torchvision_factory("densenet201")


# -- the paper's CIFAR models ---------------------------------------------------------------------------------
def densenet_bc(depth=DEFAULT_DEPTH["densenet_bc"], growth_rate=DEFAULT_GROWTH_RATE, num_classes=10, **kwargs):
    """The paper's CIFAR DenseNet-BC: 3 blocks of (depth - 4) / 6 bottleneck layers, theta = 0.5.

    The stem is one 3x3 conv to 2k channels. BC-100-12, BC-250-24 and BC-190-40 are the paper's models.
    Keyword arguments go to :func:`DenseNet`.
    """
    if not isinstance(depth, (int, np.integer)) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"densenet_bc: depth must be 6n + 4 with n >= 1 (e.g. 40, 100, 190, 250), got {depth!r}")
    n = (depth - 4) // 6
    kwargs.setdefault("stem", "cifar")
    return DenseNet(growth_rate, (n, n, n), 2 * growth_rate, bn_size=4, num_classes=num_classes,
                    compression=0.5, **kwargs)


def densenet(depth=DEFAULT_DEPTH["densenet"], growth_rate=DEFAULT_GROWTH_RATE, num_classes=10, **kwargs):
    """The paper's plain CIFAR DenseNet: 3 blocks of (depth - 4) / 3 layers BN-ReLU-3x3 conv, no compression.

    The stem is one 3x3 conv to 16 channels. L=40 k=12, L=100 k=12 and L=100 k=24 are the paper's models.
    Keyword arguments go to :func:`DenseNet`.
    """
    if not isinstance(depth, (int, np.integer)) or depth < 7 or (depth - 4) % 3:
        raise ValueError(f"densenet: depth must be 3n + 4 with n >= 1 (e.g. 40, 100), got {depth!r}")
    n = (depth - 4) // 3
    kwargs.setdefault("stem", "cifar")
    return DenseNet(growth_rate, (n, n, n), 16, bn_size=None, num_classes=num_classes, compression=1.0, **kwargs)


MODELS = {"densenet121": densenet121, "densenet161": densenet161, "densenet169": densenet169,
          "densenet201": densenet201, "densenet_bc": densenet_bc, "densenet": densenet}
MODEL_NAMES = tuple(MODELS)


def default_depth(name, dataset=None):
    """The depth a CIFAR-style model gets when none is given: 16 on the bundled digits, else the paper's (100
    for densenet_bc, 40 for densenet); None for torchvision's models, whose depth is fixed."""
    if name not in CIFAR_MODELS:
        return None
    return SMALL_DATASETS.get(dataset, DEFAULT_DEPTH[name])


def build_model(name, depth=None, growth_rate=None, num_classes=None, dataset=None, **kwargs):
    """A model from command-line style options.

    Parameters
    ----------
    name : str
        One of :data:`MODEL_NAMES`.
    depth, growth_rate : int, optional
        CIFAR-style models only (:data:`CIFAR_MODELS`); default :func:`default_depth` (for ``dataset``) and
        :data:`DEFAULT_GROWTH_RATE`.
    num_classes : int, optional
        Default 10 for the CIFAR-style models, 1000 for torchvision's.
    **kwargs
        To :func:`DenseNet` (``in_channels``, ``dtype``, ``seed``, ``fast``, ...).

    Raises
    ------
    ValueError
        An unknown name, ``depth``/``growth_rate`` for a torchvision model, or arguments the model refuses; the
        message names the option.
    """
    if name not in MODELS:
        raise ValueError(f"--model must be one of {', '.join(MODEL_NAMES)}, got {name!r}")
    if name in CIFAR_MODELS:
        depth = depth if depth is not None else default_depth(name, dataset)
        growth_rate = growth_rate if growth_rate is not None else DEFAULT_GROWTH_RATE
        return MODELS[name](depth, growth_rate, num_classes=10 if num_classes is None else num_classes, **kwargs)
    if depth is not None or growth_rate is not None:
        raise ValueError(f"--depth and --growth-rate apply to densenet_bc and densenet, not {name}")
    return MODELS[name](num_classes=1000 if num_classes is None else num_classes, **kwargs)
