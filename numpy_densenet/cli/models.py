"""``numpy-densenet summary`` and ``convert``."""
from __future__ import annotations

from .common import UserError, build_model


def register(sub):
    """Add the ``summary`` and ``convert`` subcommands."""
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


def cmd_summary(args):
    from ..summary import format_summary
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

    from ..io import convert_torch_checkpoint
    if importlib.util.find_spec("torch") is None:
        raise UserError("converting a .pth file needs PyTorch (only for this step): pip install torch")
    n = convert_torch_checkpoint(args.src, args.dst)
    print(f"wrote {n} arrays to {args.dst}")
    return 0
