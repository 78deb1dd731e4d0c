"""Element-wise layers: ReLU and (inverted) Dropout. Layout-free, so any shape works.

The fast tier's :class:`numpy_densenet.fast.ReLU` is the same ReLU run on several threads (and fused into
BatchNorm as :class:`numpy_densenet.fast.BatchNormReLU2d`); Dropout has no fast version.
"""
from __future__ import annotations

import numbers

import numpy as np

from .checks import check_grad, take_cache
from .module import FLOAT_DTYPES, Module, saved


def check_float_array(layer, x):
    name = type(layer).__name__
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: input must be a NumPy array, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: input must be float32 or float64, got dtype {x.dtype}")
    return x


class ReLU(Module):
    """y = max(x, 0). Gradient: dy where y > 0, else 0 (so 0 at x == 0, as PyTorch).

    With ``inplace=True`` (as in torchvision's DenseNet) the input array is overwritten and returned, saving
    an allocation; only use it on an array nothing else needs, such as a BatchNorm output.

    Shapes: any -> same. Caches its output (a reference, not a copy), which a following convolution keeps as
    its input anyway.
    """

    def __init__(self, inplace=False):
        super().__init__()
        self.inplace = bool(inplace)
        self._cache = None

    def extra_repr(self):
        return "inplace=True" if self.inplace else ""

    def forward(self, x):
        x = check_float_array(self, x)
        y = np.maximum(x, 0, out=x if self.inplace else None)               # same shape and dtype as x
        self._cache = saved(y)
        return y

    def backward(self, dout):
        y = take_cache(self)
        dout = check_grad(self, dout, y.shape, y.dtype)
        return dout * (y > 0)                                                # pass dy where the unit was on


class Dropout(Module):
    """Inverted dropout: in train mode zero each element with probability ``p`` and scale the rest by
    1/(1-p); identity in eval mode.

    The mask comes from ``self.generator`` (a ``numpy.random.Generator`` seeded by ``seed``), so runs are
    reproducible; the gradient checker resets that generator before every forward to hold the mask fixed.

    Shapes: any -> same.
    """

    def __init__(self, p=0.5, seed=None):
        super().__init__()
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise TypeError(f"Dropout: seed must be an int or None, got {seed!r}")
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        self.generator = np.random.default_rng(seed)
        self._cache = None

    def extra_repr(self):
        return f"p={self.p}"

    def forward(self, x):
        x = check_float_array(self, x)
        if not self.training or self.p == 0.0:
            self._cache = saved((None, x.shape, x.dtype))
            return x.copy()
        keep = self.generator.random(x.shape, dtype=x.dtype) >= self.p       # bool mask, same shape as x
        scale = 0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p)
        self._cache = saved((keep, x.shape, x.dtype))
        y = x * keep
        y *= x.dtype.type(scale)
        return y

    def backward(self, dout):
        keep, shape, dtype = take_cache(self)
        dout = check_grad(self, dout, shape, dtype)
        if keep is None:
            return dout.copy()
        dx = dout * keep
        dx *= dtype.type(0.0 if self.p == 1.0 else 1.0 / (1.0 - self.p))
        return dx
