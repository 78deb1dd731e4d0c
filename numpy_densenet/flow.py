"""Backpropagation through concatenation: gradient-flow matrices and feature-reuse heatmaps of dense blocks.

Notation (one dense block, L layers, growth rate k, input channels k0)::

    x_0            the block input, k0 channels
    x_l = H_l([x_0, x_1, ..., x_(l-1)])      l = 1..L, k new channels each
    out = [x_0, x_1, ..., x_L]               k0 + L*k channels

Feature map x_i is *read* by every later layer H_j (j = i+1..L) and by whatever follows the block (the
transition, or the classifier after the last block); we call these its **consumers** and name the last one
``out``. The backward of a concatenation is a split, so each consumer j hands x_i the slice of its input
gradient at x_i's channels, and x_i's gradient is the sum over its consumers::

    dL/dx_i = dL/dout[x_i's channels] + sum over j = i+1..L of  dL/d(input of H_j)[x_i's channels]

Two (L+1) x (L+1) matrices per block. Row i is feature map x_i (i = 0..L); column c is consumer H_(c+1) for
c = 0..L-1 and ``out`` for c = L; an entry is NaN (printed ``-``) where the consumer does not read the feature
map (H_j with j <= i, i.e. c < i):

* :func:`gradient_flow` / :func:`block_gradient_flow`: ``G[i, c]`` = the norm of the gradient x_i receives
  through consumer c (absolute, and normalised per channel: divided by sqrt(channels of x_i));
* :func:`feature_reuse`: ``R[i, c]`` = the mean absolute weight of consumer c's first convolution over the input
  channels that belong to x_i, the DenseNet paper's Figure 5 (Huang et al., 2017).

Every array here is NCHW, in both tiers: feature map x_i is channels ``offsets[i]:offsets[i+1]`` (axis 1) of the
block output, with ``block.offsets = [0, k0, k0 + k, ..., k0 + L*k]``. The plain block
(:class:`numpy_densenet.model.DenseBlock`) and the fast one (:class:`numpy_densenet.fast.DenseBlock`) record
the same ``flow``, so every tool here works on ``DenseNet(..., fast=False)`` and ``fast=True`` alike.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from . import fast
from .model import DenseBlock as PlainDenseBlock, DenseNet, Transition as PlainTransition
from .nn import CrossEntropyLoss
from .nn.module import restore_buffers

DenseBlock = (PlainDenseBlock, fast.DenseBlock)          # isinstance checks accept either tier
Transition = (PlainTransition, fast.Transition)

__all__ = ["BlockMatrix", "FlowReport", "gradient_flow", "block_gradient_flow", "block_feature_reuse",
           "feature_reuse", "record_backward_inputs", "save_heatmap", "explain_block"]


# ----------------------------------------------------------------------------------------------------------
# A (feature map x consumer) matrix and its text table
# ----------------------------------------------------------------------------------------------------------
def feature_labels(num_layers):
    """Row labels: ``["x0", "x1", ..., "xL"]``."""
    return [f"x{i}" for i in range(num_layers + 1)]


def consumer_labels(num_layers):
    """Column labels: ``["H1", ..., "HL", "out"]`` (H_j = dense layer j, out = the block output)."""
    return [f"H{j}" for j in range(1, num_layers + 1)] + ["out"]


def reads(i, c):
    """Whether consumer column ``c`` (0-based: H_(c+1), or out for c = L) reads feature map x_i: ``c >= i``."""
    return c >= i


def format_table(values, channels, fmt, extra=None):
    """An aligned text table of an (L+1, L+1) matrix; NaN entries (consumer does not read x_i) print as ``-``.

    Parameters
    ----------
    values : ndarray, shape (L+1, L+1)
    channels : sequence of int, length L+1
        Channels of x_0..x_L, shown next to the row labels.
    fmt : str
        Format spec of one number, e.g. ``".2e"``.
    extra : (str, ndarray of shape (L+1,)), optional
        One more column after a ``|`` separator, e.g. ``("total", norms)``.
    """
    L = values.shape[0] - 1
    rows = [f"{name} ({c})" for name, c in zip(feature_labels(L), channels)]
    head = [""] + consumer_labels(L)
    body = [[r] + ["-" if np.isnan(v) else format(v, fmt) for v in row] for r, row in zip(rows, values)]
    if extra is not None:
        head += ["|", extra[0]]
        for line, v in zip(body, extra[1]):
            line += ["|", format(v, fmt)]
    widths = [max(len(line[col]) for line in [head] + body) for col in range(len(head))]
    out = []
    for line in [head] + body:
        cells = [line[0].ljust(widths[0])] + [cell.rjust(w) for cell, w in zip(line[1:], widths[1:])]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


@dataclass
class BlockMatrix:
    """One number per (feature map x_i, consumer) pair of a dense block.

    Attributes
    ----------
    name : str
        The block's name, e.g. ``"denseblock1"``.
    values : ndarray of float64, shape (L+1, L+1)
        Row i = feature map x_i (i = 0..L); column c = consumer H_(c+1) for c < L, the block output for c = L.
        NaN where the consumer does not read x_i (c < i).
    channels : tuple of int, length L+1
        Channels of x_0..x_L: (k0, k, ..., k).
    what : str
        One line saying what the numbers are.
    fmt : str
        How :meth:`table` formats a number.
    """

    name: str
    values: np.ndarray
    channels: tuple
    what: str = ""
    fmt: str = ".2e"

    @property
    def num_layers(self):
        return len(self.channels) - 1

    def table(self):
        """The matrix as aligned text, with a title line."""
        return f"{self.name}: {self.what}\n" + format_table(self.values, self.channels, self.fmt)


# ----------------------------------------------------------------------------------------------------------
# Gradient flow
# ----------------------------------------------------------------------------------------------------------
@dataclass
class FlowReport:
    """The gradient of every feature map of one dense block, split by consumer.

    Built by :func:`gradient_flow` after a backward pass with ``block.record_flow = True``.

    Attributes
    ----------
    name : str
    offsets : list of int
        ``block.offsets``: x_i occupies channels ``offsets[i]:offsets[i+1]``.
    parts : list of list of (ndarray or None)
        ``parts[i][c]``, shape (C_i, N, H, W): the gradient x_i receives through consumer column c
        (H_(c+1) for c < L, the block output for c = L); None where that consumer does not read x_i.
        Views into the recorded arrays, not copies.
    loss : float or None
        The loss of the forward pass, if known.
    mode : str
        ``"train"`` or ``"eval"`` (BatchNorm with batch or running statistics), if known.
    """

    name: str
    offsets: list
    parts: list
    loss: float | None = None
    mode: str = ""
    _norms: np.ndarray | None = field(default=None, repr=False)

    @property
    def num_layers(self):
        return len(self.offsets) - 2

    @property
    def channels(self):
        """Channels of x_0..x_L."""
        return tuple(b - a for a, b in zip(self.offsets[:-1], self.offsets[1:]))

    def gradient(self, i):
        """dL/dx_i, shape (C_i, N, H, W): the sum of what every consumer sends to x_i (in float64)."""
        present = [p for p in self.parts[i] if p is not None]
        total = present[0].astype(np.float64)
        for p in present[1:]:
            total += p
        return total

    @property
    def norms(self):
        """G, shape (L+1, L+1): ``G[i, c]`` = ||parts[i][c]|| (Frobenius norm over C_i, N, H, W); NaN if absent."""
        if self._norms is None:
            L = self.num_layers
            G = np.full((L + 1, L + 1), np.nan)
            for i in range(L + 1):
                for c in range(L + 1):
                    if self.parts[i][c] is not None:
                        G[i, c] = np.linalg.norm(self.parts[i][c].astype(np.float64).ravel())
            self._norms = G
        return self._norms

    @property
    def normalised(self):
        """G divided row by row by sqrt(C_i): the root mean square over x_i's channels of a channel's norm.

        It makes x_0 (k0 channels) comparable with the layers' outputs (k channels each).
        """
        return self.norms / np.sqrt(np.asarray(self.channels, dtype=np.float64))[:, None]

    @property
    def total_norms(self):
        """||dL/dx_i|| for i = 0..L (the norm of the sum, at most the sum of the row's norms)."""
        return np.array([np.linalg.norm(self.gradient(i).ravel()) for i in range(self.num_layers + 1)])

    def matrix(self, normalised=False):
        """G (or its normalised version) as a :class:`BlockMatrix`."""
        if normalised:
            return BlockMatrix(self.name, self.normalised, self.channels,
                               "gradient flow per channel, ||dL/dx_i via consumer|| / sqrt(channels of x_i)")
        return BlockMatrix(self.name, self.norms, self.channels, "gradient flow, ||dL/dx_i via consumer||")

    def table(self, normalised=False):
        """Aligned text: rows x_i (channels), columns H_1..H_L and out, then the total ||dL/dx_i||."""
        m = self.matrix(normalised)
        total = self.total_norms
        if normalised:
            total = total / np.sqrt(np.asarray(self.channels, dtype=np.float64))
        return (f"{self.name}: {m.what}\n"
                + format_table(m.values, m.channels, m.fmt, extra=("total", total)))


def gradient_flow(block, dout, name="", loss=None, mode=""):
    """Split the gradient of every feature map of ``block`` by consumer.

    Call it after a backward pass through ``block`` with ``block.record_flow = True``.

    Parameters
    ----------
    block : DenseBlock
        ``block.flow[j]``, shape (N, offsets[j+1], H, W), is the gradient layer H_(j+1) sent to the feature maps
        it read, [x_0, ..., x_j].
    dout : ndarray, shape (N, k0 + L*k, H, W)
        The gradient of the block output that the backward pass started from.
    name, loss, mode :
        Stored in the report.

    Returns
    -------
    FlowReport
        ``parts[i][c]`` = ``block.flow[c][:, offsets[i]:offsets[i+1]]`` for a layer consumer (c < L, c >= i) and
        ``dout[:, offsets[i]:offsets[i+1]]`` for the block output (c = L).
    """
    if not isinstance(block, DenseBlock):
        raise TypeError(f"gradient_flow: expected a DenseBlock, got {type(block).__name__}")
    flow = block.flow
    if flow is None or len(flow) != block.num_layers or any(f is None for f in flow):
        raise ValueError("gradient_flow: the block has no recorded flow; set block.record_flow = True and run "
                         "a backward pass first")
    off, L = block.offsets, block.num_layers
    dout = np.asarray(dout)
    N, _, H, W = flow[0].shape
    expected = (N, off[-1], H, W)
    if dout.shape != expected:
        raise ValueError(f"gradient_flow: dout has shape {dout.shape}, expected the block output's {expected} "
                         "(NCHW)")
    parts = []
    for i in range(L + 1):                                     # feature map x_i: channels off[i]:off[i+1]
        row = []
        for c in range(L):                                     # consumer H_(c+1) read off[c+1] channels
            row.append(flow[c][:, off[i]:off[i + 1]] if reads(i, c) else None)  # (N, C_i, H, W)
        row.append(dout[:, off[i]:off[i + 1]])                 # consumer "out"
        parts.append(row)
    return FlowReport(name, list(off), parts, loss, mode)


@contextlib.contextmanager
def record_backward_inputs(modules):
    """Record the gradient each module's backward is called with, while the context is active.

    The study tools use it to catch the gradient of a dense block's output (the start of its backward pass)
    and, in tests and :func:`explain_block`, the gradient each dense layer receives for its new channels.
    A fast-tier module is called channel-major (``backward_cnhw``), a plain one through ``backward``; either
    way the gradient is recorded NCHW. The method is wrapped on the *instances* only and restored on exit.

    Yields
    ------
    list
        ``recorded[m]`` is the last gradient given to ``modules[m]``'s backward, NCHW (None until called).
    """
    recorded = [None] * len(modules)
    names = []
    for m, module in enumerate(modules):
        name = "backward_cnhw" if hasattr(module, "backward_cnhw") else "backward"
        names.append(name)
        original = getattr(module, name)                        # the bound method of the class

        def wrapper(dout, *args, _m=m, _original=original, _cnhw=name == "backward_cnhw", **kwargs):
            copy = np.array(dout, copy=True)                    # a copy: immune to later in-place updates
            recorded[_m] = fast.swap01(copy) if _cnhw else copy
            return _original(dout, *args, **kwargs)
        object.__setattr__(module, name, wrapper)
    try:
        yield recorded
    finally:
        for module, name in zip(modules, names):
            if name in module.__dict__:
                object.__delattr__(module, name)


@contextlib.contextmanager
def preserved_state(model):
    """Leave ``model`` exactly as it was: mode, BatchNorm statistics, parameter gradients, dropout generators."""
    training = [(m, m.training) for m in model.modules()]
    buffers = {name: np.array(buf, copy=True) for name, buf in model.named_buffers()}
    grads = [(p.grad, p.grad.copy()) for p in model.parameters()]
    generators = [(m.generator, m.generator.bit_generator.state) for m in model.modules()
                  if isinstance(getattr(m, "generator", None), np.random.Generator)]
    try:
        yield model
    finally:
        for m, mode in training:
            object.__setattr__(m, "training", mode)
        restore_buffers(model, buffers)                         # BatchNorm running statistics and counters
        for grad, saved in grads:
            grad[...] = saved
        for gen, state in generators:
            gen.bit_generator.state = state


def named_blocks(model):
    """``[(name, DenseBlock), ...]`` in order, e.g. ``("denseblock1", block)``."""
    return [(name, m) for name, m in model.features.named_children() if isinstance(m, DenseBlock)]


def block_gradient_flow(model, x, y, train=True, criterion=None):
    """Run forward, loss and backward on one batch and split every dense block's gradients by consumer.

    Parameters
    ----------
    model : DenseNet
    x : ndarray, shape (N, C, H, W), the model's dtype
    y : ndarray of int, shape (N,)
    train : bool
        BatchNorm with batch statistics (True, as in a training step) or running statistics (False).
    criterion : Module, optional
        Defaults to ``CrossEntropyLoss()``.

    Returns
    -------
    list of FlowReport
        One per dense block, in order.

    Notes
    -----
    The model is left as it was: its mode, BatchNorm running statistics, parameter gradients and dropout
    generators are restored, and recording is switched off again.
    """
    if not isinstance(model, DenseNet):
        raise TypeError(f"block_gradient_flow: expected a DenseNet, got {type(model).__name__}")
    criterion = criterion if criterion is not None else CrossEntropyLoss()
    blocks = named_blocks(model)
    flags = [block.record_flow for _, block in blocks]
    try:
        with preserved_state(model), record_backward_inputs([b for _, b in blocks]) as douts:
            model.train(train)
            for _, block in blocks:
                block.record_flow = True
            loss = float(criterion(model.forward(x), y))
            model.backward(criterion.backward())
            mode = "train" if train else "eval"
            return [gradient_flow(block, dout, name, loss, mode) for (name, block), dout in zip(blocks, douts)]
    finally:
        for (_, block), flag in zip(blocks, flags):
            block.record_flow = flag


# ----------------------------------------------------------------------------------------------------------
# Feature reuse
# ----------------------------------------------------------------------------------------------------------
def block_feature_reuse(block, out_weight=None, name="", out_name="out"):
    """Mean absolute weight of each consumer's first convolution over the channels of each feature map.

    Parameters
    ----------
    block : DenseBlock
        Layer H_j's first convolution, ``conv1``, reads [x_0, ..., x_(j-1)]: its weight has shape
        (C_out, offsets[j], kh, kw): 1x1 with C_out = bn_size*k for bottleneck layers, 3x3 with C_out = k for
        plain layers.
    out_weight : ndarray, shape (C_out, k0 + L*k, ...), optional
        The weight of whatever reads the block output (the transition's 1x1 conv, or the classifier's
        (num_classes, C) matrix) for the ``out`` column; left NaN if None.
    name, out_name : str
        The block's name, and what ``out`` is (shown in the title).

    Returns
    -------
    BlockMatrix
        ``R[i, c]`` = mean |w| over output channels, kernel positions and the input channels of x_i, for the
        consumer in column c (H_(c+1), or out); NaN where it does not read x_i.
    """
    off, L = block.offsets, block.num_layers
    R = np.full((L + 1, L + 1), np.nan)
    for c, layer in enumerate(block.layers()):
        w = np.abs(layer.conv1.weight.data)                       # (C_out, off[c+1], kh, kw)
        for i in range(c + 1):                                    # H_(c+1) reads x_0..x_c
            R[i, c] = w[:, off[i]:off[i + 1]].mean(dtype=np.float64)
    if out_weight is not None:
        w = np.abs(np.asarray(out_weight))
        w = w.reshape(w.shape[0], w.shape[1], -1)                 # (C_out, k0 + L*k, kernel positions)
        if w.shape[1] != off[-1]:
            raise ValueError(f"block_feature_reuse: out_weight reads {w.shape[1]} channels, the block outputs "
                             f"{off[-1]}")
        for i in range(L + 1):
            R[i, L] = w[:, off[i]:off[i + 1]].mean(dtype=np.float64)
    channels = tuple(b - a for a, b in zip(off[:-1], off[1:]))
    return BlockMatrix(name, R, channels, f"feature reuse, mean |w| of the consumer's first conv over x_i's "
                                          f"channels (out = {out_name})", fmt=".4f")


def feature_reuse(model):
    """:func:`block_feature_reuse` for every dense block of ``model``, as in Figure 5 of the DenseNet paper.

    The ``out`` column is the 1x1 convolution of the transition after the block, or the classifier
    (``Linear``, num_classes x C) after the last block.

    Returns
    -------
    list of BlockMatrix
        One per dense block, each (L+1, L+1).
    """
    stages = list(model.features.named_children())
    result = []
    for index, (name, stage) in enumerate(stages):
        if not isinstance(stage, DenseBlock):
            continue
        following = [(n, s) for n, s in stages[index + 1:] if isinstance(s, (DenseBlock, Transition))]
        if following and isinstance(following[0][1], Transition):
            out_name, weight = following[0][0] + " conv", following[0][1].conv.weight.data
        else:
            out_name, weight = "classifier", model.classifier.weight.data  # (num_classes, C)
        result.append(block_feature_reuse(stage, weight, name, out_name))
    return result


# ----------------------------------------------------------------------------------------------------------
# Heatmaps (matplotlib, optional)
# ----------------------------------------------------------------------------------------------------------
def heatmap_range(matrices, log=False):
    """(vmin, vmax) over every finite value of several :class:`BlockMatrix` (log10 of them with ``log``): pass it
    to :func:`save_heatmap` to draw several blocks on one colour scale, so that their colours compare."""
    values = np.concatenate([np.asarray(m.values, dtype=np.float64).ravel() for m in matrices])
    values = values[np.isfinite(values) & ((values > 0) if log else True)]
    if values.size == 0:
        return None, None
    values = np.log10(values) if log else values
    return float(values.min()), float(values.max())


def save_heatmap(matrix, path, log=False, title=None, vmin=None, vmax=None, numbers=True):
    """Draw a :class:`BlockMatrix` as a heatmap PNG: x = consumer, y = feature map (as in the paper's Fig. 5).

    Needs matplotlib (``pip install "numpy_densenet[plot]"``); raises ImportError without it.

    Parameters
    ----------
    matrix : BlockMatrix
    path : str or path-like
    log : bool
        Colour by log10 of the values (gradient norms span orders of magnitude).
    title : str, optional
        Defaults to the block's name and what the numbers are, on two lines.
    vmin, vmax : float, optional
        The ends of the colour scale (in log10 units with ``log``); by default this matrix's own range. Give the
        same to several blocks (see :func:`heatmap_range`) to compare them by colour.
    numbers : bool
        Write each cell's value in it (3 significant digits).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    L = matrix.num_layers
    raw = np.asarray(matrix.values, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.ma.masked_invalid(np.log10(raw) if log else raw)
    cell = 0.62 if numbers else 0.4
    width, height = 3.2 + cell * (L + 1), 2.2 + cell * (L + 1)
    fig, ax = plt.subplots(figsize=(max(width, 5.5), max(height, 4.2)))
    image = ax.imshow(values, cmap="viridis", origin="upper", vmin=vmin, vmax=vmax)
    ticks = max(7, min(10, int(110 / (L + 1))))
    ax.set_xticks(range(L + 1), consumer_labels(L), fontsize=ticks)
    ax.set_yticks(range(L + 1), [f"{r} ({c})" for r, c in zip(feature_labels(L), matrix.channels)], fontsize=ticks)
    ax.set_xlabel("consumer (H_j = dense layer j, out = block output)", fontsize=10)
    ax.set_ylabel("feature map x_i (channels)", fontsize=10)
    if title is None:
        what = matrix.what if len(matrix.what) <= 70 else matrix.what[:matrix.what.rfind(" ", 0, 70)] + "\n" + \
            matrix.what[matrix.what.rfind(" ", 0, 70) + 1:]
        ax.set_title(f"{matrix.name}\n{what}", fontsize=10)
    else:
        ax.set_title(title, fontsize=10)
    if numbers:
        lo, hi = image.get_clim()
        size = max(5, min(9, int(80 / (L + 1))))
        for i in range(L + 1):
            for j in range(L + 1):
                if np.ma.is_masked(values[i, j]):
                    continue
                shade = (float(values[i, j]) - lo) / (hi - lo) if hi > lo else 0.5
                ax.text(j, i, format(raw[i, j], ".2g" if log else ".3g"), ha="center", va="center", fontsize=size,
                        color="black" if shade > 0.6 else "white")
    scale = "log10 of the value" if log else "value"
    if vmin is not None or vmax is not None:
        scale += " (one scale for every block)"
    fig.colorbar(image, ax=ax, label=scale)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def have_matplotlib():
    """True when matplotlib is installed (an optional extra: pip install "numpy_densenet[plot]")."""
    import importlib.util
    return importlib.util.find_spec("matplotlib") is not None


# ----------------------------------------------------------------------------------------------------------
# One block, step by step
# ----------------------------------------------------------------------------------------------------------
def _g(v):
    """A number with 3 significant digits, as in every table."""
    return format(float(v), ".2e")


def explain_block(num_layers=5, growth_rate=4, in_channels=8, bn_size=4, batch=2, size=4, train=True,
                  compression=0.5, seed=0, fast=False):
    """Narrate the forward and backward pass of one small dense block through its concatenation.

    The block is a real dense block in float64, the plain tier's :class:`~numpy_densenet.model.DenseBlock`
    (``Concat`` forward, a split backward) or with ``fast=True`` the fast tier's (one buffer); the loss is ``sum(out * R)`` for
    a fixed random R, so the gradient of the block output is R. Every gradient printed is the one the block's
    own backward computed (recorded with ``record_flow``), and the closing check compares the sum over
    consumers with the gradients the layers actually received.

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
    L, k, k0, N = num_layers, growth_rate, in_channels, batch
    rng = np.random.default_rng(seed)
    make = fast_tier_block if fast else PlainDenseBlock
    block = make(L, k0, k, bn_size, dtype=np.float64, rng=rng)
    block.train(train)
    off = block.offsets                                        # [0, k0, k0 + k, ..., k0 + L*k]
    x0 = rng.standard_normal((k0, N, size, size)).transpose(1, 0, 2, 3)   # (N, k0, H, W)
    R = rng.standard_normal((off[-1], N, size, size)).transpose(1, 0, 2, 3)  # dL/dout for loss = sum(out * R)
    names = feature_labels(L)
    lines = []
    add = lines.append

    if bn_size is None:
        h = f"BN -> ReLU -> 3x3 conv to k = {k}   (plain layer)"
    else:
        h = (f"BN -> ReLU -> 1x1 conv to bn_size*k = {bn_size * k} -> BN -> ReLU -> 3x3 conv to k = {k}   "
             f"(bottleneck)")
    add(f"A dense block of L = {L} layers, growth rate k = {k}, on an input x0 of k0 = {k0} channels")
    add(f"batch N = {N}, H x W = {size} x {size}, float64, seed {seed}; BatchNorm in {'train' if train else 'eval'} "
        f"mode ({'batch' if train else 'running'} statistics)")
    add(f"each layer H_l: {h}")
    add(f"arrays are NCHW: x_i is channels offsets[i]:offsets[i+1] (axis 1) of the block output; tier: "
        f"{'fast (one channel-major buffer)' if fast else 'plain (Concat forward, split backward)'}")
    add("")

    # -- forward ----------------------------------------------------------------------------------------
    add("FORWARD: x_l = H_l([x0, ..., x(l-1)]); layer l reads k0 + (l-1)*k channels and adds k")
    if fast:
        add(f"  buffer = empty ({off[-1]}, {N}, {size}, {size}), channel-major: room for k0 + L*k = {k0} + {L}*{k} "
            f"= {off[-1]} channels")
        add(f"  buffer[0:{k0}] = x0")
    width = len(f"[0:{off[-1]}]")
    for l in range(1, L + 1):
        start, stop = off[l], off[l + 1]
        read = f"[0:{start}]".ljust(width)
        inputs = "[" + ", ".join(names[:l]) + "]"
        if fast:
            add(f"  layer {l}: reads buffer{read} = {inputs}, {start} = {k0} + {l - 1}*{k} channels (a view, no "
                f"copy); writes x{l} to buffer[{start}:{stop}]")
        else:
            add(f"  layer {l}: concat{inputs} -> {start} = {k0} + {l - 1}*{k} channels, offsets {off[:l + 1]}; "
                f"H{l} makes x{l} ({k} channels)")
    out = block(x0)                                             # (N, k0 + L*k, H, W)
    add(f"  out = concat[{', '.join(names)}]: k0 + L*k = {k0} + {L}*{k} = {off[-1]} channels, shape {out.shape}")
    add("")

    # -- backward ---------------------------------------------------------------------------------------
    add("BACKWARD: the gradient of a concatenation is the split of the output gradient;")
    add("          a feature map's gradient is the sum over its consumers")
    add(f"  loss = sum(out * R) for a fixed random R, so dL/dout = R, shape {R.shape}")
    add("  grad = split of dL/dout at the offsets; grad[x_i] collects every consumer of x_i")
    block.record_flow = True
    layers = block.layers()
    with record_backward_inputs(layers) as received:           # received[j-1]: dL/dx_j given to H_j
        dx0 = block.backward(R)                                # (N, k0, H, W)
    report = gradient_flow(block, R, "the block", mode="train" if train else "eval")
    for j in range(L, 0, -1):
        start, stop = off[j], off[j + 1]
        consumers = [f"H{m}" for m in range(j + 1, L + 1)] + ["out"]
        add(f"  layer {j}: dL/dx{j} = grad[:, {start}:{stop}] is complete (consumers {', '.join(consumers)}), "
            f"norm {_g(np.linalg.norm(received[j - 1]))}")
        read = names[0] if j == 1 else f"{names[0]}..{names[j - 1]}"
        add(f"           backward through H{j}: ({N}, {k}, {size}, {size}) -> dL/d[{read}], "
            f"shape {block.flow[j - 1].shape}, split at offsets {off[:j + 1]}:")
        for i in range(j):
            add(f"             {names[i]} <- channels [{off[i]}:{off[i + 1]}]".ljust(38)
                + f"norm {_g(report.norms[i, j - 1])}")
        add(f"           grad[x0..x{j - 1}] += those pieces")
    add(f"  dL/dx0 = grad[:, 0:{k0}] (consumers {', '.join(consumer_labels(L))}), "
        f"norm {_g(np.linalg.norm(dx0))}: the block's input gradient, returned")
    add("")

    # -- the sum over consumers -------------------------------------------------------------------------
    add("SUM OVER CONSUMERS: dL/dx_i = out[x_i's channels] + what each later layer sent to them (norms)")
    actual = [dx0] + received                                   # the gradients the block really used
    worst = 0.0
    for i in range(L + 1):
        terms = " + ".join(f"{label} {_g(report.norms[i, c])}" for c, label in enumerate(consumer_labels(L))
                           if reads(i, c))
        add(f"  dL/d{names[i]} = {terms}")
        worst = max(worst, float(np.abs(report.gradient(i) - actual[i]).max()))
    add(f"  largest |sum over consumers - gradient the block used| over every x_i: {worst:.1e}")
    add("  (each row's total norm is at most the sum of its terms' norms: the terms point in different directions)")
    if train:
        # BatchNorm's train-mode backward removes the per-channel mean of the gradient, and H_j starts with BN.
        sums = max(float(np.abs(f.sum(axis=(0, 2, 3))).max()) for f in block.flow)
        add("  train mode: what a layer sends back has zero sum over (N, H, W) in every channel (its first BN")
        add(f"  removes the mean): largest |sum| {sums:.1e}; the channel sums of dL/dx_i come from out alone")
    add("")
    add(report.table())
    add("")
    add(report.table(normalised=True))
    add("  normalised per channel: each norm divided by sqrt(channels of x_i), "
        f"sqrt({k0}) for x0 and sqrt({k}) for the others")
    add("")

    # -- parameters, bottleneck, compression --------------------------------------------------------------
    add("ARITHMETIC: weights of each layer's convolutions (no bias)"
        + (", with and without the bottleneck" if bn_size is not None else ""))
    for l in range(1, L + 1):
        c_in = off[l]
        plain = 9 * c_in * k
        if bn_size is None:
            add(f"  layer {l}: 3x3 conv {c_in} -> {k}: 9*{c_in}*{k} = {plain}")
        else:
            b = bn_size * k
            add(f"  layer {l}: 1x1 conv {c_in} -> {b}: {c_in}*{b} = {c_in * b}, 3x3 conv {b} -> {k}: 9*{b}*{k} = "
                f"{9 * b * k}; total {c_in * b + 9 * b * k} (a plain 3x3 conv {c_in} -> {k} would have {plain})")
    if bn_size is not None and bn_size < 9:
        # C_in*b*k + 9*b*k*k < 9*C_in*k  <=>  C_in > 9*b*k / (9 - b)
        add(f"  the bottleneck costs C_in*{bn_size}k + 9*{bn_size}k*k against 9*C_in*k for a plain layer: it is "
            f"cheaper once C_in > 9*{bn_size}*{k}/(9 - {bn_size}) = {9 * bn_size * k / (9 - bn_size):.1f} channels")
    elif bn_size is not None:
        add(f"  with bn_size = {bn_size} >= 9 the bottleneck is never cheaper than a plain 3x3 conv")
    counted = sum(layer.conv1.weight.size + (layer.conv2.weight.size if layer.bottleneck else 0) for layer in layers)
    add(f"  conv weights in the block: {counted}")
    theta_out = int(np.floor(compression * off[-1]))
    add(f"  a transition with compression theta = {compression} maps the {off[-1]} output channels to "
        f"floor({compression}*{off[-1]}) = {theta_out} (1x1 conv: {off[-1]}*{theta_out} = "
        f"{off[-1] * theta_out} weights), then halves H and W")
    return lines


def fast_tier_block(num_layers, in_channels, growth_rate, bn_size, dtype, rng):
    """The fast tier's dense block, built like the plain one (for :func:`explain_block`)."""
    return fast.DenseBlock(num_layers, in_channels, growth_rate, bn_size, dtype=dtype, rng=rng)
