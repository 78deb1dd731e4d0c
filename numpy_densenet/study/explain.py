"""One small dense block, narrated step by step through its concatenation: ``numpy-densenet explain``.

The block is a real dense block in float64; every gradient printed is one its own backward computed (recorded
from outside with :func:`~numpy_densenet.study.flow.record_backward_inputs` and
:func:`~numpy_densenet.study.flow.record_backward_outputs`), and a closing check compares the sum over consumers
with the gradients the layers actually received.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import fast
from ..model import DenseBlock
from .flow import consumer_labels, feature_labels, gradient_flow, reads, record_backward_inputs, \
    record_backward_outputs

__all__ = ["explain_block"]


def _g(v):
    """A number with 3 significant digits, as in every table."""
    return format(float(v), ".2e")


@dataclass
class _Run:
    """What the narration needs from one forward and backward of the block (all NCHW)."""
    block: object
    x0: np.ndarray              # (N, k0, H, W)
    R: np.ndarray               # dL/dout, (N, k0 + L*k, H, W)
    out: np.ndarray = None
    dx0: np.ndarray = None
    received: list = None       # received[j-1]: dL/dx_j given to H_j
    report: object = None       # the FlowReport


def explain_block(num_layers=5, growth_rate=4, in_channels=8, bn_size=4, batch=2, size=4, train=True,
                  compression=0.5, seed=0, fast=False):
    """Narrate the forward and backward pass of one small dense block through its concatenation.

    The block is a real dense block in float64, the plain tier's :class:`~numpy_densenet.model.DenseBlock`
    (``Concat`` forward, a split backward) or with ``fast=True`` the fast tier's (one buffer); the loss is
    ``sum(out * R)`` for a fixed random R, so the gradient of the block output is R.

    Parameters
    ----------
    num_layers, growth_rate, in_channels : int
        L, k and k0.
    bn_size : int or None
        Bottleneck width factor (the 1x1 conv outputs bn_size*k); None for plain BN-ReLU-3x3 conv layers.
    batch, size : int
        N and H = W of the input.
    train : bool
        BatchNorm with batch statistics (True) or running statistics (False).
    compression : float
        theta, for the transition arithmetic at the end.
    seed : int
    fast : bool
        Narrate the fast tier's block instead of the plain one; the numbers agree to rounding.

    Returns
    -------
    list of str
        The lines to print.
    """
    rng = np.random.default_rng(seed)
    make = fast_tier_block if fast else DenseBlock
    block = make(num_layers, in_channels, growth_rate, bn_size, dtype=np.float64, rng=rng)
    block.train(train)
    off = block.offsets                                        # [0, k0, k0 + k, ..., k0 + L*k]
    x0 = rng.standard_normal((in_channels, batch, size, size)).transpose(1, 0, 2, 3)   # (N, k0, H, W)
    R = rng.standard_normal((off[-1], batch, size, size)).transpose(1, 0, 2, 3)     # dL/dout for sum(out * R)
    run = _Run(block, x0, R)
    lines = _introduction(block, bn_size, batch, size, train, seed, fast)
    lines += _forward(run, fast)
    lines += _backward(run, train)
    lines += _sum_over_consumers(run, train)
    lines += _arithmetic(block, bn_size, compression)
    return lines


def _introduction(block, bn_size, batch, size, train, seed, fast):
    L, k, k0 = block.num_layers, block.growth_rate, block.num_input_features
    if bn_size is None:
        h = f"BN -> ReLU -> 3x3 conv to k = {k}   (plain layer)"
    else:
        h = (f"BN -> ReLU -> 1x1 conv to bn_size*k = {bn_size * k} -> BN -> ReLU -> 3x3 conv to k = {k}   "
             f"(bottleneck)")
    return [f"A dense block of L = {L} layers, growth rate k = {k}, on an input x0 of k0 = {k0} channels",
            f"batch N = {batch}, H x W = {size} x {size}, float64, seed {seed}; BatchNorm in "
            f"{'train' if train else 'eval'} mode ({'batch' if train else 'running'} statistics)",
            f"each layer H_l: {h}",
            f"arrays are NCHW: x_i is channels offsets[i]:offsets[i+1] (axis 1) of the block output; tier: "
            f"{'fast (one channel-major buffer)' if fast else 'plain (Concat forward, split backward)'}",
            ""]


def _forward(run, fast):
    block = run.block
    L, k, k0, off = block.num_layers, block.growth_rate, block.num_input_features, block.offsets
    N, _, size, _ = run.x0.shape
    names = feature_labels(L)
    lines = ["FORWARD: x_l = H_l([x0, ..., x(l-1)]); layer l reads k0 + (l-1)*k channels and adds k"]
    if fast:
        lines += [f"  buffer = empty ({off[-1]}, {N}, {size}, {size}), channel-major: room for k0 + L*k = {k0} + "
                  f"{L}*{k} = {off[-1]} channels", f"  buffer[0:{k0}] = x0"]
    width = len(f"[0:{off[-1]}]")
    for l in range(1, L + 1):
        start, stop = off[l], off[l + 1]
        read = f"[0:{start}]".ljust(width)
        inputs = "[" + ", ".join(names[:l]) + "]"
        if fast:
            lines.append(f"  layer {l}: reads buffer{read} = {inputs}, {start} = {k0} + {l - 1}*{k} channels (a "
                         f"view, no copy); writes x{l} to buffer[{start}:{stop}]")
        else:
            lines.append(f"  layer {l}: concat{inputs} -> {start} = {k0} + {l - 1}*{k} channels, offsets "
                         f"{off[:l + 1]}; H{l} makes x{l} ({k} channels)")
    run.out = block(run.x0)                                    # (N, k0 + L*k, H, W)
    lines += [f"  out = concat[{', '.join(names)}]: k0 + L*k = {k0} + {L}*{k} = {off[-1]} channels, shape "
              f"{run.out.shape}", ""]
    return lines


def _backward(run, train):
    block = run.block
    L, k, k0, off = block.num_layers, block.growth_rate, block.num_input_features, block.offsets
    N, _, size, _ = run.x0.shape
    names = feature_labels(L)
    lines = ["BACKWARD: the gradient of a concatenation is the split of the output gradient;",
             "          a feature map's gradient is the sum over its consumers",
             f"  loss = sum(out * R) for a fixed random R, so dL/dout = R, shape {run.R.shape}",
             "  grad = split of dL/dout at the offsets; grad[x_i] collects every consumer of x_i"]
    layers = block.layers()
    with record_backward_inputs(layers) as received, record_backward_outputs(layers) as sent:
        run.dx0 = block.backward(run.R)                        # (N, k0, H, W)
    run.received = received                                    # received[j-1]: dL/dx_j given to H_j
    run.report = gradient_flow(block, run.R, sent, "the block", mode="train" if train else "eval")
    for j in range(L, 0, -1):
        start, stop = off[j], off[j + 1]
        consumers = [f"H{m}" for m in range(j + 1, L + 1)] + ["out"]
        lines.append(f"  layer {j}: dL/dx{j} = grad[:, {start}:{stop}] is complete (consumers "
                     f"{', '.join(consumers)}), norm {_g(np.linalg.norm(received[j - 1]))}")
        read = names[0] if j == 1 else f"{names[0]}..{names[j - 1]}"
        lines.append(f"           backward through H{j}: ({N}, {k}, {size}, {size}) -> dL/d[{read}], "
                     f"shape {sent[j - 1].shape}, split at offsets {off[:j + 1]}:")
        for i in range(j):
            lines.append(f"             {names[i]} <- channels [{off[i]}:{off[i + 1]}]".ljust(38)
                         + f"norm {_g(run.report.norms[i, j - 1])}")
        lines.append(f"           grad[x0..x{j - 1}] += those pieces")
    lines += [f"  dL/dx0 = grad[:, 0:{k0}] (consumers {', '.join(consumer_labels(L))}), "
              f"norm {_g(np.linalg.norm(run.dx0))}: the block's input gradient, returned", ""]
    return lines


def _sum_over_consumers(run, train):
    block, report = run.block, run.report
    L, k, k0 = block.num_layers, block.growth_rate, block.num_input_features
    names = feature_labels(L)
    lines = ["SUM OVER CONSUMERS: dL/dx_i = out[x_i's channels] + what each later layer sent to them (norms)"]
    actual = [run.dx0] + run.received                          # the gradients the block really used
    worst = 0.0
    for i in range(L + 1):
        terms = " + ".join(f"{label} {_g(report.norms[i, c])}" for c, label in enumerate(consumer_labels(L))
                           if reads(i, c))
        lines.append(f"  dL/d{names[i]} = {terms}")
        worst = max(worst, float(np.abs(report.gradient(i) - actual[i]).max()))
    lines += [f"  largest |sum over consumers - gradient the block used| over every x_i: {worst:.1e}",
              "  (each row's total norm is at most the sum of its terms' norms: the terms point in different "
              "directions)"]
    if train:
        # BatchNorm's train-mode backward removes the per-channel mean of the gradient, and H_j starts with BN.
        sums = max(float(np.abs(report.parts[i][c].sum(axis=(0, 2, 3))).max())
                   for c in range(L) for i in range(c + 1))
        lines += ["  train mode: what a layer sends back has zero sum over (N, H, W) in every channel (its first BN",
                  f"  removes the mean): largest |sum| {sums:.1e}; the channel sums of dL/dx_i come from out alone"]
    lines += ["", report.table(), "", report.table(normalised=True),
              "  normalised per channel: each norm divided by sqrt(channels of x_i), "
              f"sqrt({k0}) for x0 and sqrt({k}) for the others", ""]
    return lines


def _arithmetic(block, bn_size, compression):
    L, k, off = block.num_layers, block.growth_rate, block.offsets
    lines = ["ARITHMETIC: weights of each layer's convolutions (no bias)"
             + (", with and without the bottleneck" if bn_size is not None else "")]
    for l in range(1, L + 1):
        c_in = off[l]
        plain = 9 * c_in * k
        if bn_size is None:
            lines.append(f"  layer {l}: 3x3 conv {c_in} -> {k}: 9*{c_in}*{k} = {plain}")
        else:
            b = bn_size * k
            lines.append(f"  layer {l}: 1x1 conv {c_in} -> {b}: {c_in}*{b} = {c_in * b}, 3x3 conv {b} -> {k}: "
                         f"9*{b}*{k} = {9 * b * k}; total {c_in * b + 9 * b * k} (a plain 3x3 conv {c_in} -> {k} "
                         f"would have {plain})")
    if bn_size is not None and bn_size < 9:
        # C_in*b*k + 9*b*k*k < 9*C_in*k  <=>  C_in > 9*b*k / (9 - b)
        lines.append(f"  the bottleneck costs C_in*{bn_size}k + 9*{bn_size}k*k against 9*C_in*k for a plain layer: "
                     f"it is cheaper once C_in > 9*{bn_size}*{k}/(9 - {bn_size}) = "
                     f"{9 * bn_size * k / (9 - bn_size):.1f} channels")
    elif bn_size is not None:
        lines.append(f"  with bn_size = {bn_size} >= 9 the bottleneck is never cheaper than a plain 3x3 conv")
    counted = sum(layer.conv1.weight.size + (layer.conv2.weight.size if layer.bottleneck else 0)
                  for layer in block.layers())
    lines.append(f"  conv weights in the block: {counted}")
    theta_out = int(np.floor(compression * off[-1]))
    lines.append(f"  a transition with compression theta = {compression} maps the {off[-1]} output channels to "
                 f"floor({compression}*{off[-1]}) = {theta_out} (1x1 conv: {off[-1]}*{theta_out} = "
                 f"{off[-1] * theta_out} weights), then halves H and W")
    return lines


def fast_tier_block(num_layers, in_channels, growth_rate, bn_size, dtype, rng):
    """The fast tier's dense block, built like the plain one."""
    return fast.DenseBlock(num_layers, in_channels, growth_rate, bn_size, dtype=dtype, rng=rng)
