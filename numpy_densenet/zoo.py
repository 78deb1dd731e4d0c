"""The named models: torchvision's DenseNet-121/161/169/201, the paper's CIFAR DenseNet-BC and DenseNet, and
``DenseNet(..., fast=True)``, which builds the network from either tier.

This module is the one place that knows the model names (:data:`MODELS`), their default depths and growth
rate (:func:`default_depth`) and how to build a model from command-line style options (:func:`build_model`).
"""
from __future__ import annotations

import inspect

import numpy as np

from .data.files import format_bytes, physical_memory
from .fast import DenseNet as FastDenseNet
from .model import DenseNet as PlainDenseNet
from .model import check_config, transition_width

__all__ = ["DenseNet", "densenet121", "densenet161", "densenet169", "densenet201", "densenet_bc", "densenet",
           "MODELS", "MODEL_NAMES", "CIFAR_MODELS", "DEFAULT_DEPTH", "DEFAULT_GROWTH_RATE", "default_depth",
           "build_model", "architecture", "state_size", "check_model_size"]

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
    check_model_size(*args, **kwargs)
    if fast:
        return FastDenseNet(*args, memory_efficient=memory_efficient, **kwargs)
    return PlainDenseNet(*args, **kwargs)


def state_size(config):
    """The number of floating-point values in the ``state_dict`` of ``DenseNet(**config)`` (parameters and
    running statistics), computed from the architecture alone, without building anything.

    ``config``: the architecture's arguments as ``DenseNet.config`` holds them (growth_rate, block_config,
    num_init_features, bn_size, num_classes, compression, stem, in_channels). A dense layer reading c channels
    holds a BatchNorm (4c values) and a 1x1 conv to bn_size*k (then a BatchNorm and a 3x3 conv to k), or a 3x3
    conv to k; the channels of a block's layers grow as c0, c0 + k, ..., so each block is summed in closed form.
    """
    k, bn = config["growth_rate"], config["bn_size"]
    c = config["num_init_features"]
    kernel = 49 if config["stem"] == "imagenet" else 9
    total = c * config["in_channels"] * kernel + (4 * c if config["stem"] == "imagenet" else 0)
    for i, n in enumerate(config["block_config"]):
        read = n * c + k * n * (n - 1) // 2                       # the channels all n layers read, summed
        total += 4 * read + (bn * k * read + n * (4 * bn * k + 9 * bn * k * k) if bn is not None else 9 * k * read)
        c += n * k
        if i != len(config["block_config"]) - 1:
            out = transition_width(config["compression"], c, i + 1)
            total += 4 * c + out * c
            c = out
    return total + 4 * c + config["num_classes"] * (c + 1)


def check_model_size(*args, dtype=np.float32, **kwargs):
    """Refuse, before anything is allocated, the arguments of a :func:`DenseNet` whose parameters and gradients
    would not fit in this machine's memory (:func:`numpy_densenet.data.files.physical_memory`): a ValueError
    naming the size (``--depth 1000000000`` is refused at once, not after gigabytes). Bad arguments raise the
    ValueError ``DenseNet`` would."""
    try:
        bound = inspect.signature(PlainDenseNet).bind(*args, dtype=dtype, **kwargs)
    except TypeError:
        return                                           # DenseNet itself reports the bad call
    bound.apply_defaults()
    arguments = {k: v for k, v in bound.arguments.items() if k not in ("dtype", "seed")}
    config = check_config(**arguments)
    values = state_size(config)
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        itemsize = 8                                     # DenseNet itself reports the bad dtype
    nbytes, memory = 2 * values * itemsize, physical_memory()
    if nbytes > memory:
        blocks = config["block_config"]
        shown = blocks if len(blocks) <= 8 else f"({', '.join(map(str, blocks[:8]))}, ... {len(blocks)} blocks)"
        raise ValueError(f"DenseNet(growth_rate={config['growth_rate']}, block_config={shown}) would hold "
                         f"{values:,} values, {format_bytes(nbytes)} with their gradients, more than this machine's "
                         f"memory ({format_bytes(memory)}); choose a smaller depth or growth rate")


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
        return DenseNet(**{**architecture(name), **kwargs}, num_classes=num_classes)

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
    arch = architecture("densenet_bc", depth, growth_rate)
    return DenseNet(**{**arch, **kwargs}, num_classes=num_classes)


def densenet(depth=DEFAULT_DEPTH["densenet"], growth_rate=DEFAULT_GROWTH_RATE, num_classes=10, **kwargs):
    """The paper's plain CIFAR DenseNet: 3 blocks of (depth - 4) / 3 layers BN-ReLU-3x3 conv, no compression.

    The stem is one 3x3 conv to 16 channels. L=40 k=12, L=100 k=12 and L=100 k=24 are the paper's models.
    Keyword arguments go to :func:`DenseNet`.
    """
    arch = architecture("densenet", depth, growth_rate)
    return DenseNet(**{**arch, **kwargs}, num_classes=num_classes)


def architecture(name, depth=None, growth_rate=None):
    """The :func:`DenseNet` arguments that make the named model: growth_rate, block_config, num_init_features,
    bn_size, compression and stem (a dict; no model is built). ``depth`` and ``growth_rate`` (default the
    paper's) for the CIFAR-style models only; a ValueError names a bad one."""
    if name not in CIFAR_MODELS:
        growth, blocks, init = _TORCHVISION[name]
        return dict(growth_rate=growth, block_config=blocks, num_init_features=init, bn_size=4, compression=0.5,
                    stem="imagenet")
    depth = DEFAULT_DEPTH[name] if depth is None else depth
    k = DEFAULT_GROWTH_RATE if growth_rate is None else growth_rate
    per_layer, example = (6, "40, 100, 190, 250") if name == "densenet_bc" else (3, "40, 100")
    if not isinstance(depth, (int, np.integer)) or depth < 4 + per_layer or (depth - 4) % per_layer:
        raise ValueError(f"{name}: depth must be {per_layer}n + 4 with n >= 1 (e.g. {example}), got {depth!r}")
    n = (depth - 4) // per_layer
    if name == "densenet_bc":
        return dict(growth_rate=k, block_config=(n, n, n), num_init_features=2 * k, bn_size=4, compression=0.5,
                    stem="cifar")
    return dict(growth_rate=k, block_config=(n, n, n), num_init_features=16, bn_size=None, compression=1.0,
                stem="cifar")


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
