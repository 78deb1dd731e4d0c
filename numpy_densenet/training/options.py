"""The options of a training run: :class:`TrainConfig`, its defaults and its checks."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields

from ..io.files import WeightsFileError, json_entry
from ..zoo import CIFAR_MODELS, DEFAULT_GROWTH_RATE, default_depth

__all__ = ["TrainingError", "TrainConfig", "check_options", "TRAIN_CONFIG_FIELDS", "config_from_checkpoint"]


class TrainingError(Exception):
    """A run that cannot start or cannot go on (bad options, a model that does not fit the data, divergence)."""


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults: the bundled digits and a small DenseNet-BC.

    For CIFAR-style runs the defaults follow the paper: SGD, Nesterov momentum 0.9, weight decay 1e-4,
    lr 0.1 divided by 10 at 50% and 75% of the epochs, batch 64, "+" augmentation.
    """
    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "densenet_bc"
    depth: int | None = None            # densenet_bc / densenet only; default numpy_densenet.zoo.default_depth
    growth_rate: int | None = None      # densenet_bc / densenet only; default 12
    drop_rate: float = 0.0
    epochs: int | None = None           # default 30 on digits, 300 otherwise (the paper's CIFAR recipe)
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"              # "step" (x0.1 at 50% and 75%) or "cosine"
    augment: bool | None = None         # default: on for CIFAR and npz, off for digits / MNIST
    seed: int = 0
    dtype: str = "float32"
    out: str = "runs/digits"
    val_fraction: float = 0.1           # held out of the training set for model selection (0: off)

    def resolved(self):
        """A copy with every default that depends on the dataset filled in."""
        c = TrainConfig(**asdict(self))
        if c.model in CIFAR_MODELS:
            c.depth = c.depth if c.depth is not None else default_depth(c.model, c.dataset)
            c.growth_rate = c.growth_rate if c.growth_rate is not None else DEFAULT_GROWTH_RATE
        if c.epochs is None:
            c.epochs = 30 if c.dataset == "digits" else 300
        if c.augment is None:
            c.augment = c.dataset in ("cifar10", "cifar100", "npz")
        return c


TRAIN_CONFIG_FIELDS = tuple(f.name for f in fields(TrainConfig))
OLD_TRAIN_CONFIG_DEFAULTS = {"val_fraction": 0.0}                 # fields added since version 1, as before them
_BOUNDS = {"lr": (0, math.inf, "a positive finite number"), "momentum": (0, 1, "in [0, 1)"),
           "weight_decay": (0, math.inf, "a finite number >= 0"), "drop_rate": (0, 1, "in [0, 1)")}


def check_options(config):
    """Raise :class:`TrainingError` naming the first bad option of a resolved config (as its ``--flag``)."""
    if config.dtype not in ("float32", "float64"):
        raise TrainingError(f"--dtype must be float32 or float64, got {config.dtype!r}")
    for name in ("epochs", "batch_size"):
        v = getattr(config, name)
        if not isinstance(v, int) or v < 1:
            raise TrainingError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
    for name, (low, high, bounds) in _BOUNDS.items():
        value = getattr(config, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or \
                value < low or value >= high or (name == "lr" and value == 0):
            raise TrainingError(f"--{name.replace('_', '-')} must be {bounds}, got {value!r}")
    if not isinstance(config.out, str) or not config.out.strip():
        raise TrainingError(f"--out must name an output folder, got {config.out!r}")
    if config.schedule not in ("step", "cosine"):
        raise TrainingError(f"--schedule must be 'step' or 'cosine', got {config.schedule!r}")


def config_from_checkpoint(arrays, path):
    """The ``_train_config`` of a checkpoint as a dict of :class:`TrainConfig` fields; unknown fields refused."""
    saved = json_entry(arrays, "_train_config", path, "checkpoint", dict)
    unknown = [k for k in saved if k not in TRAIN_CONFIG_FIELDS]
    if unknown:
        raise WeightsFileError(f"checkpoint {os.fspath(path)!r} has training option(s) this version does not know: "
                               f"{', '.join(unknown)}; it was written by a newer numpy_densenet, upgrade to resume it")
    saved = {**{k: v for k, v in OLD_TRAIN_CONFIG_DEFAULTS.items() if k not in saved}, **saved}
    missing = [k for k in TRAIN_CONFIG_FIELDS if k not in saved]
    if missing:
        raise WeightsFileError(f"checkpoint {os.fspath(path)!r}: '_train_config' lacks {', '.join(missing)}")
    return saved
