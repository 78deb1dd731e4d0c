"""Concatenation along channels, the heart of DenseNet. Its backward is a split.

The DenseNet itself does not call this module: its dense block writes every feature map into one
preallocated buffer, so each layer's input concatenation is a view, and its backward does the same split
by slicing (see ``DenseBlock.forward_cnhw`` / ``backward_cnhw`` in ``numpy_densenet/model.py``).
"""
from __future__ import annotations

import numpy as np

from ._checks import check_grad, take_cache
from .module import FLOAT_DTYPES, SpatialModule, saved


def channel_offsets(channel_counts):
    """[c0, c1, ...] -> [0, c0, c0+c1, ...]: where each input's channels start and stop in the output."""
    return np.concatenate([[0], np.cumsum(channel_counts)]).astype(int).tolist()


def split_channels(dout, offsets):
    """The backward of a concatenation: cut the output gradient at the channel offsets.

    ``dout`` is channel-major (C, ...); piece ``i`` is ``dout[offsets[i]:offsets[i+1]]`` (a view, no copy).
    """
    return tuple(dout[start:stop] for start, stop in zip(offsets[:-1], offsets[1:]))


class Concat(SpatialModule):
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
        for i, x in enumerate(xs):
            if isinstance(x, np.ndarray) and x.ndim != 4:
                raise ValueError(f"Concat: input {i} must be 4-D (N, C, H, W), got shape {x.shape}")
        y = self.forward_cnhw(*[x.transpose(1, 0, 2, 3) for x in xs]).transpose(1, 0, 2, 3)
        object.__setattr__(self, "_output_shape", y.shape)
        return y

    def backward(self, dout):
        if isinstance(dout, np.ndarray) and dout.ndim != 4:
            raise ValueError(f"Concat.backward: expected a 4-D gradient (N, C, H, W), got shape {dout.shape}")
        expected = self.__dict__.get("_output_shape")
        if self._cache is not None and expected is not None and dout.shape != expected:
            raise ValueError(f"Concat.backward: upstream gradient has shape {dout.shape}, expected the forward "
                             f"output's shape {expected}")
        return tuple(d.transpose(1, 0, 2, 3) for d in self.backward_cnhw(dout.transpose(1, 0, 2, 3)))

    def forward_cnhw(self, *xs):
        """xi : (Ci, N, H, W) -> y : (sum Ci, N, H, W)."""
        if not xs:
            raise ValueError("Concat: needs at least one input")
        for i, x in enumerate(xs):
            if not isinstance(x, np.ndarray) or x.dtype not in FLOAT_DTYPES:
                raise TypeError(f"Concat: input {i} must be a float32 or float64 array, got "
                                f"{getattr(x, 'dtype', type(x).__name__)}")
            if x.ndim != 4 or x.shape[1:] != xs[0].shape[1:]:
                raise ValueError(f"Concat: all inputs must share N, H and W; input 0 has (N, C, H, W) = "
                                 f"{_nchw(xs[0].shape)}, input {i} has {_nchw(x.shape)}")
            if x.dtype != xs[0].dtype:
                raise TypeError(f"Concat: input {i} has dtype {x.dtype}, input 0 has {xs[0].dtype}")
        offsets = channel_offsets([x.shape[0] for x in xs])
        self._cache = saved((offsets, (offsets[-1],) + xs[0].shape[1:], xs[0].dtype))
        return np.concatenate(xs, axis=0)

    def backward_cnhw(self, dout):
        """dout : (sum Ci, N, H, W) -> tuple of dxi : (Ci, N, H, W)."""
        offsets, shape, dtype = take_cache(self)
        dout = check_grad(self, dout, shape, dtype)
        return split_channels(dout, offsets)


def _nchw(shape):
    return (shape[1], shape[0]) + tuple(shape[2:]) if len(shape) == 4 else shape
