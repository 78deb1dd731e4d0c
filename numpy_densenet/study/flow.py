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
block output, with ``block.offsets = [0, k0, k0 + k, ..., k0 + L*k]``. The gradients are recorded from outside
the blocks (:func:`record_backward_inputs`, :func:`record_backward_outputs` wrap the backward methods of the
instances for as long as a ``with`` block lasts), so the plain block (:class:`numpy_densenet.model.DenseBlock`)
and the fast one (:class:`numpy_densenet.fast.DenseBlock`, its subclass) carry no recording code, and every tool
here works on ``DenseNet(..., fast=False)`` and ``fast=True`` alike.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np

from ..fast.layout import swap01
from ..model import DenseBlock, DenseNet, Transition
from ..nn import CrossEntropyLoss
from ..nn.module import restore_buffers

__all__ = ["BlockMatrix", "FlowReport", "gradient_flow", "block_gradient_flow", "block_feature_reuse",
           "feature_reuse", "record_backward_inputs", "record_backward_outputs", "preserved_state"]


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

    Built by :func:`gradient_flow` from the gradients recorded during a backward pass.

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


def gradient_flow(block, dout, flow, name="", loss=None, mode=""):
    """Split the gradient of every feature map of ``block`` by consumer.

    Parameters
    ----------
    block : DenseBlock
        Either tier's.
    dout : ndarray, shape (N, k0 + L*k, H, W)
        The gradient of the block output that the backward pass started from (:func:`record_backward_inputs`).
    flow : list of ndarray
        ``flow[j]``, shape (N, offsets[j+1], H, W): the gradient layer H_(j+1) sent to the feature maps it read,
        [x_0, ..., x_j] (what its backward returned, :func:`record_backward_outputs`).
    name, loss, mode :
        Stored in the report.

    Returns
    -------
    FlowReport
        ``parts[i][c]`` = ``flow[c][:, offsets[i]:offsets[i+1]]`` for a layer consumer (c < L, c >= i) and
        ``dout[:, offsets[i]:offsets[i+1]]`` for the block output (c = L).
    """
    if not isinstance(block, DenseBlock):
        raise TypeError(f"gradient_flow: expected a DenseBlock, got {type(block).__name__}")
    if flow is None or len(flow) != block.num_layers or any(f is None for f in flow):
        raise ValueError(f"gradient_flow: flow must hold what each of the block's {block.num_layers} layers sent "
                         "back in a backward pass (record it with record_backward_outputs(block.layers()))")
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


def _nchw_copy(array, channel_major):
    """A copy of a recorded gradient, NCHW: immune to later in-place updates of the original."""
    if isinstance(array, (tuple, list)):                       # a plain dense layer: the split of its input
        return np.concatenate(array, axis=1)
    copy = np.array(array, copy=True)
    return swap01(copy) if channel_major else copy


def _backward_name(module):
    """The backward a module is run through inside a network: channel-major in the fast tier."""
    return "backward_cnhw" if hasattr(module, "backward_cnhw") else "backward"


@contextlib.contextmanager
def _recording(modules, what):
    """Wrap each module's backward on the *instance*, for as long as the context lasts: ``recorded[m]`` gets,
    NCHW, the gradient ``modules[m]``'s backward was called with (``what="input"``) or what it returned
    (``what="output"``). Wrappers nest; each is removed on exit and what was there before put back."""
    recorded = [None] * len(modules)
    saved = []
    for m, module in enumerate(modules):
        name = _backward_name(module)
        saved.append((module, name, module.__dict__.get(name)))
        original = getattr(module, name)                        # the class's method, or an outer wrapper

        def wrapper(dout, *args, _m=m, _original=original, _cnhw=name == "backward_cnhw", **kwargs):
            if what == "input":
                recorded[_m] = _nchw_copy(dout, _cnhw)          # before the backward may change it
            result = _original(dout, *args, **kwargs)
            if what == "output":
                recorded[_m] = _nchw_copy(result, _cnhw)
            return result
        object.__setattr__(module, name, wrapper)
    try:
        yield recorded
    finally:
        for module, name, previous in reversed(saved):
            if previous is None:
                object.__delattr__(module, name)
            else:
                object.__setattr__(module, name, previous)


def record_backward_inputs(modules):
    """Record the gradient each module's backward is called with, while the context is active.

    The study tools use it to catch the gradient of a dense block's output (the start of its backward pass)
    and, in :func:`~numpy_densenet.study.explain.explain_block`, the gradient each dense layer receives for its
    new channels. A fast-tier module is called channel-major (``backward_cnhw``), a plain one through
    ``backward``; either way the gradient is recorded NCHW. The method is wrapped on the *instances* only and
    restored on exit.

    Yields
    ------
    list
        ``recorded[m]`` is the last gradient given to ``modules[m]``'s backward, NCHW (None until called).
    """
    return _recording(modules, "input")


def record_backward_outputs(modules):
    """Record what each module's backward returned, while the context is active: for a dense layer, the
    gradient it sends to the feature maps it read, NCHW (a plain layer's split is concatenated again; a fast
    layer's, written into a workspace its block reuses, is copied at once).

    Yields
    ------
    list
        ``recorded[m]``: the last result of ``modules[m]``'s backward, NCHW (None until called).
    """
    return _recording(modules, "output")


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
        Either tier's.
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
    generators are restored, and the recording wrappers removed.
    """
    if not isinstance(model, DenseNet):
        raise TypeError(f"block_gradient_flow: expected a DenseNet, got {type(model).__name__}")
    criterion = criterion if criterion is not None else CrossEntropyLoss()
    blocks = named_blocks(model)
    layers = [layer for _, block in blocks for layer in block.layers()]
    with preserved_state(model), record_backward_inputs([b for _, b in blocks]) as douts, \
            record_backward_outputs(layers) as sent:
        model.train(train)
        loss = float(criterion(model.forward(x), y))
        model.backward(criterion.backward())
    mode = "train" if train else "eval"
    reports, first = [], 0
    for (name, block), dout in zip(blocks, douts):
        flow = sent[first:first + block.num_layers]
        first += block.num_layers
        reports.append(gradient_flow(block, dout, flow, name, loss, mode))
    return reports


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
