"""The ``numpy-densenet`` command line (also ``python -m numpy_densenet``)."""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import __version__


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


# -- gradcheck ----------------------------------------------------------------------------------------------
def layer_cases(rng):
    """(label, module, input) for every layer type at a few small default shapes."""
    from . import fast, nn
    x = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    return [
        ("Conv2d 3x3 pad 1", nn.Conv2d(3, 4, 3, padding=1, generator=rng), x(2, 3, 5, 5)),
        ("Conv2d 1x1 (pointwise GEMM)", nn.Conv2d(5, 3, 1, bias=False, generator=rng), x(2, 5, 4, 3)),
        ("Conv2d 7x7 stride 2 pad 3", nn.Conv2d(2, 3, 7, stride=2, padding=3, generator=rng), x(2, 2, 9, 8)),
        ("Conv2d (2,3) stride (1,2) dilation 2", nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 2),
                                                           dilation=2, generator=rng), x(2, 2, 6, 7)),
        ("BatchNorm2d (train)", nn.BatchNorm2d(3), x(4, 3, 3, 3)),
        ("BatchNorm2d (eval)", _with_stats(nn.BatchNorm2d(3), rng).eval(), x(4, 3, 3, 3)),
        ("BatchNormReLU2d (train; a dense layer's BN -> ReLU)", fast.BatchNormReLU2d(3), x(4, 3, 3, 3)),
        ("ReLU", nn.ReLU(), x(2, 3, 4, 4)),
        ("MaxPool2d 3 stride 2 pad 1", nn.MaxPool2d(3, stride=2, padding=1), x(2, 3, 7, 6)),
        ("AvgPool2d 2 stride 2", nn.AvgPool2d(2), x(2, 3, 6, 5)),
        ("AvgPool2d 3 pad 1 count_include_pad=False", nn.AvgPool2d(3, 2, 1, count_include_pad=False),
         x(2, 2, 6, 7)),
        ("AdaptiveAvgPool2d(1)", nn.AdaptiveAvgPool2d(1), x(2, 3, 5, 4)),
        ("AdaptiveAvgPool2d((2, 3))", nn.AdaptiveAvgPool2d((2, 3)), x(2, 2, 5, 7)),
        ("Concat (3 inputs)", nn.Concat(), (x(2, 2, 3, 3), x(2, 1, 3, 3), x(2, 3, 3, 3))),
        ("Linear", nn.Linear(6, 4, generator=rng), x(3, 6)),
        ("Dropout(0.3), mask held fixed", nn.Dropout(0.3, seed=0), x(3, 7)),
        ("Flatten", nn.Flatten(), x(2, 3, 2, 2)),
        ("CrossEntropyLoss (label smoothing 0.1)", nn.CrossEntropyLoss(label_smoothing=0.1),
         (x(5, 4), rng.integers(0, 4, 5))),
    ]


def _with_stats(bn, rng):
    bn.running_mean[...] = rng.standard_normal(bn.num_features)
    bn.running_var[...] = rng.uniform(0.5, 2.0, bn.num_features)
    return bn


def model_cases(rng):
    """(label, model, input) for tiny DenseNets: both stems, plain and -BC, compression, dropout."""
    from .model import DenseNet
    return [
        ("DenseNet-BC, CIFAR stem, compression 0.5",
         DenseNet(4, (2, 2), 8, bn_size=2, num_classes=5, stem="cifar", seed=1), rng.standard_normal((3, 3, 8, 8))),
        ("DenseNet plain, CIFAR stem, no compression",
         DenseNet(3, (2, 2), 6, bn_size=None, num_classes=4, compression=1.0, stem="cifar", seed=2),
         rng.standard_normal((2, 3, 6, 6))),
        ("DenseNet-BC, ImageNet stem, 45x51-like odd input",
         DenseNet(4, (2, 1), 6, bn_size=2, num_classes=3, stem="imagenet", seed=3), rng.standard_normal((2, 3, 17, 19))),
        ("DenseNet-BC, every BN-ReLU output stored (memory_efficient=False)",
         DenseNet(4, (2, 2), 8, bn_size=2, num_classes=5, stem="cifar", seed=5, memory_efficient=False),
         rng.standard_normal((3, 3, 8, 8))),
        ("DenseNet-BC with dropout 0.2 (mask held fixed), grey input",
         DenseNet(4, (2, 2), 6, bn_size=2, drop_rate=0.2, num_classes=3, stem="cifar", in_channels=1, seed=4),
         rng.standard_normal((3, 1, 6, 6))),
    ]


