"""The study commands of ``numpy-densenet``: ``inspect`` (gradient flow and feature reuse of a model on a batch)
and ``explain`` (one small dense block's forward and backward pass, step by step).

:func:`register` is called by :func:`numpy_densenet.cli.main.make_parser`.
"""
from __future__ import annotations

import os

import numpy as np

from ..data import DatasetError, channel_stats, load_dataset, normalize
from ..io import load_model_file, load_npz, load_weights, save_npz
from ..study import (block_gradient_flow, explain_block, feature_reuse, have_matplotlib, heatmap_range,
                     save_heatmap)
from .common import UserError, add_model_args, build_model, nonneg_int, positive_int

PLOT_NOTE = 'no PNG heatmaps: matplotlib is not installed; pip install "numpy_densenet[plot]" to get them'


def register(subparsers):
    """Add the ``inspect`` and ``explain`` subcommands to the ``numpy-densenet`` parser."""
    p = subparsers.add_parser(
        "inspect", help="gradient-flow and feature-reuse matrices of every dense block, on one batch",
        description="Run one forward and backward pass of a model (random, or --weights FILE) on a batch and "
                    "print, per dense block, the gradient each feature map x_i receives through each consumer "
                    "(later layer H_j or the block output) and the mean |weight| each layer puts on each x_i.")
    add_model_args(p)      # as train: the default depth is 16 on the digits, 100 (densenet_bc) / 40 otherwise
    p.add_argument("--weights", metavar="FILE", default=None,
                   help="a .npz of weights: best.npz from train (which also describes the model), or a file "
                        "from convert / save_weights matching --model/--depth/--growth-rate")
    p.add_argument("--dataset", default="digits", help="data set of the batch (default: the bundled digits)")
    p.add_argument("--data-dir", default=None, help="folder (or .npz file) of a data set that is not bundled")
    p.add_argument("--split", choices=["train", "test"], default="train", help="where the batch comes from")
    p.add_argument("--batch-size", type=positive_int, default=64, help="the first N images of the split (default 64)")
    p.add_argument("--eval", action="store_true",
                   help="BatchNorm with running statistics (default: batch statistics, as in a training step)")
    p.add_argument("--block", type=int, default=None, metavar="B", help="only dense block B (1-based)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="initialisation seed of a random model (default 0)")
    p.add_argument("--tier", choices=["fast", "plain"], default="fast",
                   help="run the fast tier (default) or the plain one (Concat forward, split backward); the "
                        "tables agree to rounding")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write PNG heatmaps (with matplotlib) and the matrices (matrices.npz) to DIR")
    p.add_argument("--same-scale", action="store_true",
                   help="with --out: draw every block's heatmap on one colour scale (one for the gradient flow, one "
                        "for the feature reuse), so that colours compare across blocks")
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser(
        "explain", help="one small dense block's forward and backward pass through the concatenation",
        description="Build one dense block (float64) and print every step of its forward and backward pass: "
                    "shapes, the channel slice each layer reads and writes, how the gradient is split and summed.")
    p.add_argument("--layers", type=int, default=5, metavar="L", help="dense layers in the block (default 5)")
    p.add_argument("--growth-rate", type=int, default=4, metavar="K", help="k, channels per layer (default 4)")
    p.add_argument("--in-channels", "--k0", dest="in_channels", type=int, default=8, metavar="K0",
                   help="k0, channels of the block input (default 8)")
    p.add_argument("--bn-size", type=int, default=4, help="bottleneck width factor: 1x1 conv to bn_size*k (default 4)")
    p.add_argument("--plain", action="store_true", help="plain layers BN-ReLU-3x3 conv, no bottleneck")
    p.add_argument("--batch", type=int, default=2, metavar="N", help="batch size (default 2)")
    p.add_argument("--size", type=int, default=4, metavar="HW", help="height = width of the input (default 4)")
    p.add_argument("--compression", type=float, default=0.5, help="theta of the transition arithmetic (default 0.5)")
    p.add_argument("--eval", action="store_true", help="BatchNorm with running statistics")
    p.add_argument("--tier", choices=["plain", "fast"], default="plain",
                   help="the plain tier's block (default: Concat forward, split backward) or the fast tier's (one "
                        "channel-major buffer whose slices are the concatenations); the numbers agree")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the weights, input and R (default 0)")
    p.set_defaults(func=cmd_explain)


# -- explain -------------------------------------------------------------------------------------------------
def cmd_explain(args):
    """Print one small dense block's forward and backward pass, step by step."""
    for name, value, low in (("--layers", args.layers, 1), ("--growth-rate", args.growth_rate, 1),
                             ("--in-channels", args.in_channels, 1), ("--bn-size", args.bn_size, 1),
                             ("--batch", args.batch, 1), ("--size", args.size, 1)):
        if value < low:
            raise UserError(f"{name} must be at least {low}, got {value}")
    if not 0 < args.compression <= 1:
        raise UserError(f"--compression must be in (0, 1], got {args.compression}")
    if not args.eval and args.batch * args.size * args.size < 2:
        raise UserError("BatchNorm in train mode needs more than one value per channel: raise --batch or "
                        "--size, or use --eval")
    lines = explain_block(args.layers, args.growth_rate, args.in_channels, None if args.plain else args.bn_size,
                          args.batch, args.size, train=not args.eval, compression=args.compression, seed=args.seed,
                          fast=args.tier == "fast")
    print("\n".join(lines))
    return 0


# -- inspect -------------------------------------------------------------------------------------------------
def _load_dataset(args):
    try:
        return load_dataset(args.dataset, args.data_dir)
    except DatasetError as e:
        raise UserError(str(e)) from None


def _batch(args, dataset, mean=None, std=None):
    """The first ``--batch-size`` images of the split, normalised per channel: (x, y)."""
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {args.batch_size}")
    x = dataset.x_train if args.split == "train" else dataset.x_test
    y = dataset.y_train if args.split == "train" else dataset.y_test
    if mean is None or std is None:
        mean, std = channel_stats(dataset.x_train)                  # training-set statistics, as train uses
    n = min(args.batch_size, x.shape[0])
    return normalize(x[:n], np.asarray(mean), np.asarray(std)), y[:n]


def _make_model(args, dataset):
    """A model from the options, or from a weights file's own description: (model, description, mean, std).

    ``mean`` and ``std`` are the normalisation statistics stored in a file written by ``train`` (else None).
    """
    if args.weights is not None and "_model_config" in load_npz(args.weights):   # written by `train`
        model, meta = load_model_file(args.weights, fast=args.tier == "fast")   # best.npz or checkpoint.npz
        return (model, f"DenseNet: {model.extra_repr()} (weights {args.weights}, model from the file)",
                meta["mean"], meta["std"])
    model = build_model(args.model, args.depth, args.growth_rate, dataset.num_classes, dataset=dataset.name,
                        in_channels=dataset.in_channels, seed=args.seed, fast=args.tier == "fast")
    if args.weights is not None:
        load_weights(model, args.weights)
        return model, f"{args.model}: {model.extra_repr()} (weights {args.weights})", None, None
    return model, f"{args.model}: {model.extra_repr()} (random initialisation, seed {args.seed})", None, None


def _block_header(model, index, name, block):
    """One line of channel arithmetic: where k0 comes from, and k0 + L*k."""
    k0, L, k = block.num_input_features, block.num_layers, block.growth_rate
    if index == 0:
        source = "from the stem"
    else:
        previous = model.blocks()[index - 1].num_output_features
        theta = model.config["compression"]
        source = f"from transition{index}: floor({theta:g}*{previous}) = {k0}"
    return f"{name}: k0 = {k0} ({source}), L = {L}, k = {k} -> k0 + L*k = {k0} + {L}*{k} = {k0 + L * k} channels"


def cmd_inspect(args):
    """Gradient-flow and feature-reuse matrices of every dense block on one batch; matrices and heatmaps with
    --out."""
    dataset = _load_dataset(args)
    model, description, mean, std = _make_model(args, dataset)
    if dataset.in_channels != model.in_channels:        # checked before normalising with the file's statistics
        raise UserError(f"the model takes {model.in_channels}-channel images, {dataset.name} has "
                        f"{dataset.in_channels}; give the data set it was trained on with --dataset / --data-dir")
    x, y = _batch(args, dataset, mean, std)
    if y.max() >= model.config["num_classes"]:
        raise UserError(f"the model has {model.config['num_classes']} classes, {dataset.name} has "
                        f"{dataset.num_classes}")
    blocks = model.blocks()
    if args.block is not None and not 1 <= args.block <= len(blocks):
        raise UserError(f"--block must be between 1 and {len(blocks)}, got {args.block}")
    try:
        flows = block_gradient_flow(model, x.astype(model.dtype), y, train=not args.eval)
    except ValueError as e:
        raise UserError(f"the model cannot run on the {x.shape[2]}x{x.shape[3]} images of {dataset.name}: {e}") \
            from None
    reuse = feature_reuse(model)
    print(description)
    print(f"batch: the first {x.shape[0]} images of {dataset.name} ({args.split} split), shape {x.shape}; "
          f"BatchNorm in {flows[0].mode} mode; loss {flows[0].loss:.4f}")
    print("rows: feature map x_i (channels); columns: consumer, H_j = dense layer j, out = the block output")
    print("per channel = norm / sqrt(channels of x_i); total = norm of the sum over consumers, dL/dx_i")
    chosen = range(len(blocks)) if args.block is None else [args.block - 1]
    for b in chosen:
        print()
        print(_block_header(model, b, flows[b].name, blocks[b]))
        print(flows[b].table())
        print(flows[b].table(normalised=True))
        print(reuse[b].table())
    print()
    if args.out is None:
        print("(add --out DIR to write the matrices and PNG heatmaps)")
        return 0
    _write_outputs(args, flows, reuse, chosen)
    return 0


def _write_outputs(args, flows, reuse, chosen):
    """matrices.npz, and the PNG heatmaps when matplotlib is installed, in --out."""
    os.makedirs(args.out, exist_ok=True)
    arrays = {}
    for b in chosen:
        name = flows[b].name
        arrays[f"gradient_flow_{name}"] = flows[b].norms
        arrays[f"gradient_flow_per_channel_{name}"] = flows[b].normalised
        arrays[f"feature_reuse_{name}"] = reuse[b].values
    matrices = os.path.join(args.out, "matrices.npz")
    save_npz(matrices, arrays)                                       # atomic, no pickle
    print(f"wrote {matrices} ({len(arrays)} matrices; NaN where a consumer does not read x_i)")
    if not have_matplotlib():
        print(PLOT_NOTE)
        return
    written = []
    flow_range = heatmap_range([flows[b].matrix(normalised=True) for b in chosen], log=True) if args.same_scale \
        else (None, None)
    reuse_range = heatmap_range([reuse[b] for b in chosen]) if args.same_scale else (None, None)
    for b in chosen:
        name = flows[b].name
        written.append(save_heatmap(flows[b].matrix(normalised=True),
                                    os.path.join(args.out, f"gradient_flow_{name}.png"), log=True,
                                    vmin=flow_range[0], vmax=flow_range[1]))
        written.append(save_heatmap(reuse[b], os.path.join(args.out, f"feature_reuse_{name}.png"),
                                    vmin=reuse_range[0], vmax=reuse_range[1]))
    print(f"wrote {len(written)} PNG heatmaps to {args.out}: " + ", ".join(os.path.basename(p) for p in written))
