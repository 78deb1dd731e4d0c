"""Helpers shared by the ``numpy-densenet`` commands: the error type, argparse types and model options."""
from __future__ import annotations

import argparse
import math

from ..zoo import CIFAR_MODELS, DEFAULT_DEPTH, DEFAULT_GROWTH_RATE, MODEL_NAMES, SMALL_DATASETS
from ..zoo import build_model as build


class UserError(Exception):
    """An error caused by the command line or the files it names: printed as one paragraph, exit code 2."""


def nonneg_int(text):
    """argparse type for seeds and counts that may be 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def positive_int(text):
    """argparse type for sizes that must be at least 1."""
    value = nonneg_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def finite_float(text):
    """argparse type for a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def depth_help(small=True):
    """How the default depth is chosen, for --help (from numpy_densenet.zoo)."""
    paper = ", ".join(f"{DEFAULT_DEPTH[m]} for {m}" for m in CIFAR_MODELS)
    digits = ", ".join(f"{d} on {name}" for name, d in SMALL_DATASETS.items())
    return f"default: {digits}; otherwise {paper}" if small else f"default {paper}"


def add_model_args(p, default="densenet_bc", given_only=False):
    """``--model``, ``--depth``, ``--growth-rate``; with ``given_only`` an option not given is absent from args.

    ``default=None``: only for weights files that do not describe a model."""
    unset = argparse.SUPPRESS if given_only else None
    p.add_argument("--model", default=argparse.SUPPRESS if given_only else default, choices=MODEL_NAMES,
                   help=f"architecture (default: {default})" if default else
                   "architecture, only needed for a weights file that does not describe its model (files from "
                   "train and convert do)")
    p.add_argument("--depth", type=int, default=unset,
                   help=f"depth L of {' / '.join(CIFAR_MODELS)} ({depth_help()})")
    p.add_argument("--growth-rate", type=int, default=unset,
                   help=f"growth rate k of {' / '.join(CIFAR_MODELS)} (default {DEFAULT_GROWTH_RATE})")


def build_model(name, depth=None, growth_rate=None, num_classes=None, **kwargs):
    """:func:`numpy_densenet.zoo.build_model` with its errors as :class:`UserError`."""
    try:
        return build(name, depth, growth_rate, num_classes, **kwargs)
    except ValueError as e:
        raise UserError(str(e)) from None
