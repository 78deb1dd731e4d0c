"""Concatenation along channels, the heart of DenseNet. Its backward is a split.

Forward stacks the inputs' channels one after another; ``offsets`` records where each input's channels
start and stop in the output::

    y channels:  [ x0 (C0) | x1 (C1) | x2 (C2) ]
    offsets:      0        C0        C0+C1     C0+C1+C2

Each output channel is a copy of exactly one input channel, so the gradient of the output splits back at
the same offsets: input i receives ``dy[:, offsets[i]:offsets[i+1]]`` and nothing else. In a dense block
a feature map goes into the concatenation of every later layer, so its gradient is the *sum* of the slices
it receives from all of them (see ``DenseBlock.backward`` in :mod:`numpy_densenet.model`).
"""
from __future__ import annotations

import numpy as np

from .checks import check_grad, check_same_nhw, take_cache
from .module import Module, saved


def channel_offsets(channel_counts):
    """[C0, C1, ...] -> [0, C0, C0+C1, ...]: where each input's channels start and stop in the output."""
    return np.concatenate([[0], np.cumsum(channel_counts)]).astype(int).tolist()


def split_channels(dout, offsets, axis=1):
    """The backward of a concatenation: cut the output gradient at the channel offsets.

    Piece ``i`` is ``dout[:, offsets[i]:offsets[i+1]]`` for NCHW (``axis=1``; a view, no copy).
    """
    index = (slice(None),) * axis
    return tuple(dout[index + (slice(start, stop),)] for start, stop in zip(offsets[:-1], offsets[1:]))


class Concat(Module):
    """Concatenate inputs along the channel axis: ``y = Concat()(x0, x1, ...)``.

    Shapes
    ------
    xi : (N, Ci, H, W) -> y : (N, sum(Ci), H, W). ``backward(dy)`` returns the tuple
    ``(dy[:, 0:C0], dy[:, C0:C0+C1], ...)``: each input receives exactly the slice of the output
    gradient at its own channels.
    """

    def __init__(self):
        super().__init__()
        self._cache = None

    def forward(self, *xs):
        """x0, x1, ...: (N, Ci, H, W) -> y: (N, C0 + C1 + ..., H, W)."""
        check_same_nhw(self, xs)
        offsets = channel_offsets([x.shape[1] for x in xs])
        y = np.concatenate(xs, axis=1)                                       # (N, sum Ci, H, W)
        self._cache = saved((offsets, y.shape, y.dtype))
        return y

    def backward(self, dout):
        """dout: (N, sum Ci, H, W) -> tuple of dxi: (N, Ci, H, W), the split at the channel offsets."""
        offsets, shape, dtype = take_cache(self)
        dout = check_grad(self, dout, shape, dtype)
        return split_channels(dout, offsets)                                 # dx_i = dout[:, off_i:off_i+1]