def cmd_gradcheck(args):
    from .gradcheck import gradcheck
    rng = np.random.default_rng(args.seed)
    cases = model_cases(rng) if args.model else layer_cases(rng)
    mode = args.mode or ("directional" if args.model else "full")
    failed = []
    start = time.perf_counter()
    from .gradcheck_parallel import executor_for
    try:
        executor = executor_for(args.workers, args.scheduler)
    except (ImportError, ValueError, OSError) as e:
        raise UserError(str(e)) from None
    with executor as pool:                    # None: serial; else the probes run on the pool's workers
        for label, module, x in cases:
            t0 = time.perf_counter()
            result = gradcheck(module, x, mode=mode, seed=args.seed, executor=pool)
            print(f"== {label}  ({time.perf_counter() - t0:.2f} s)")
            print(result.table())
            print()
            if not result.passed:
                failed.append(label)
    what = "models" if args.model else "layers"
    print(f"{len(cases) - len(failed)} passed, {len(failed)} failed: {len(cases)} {what} checked in float64, "
          f"mode={mode}, in {time.perf_counter() - start:.1f} s")
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0


# -- models -------------------------------------------------------------------------------------------------
def add_model_args(p, default="densenet_bc"):
    p.add_argument("--model", default=default,
                   choices=["densenet121", "densenet161", "densenet169", "densenet201", "densenet_bc", "densenet"],
                   help=f"architecture (default: {default})")
    p.add_argument("--depth", type=int, default=None, help="depth L of densenet_bc / densenet (default 100 / 40)")
    p.add_argument("--growth-rate", type=int, default=None, help="k of densenet_bc / densenet (default 12)")


def build_model(name, depth=None, growth_rate=None, num_classes=None, **kwargs):
    """Make a model from command-line style options, with clear errors."""
    from . import model as dn
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


def cmd_summary(args):
    from .summary import format_summary
    model = build_model(args.model, args.depth, args.growth_rate, args.num_classes, in_channels=args.in_channels)
    size = args.image_size
    if size is not None and size < 1:
        raise UserError(f"--image-size must be a positive number of pixels, got {size}")
    try:
        table = format_summary(model, size)
    except ValueError as e:
        raise UserError(f"{args.model} cannot take {size}x{size} images: {e}") from None
    print(f"{args.model}: {model.extra_repr()}, num_classes={model.config['num_classes']}")
    print(table)
    return 0


def cmd_convert(args):
    import importlib.util

    from .io import convert_torch_checkpoint
    if importlib.util.find_spec("torch") is None:
        raise UserError("converting a .pth file needs PyTorch (only for this step): pip install torch")
    n = convert_torch_checkpoint(args.src, args.dst)
    print(f"wrote {n} arrays to {args.dst}")
    return 0


# -- entry point --------------------------------------------------------------------------------------------
def make_parser():
    parser = argparse.ArgumentParser(prog="numpy-densenet",
                                     description="A DenseNet in pure NumPy with verified hand-written backward passes.")
    parser.add_argument("--version", action="version", version=f"numpy_densenet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("gradcheck", help="check every layer's (or a tiny DenseNet's) backward pass")
    p.add_argument("--model", action="store_true", help="check whole tiny DenseNets instead of single layers")
    p.add_argument("--mode", choices=["full", "sampled", "directional"], default=None,
                   help="full (every coordinate; default for layers), sampled, directional (default for --model)")
    p.add_argument("--seed", type=nonneg_int, default=0)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="evaluate the probes on N local worker processes (one thread each); same results")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="evaluate the probes on a running Dask scheduler's workers, e.g. tcp://host:8786 "
                            "(needs dask[distributed])")
    p.set_defaults(func=cmd_gradcheck)

    p = sub.add_parser("summary", help="per-layer output shapes, channel growth and parameter counts")
    p.add_argument("model", choices=["densenet121", "densenet161", "densenet169", "densenet201", "densenet_bc",
                                     "densenet"])
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--growth-rate", type=int, default=None)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--image-size", type=int, default=None, help="default 224 (ImageNet stem) or 32 (CIFAR stem)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("convert", help="convert a torchvision DenseNet .pth to .npz (needs PyTorch)")
    p.add_argument("src", help="torchvision state dict (.pth)")
    p.add_argument("dst", help="output .npz")
    p.set_defaults(func=cmd_convert)

    _add_more_commands(sub)
    return parser


def _add_more_commands(sub):
    """Commands defined in other modules (training, study tools) register themselves here."""
    for module_name in ("train_cli", "study_cli"):
        try:
            module = __import__(f"numpy_densenet.{module_name}", fromlist=["register"])
        except ImportError as e:
            if e.name != f"numpy_densenet.{module_name}":
                raise
            continue
        module.register(sub)


def main(argv=None):
    from .io import WeightsFileError
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:                  # --help, --version, or a usage error already printed by argparse
        return e.code
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (UserError, WeightsFileError) as e:
        print(f"numpy-densenet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:          # output piped into e.g. `head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
