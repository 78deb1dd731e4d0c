"""``numpy-densenet summary`` and ``convert``."""
from __future__ import annotations

import importlib.util

from ..io import convert_torch_checkpoint, load_model_file
from ..study import format_summary
from ..zoo import MODEL_NAMES
from .common import UserError, build_model, depth_help


def register(sub):
    """Add the ``summary`` and ``convert`` subcommands."""
    p = sub.add_parser("summary", help="per-layer output shapes, channel growth and parameter counts",
                       description="Print a model's layers with their output shapes, the channel growth k0 + l*k "
                                   "of every dense block, parameter counts and totals.")
    p.add_argument("model", choices=MODEL_NAMES, help="architecture")
    p.add_argument("--depth", type=int, default=None,
                   help=f"depth L of densenet_bc / densenet ({depth_help(small=False)})")
    p.add_argument("--growth-rate", type=int, default=None, help="growth rate k of densenet_bc / densenet (default 12)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier outputs (default 1000 for densenet121/161/169/201, 10 otherwise)")
    p.add_argument("--in-channels", type=int, default=3, help="image channels (default 3)")
    p.add_argument("--image-size", type=int, default=None,
                   help="height = width of the input (default 224 with the ImageNet stem, 32 with the CIFAR stem)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("convert", help="convert a torchvision DenseNet .pth to .npz (needs PyTorch)",
                       description="Convert a torchvision DenseNet state dict (.pth, read with weights_only=True) "
                                   "to a self-describing .npz: the architecture inferred from the tensors' shapes, "
                                   "ImageNet preprocessing and the 1000 ImageNet class names, so that predict and "
                                   "numpy_densenet.hub.load need nothing else. PyTorch is needed for this step only.")
    p.add_argument("src", help="torchvision state dict (.pth)")
    p.add_argument("dst", help="output .npz")
    p.set_defaults(func=cmd_convert)


def cmd_summary(args):
    """Print a model's per-layer table."""
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
    """Convert a torchvision .pth to a self-describing .npz (needs PyTorch)."""
    if importlib.util.find_spec("torch") is None:
        raise UserError("converting a .pth file needs PyTorch (only for this step); the CPU build is enough: "
                        "pip install torch --index-url https://download.pytorch.org/whl/cpu")
    n = convert_torch_checkpoint(args.src, args.dst)
    model, meta = load_model_file(args.dst)
    c = model.config
    print(f"wrote {n} arrays to {args.dst}: DenseNet(growth_rate={c['growth_rate']}, block_config="
          f"{c['block_config']}, num_init_features={c['num_init_features']}, bn_size={c['bn_size']}, "
          f"stem={c['stem']!r}), {c['num_classes']} classes{' (ImageNet names)' if meta['classes'] else ''}"
          + (", ImageNet preprocessing (resize 256, center-crop 224)" if meta["preprocess"] else ""))
    if meta["preprocess"]:
        print(f"classify photos with: numpy-densenet predict --weights {args.dst} photo.jpg")
    return 0
