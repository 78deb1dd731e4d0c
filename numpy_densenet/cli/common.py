"""Helpers shared by the ``numpy-densenet`` commands: the error type, argparse types and model options."""
from __future__ import annotations

import argparse


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


def add_model_args(p, default="densenet_bc", given_only=False):
    """``--model``, ``--depth``, ``--growth-rate``; with ``given_only`` an option not given is absent from args.

    ``default=None``: only for weights files that do not describe a model."""
    unset = argparse.SUPPRESS if given_only else None
    p.add_argument("--model", default=argparse.SUPPRESS if given_only else default,
                   choices=["densenet121", "densenet161", "densenet169", "densenet201", "densenet_bc", "densenet"],
                   help=f"architecture (default: {default})" if default else
                   "architecture, only needed for a weights file that does not describe its model (files from "
                   "train and convert do)")
    p.add_argument("--depth", type=int, default=unset,
                   help="depth L of densenet_bc / densenet (default: 16 on digits; otherwise 100 for densenet_bc, "
                        "40 for densenet)")
    p.add_argument("--growth-rate", type=int, default=unset,
                   help="growth rate k of densenet_bc / densenet (default 12)")


def build_model(name, depth=None, growth_rate=None, num_classes=None, **kwargs):
    """Make a model from command-line style options, with clear errors."""
    from .. import model as dn
    try:
        if name in ("densenet_bc", "densenet"):
            depth = depth if depth is not None else (100 if name == "densenet_bc" else 40)
            growth_rate = growth_rate if growth_rate is not None else 12
            return dn.MODELS[name](depth, growth_rate, num_classes=10 if num_classes is None else num_classes,
                                   **kwargs)
        if depth is not None or growth_rate is not None:
            raise UserError(f"--depth and --growth-rate apply to densenet_bc and densenet, not {name}")
        return dn.MODELS[name](num_classes=1000 if num_classes is None else num_classes, **kwargs)
    except ValueError as e:
        raise UserError(str(e)) from None
