"""Fully connected layer and Flatten (the fast tier's :class:`numpy_densenet.fast.Linear` splits the products
between its threads)."""
from __future__ import annotations

import math

import numpy as np

from .checks import check_generator, check_grad, check_input, positive_int, take_cache
from .module import Module, Parameter, check_float_dtype, saved


class Linear(Module):
    """y = x W^T + b, PyTorch's ``nn.Linear`` (weight of shape (out_features, in_features)).

    Shapes
    ------
    x : (N, in_features) -> y : (N, out_features).
    Initial weight and bias are uniform in +-1/sqrt(in_features), drawn from ``generator``.
    """

    def __init__(self, in_features, out_features, bias=True, dtype=np.float32, generator=None):
        super().__init__()
        self.in_features = positive_int(in_features, "Linear: in_features")
        self.out_features = positive_int(out_features, "Linear: out_features")
        dt = check_float_dtype(dtype)
        rng = check_generator(generator, "Linear")
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(rng.uniform(-bound, bound, (out_features, in_features)).astype(dt))
        self.bias = Parameter(rng.uniform(-bound, bound, out_features).astype(dt)) if bias else None
        self._cache = None

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def forward(self, x):
        x = check_input(self, x, 2, "(N, in_features)", self.weight.dtype)
        if x.shape[1] != self.in_features:
            raise ValueError(f"Linear: input has {x.shape[1]} features, expected in_features="
                             f"{self.in_features} (input shape {x.shape})")
        y = x @ self.weight.data.T                                          # (N, out)
        if self.bias is not None:
            y += self.bias.data
        self._cache = saved(x)
        return y

    def backward(self, dout):
        x = take_cache(self)
        dout = check_grad(self, dout, (x.shape[0], self.out_features), self.weight.dtype)
        self.weight.grad += dout.T @ x                                       # (out, in)
        if self.bias is not None:
            self.bias.grad += dout.sum(axis=0)                               # sum over the batch
        return dout @ self.weight.data                                       # (N, in)


class Flatten(Module):
    """Flatten all axes from ``start_dim`` on: (N, C, H, W) -> (N, C*H*W) by default."""

    def __init__(self, start_dim=1):
        super().__init__()
        if isinstance(start_dim, bool) or not isinstance(start_dim, (int, np.integer)) or start_dim < 0:
            raise TypeError(f"Flatten: start_dim must be a non-negative int, got {start_dim!r}")
        self.start_dim = int(start_dim)
        self._cache = None

    def forward(self, x):
        if not isinstance(x, np.ndarray) or x.ndim <= self.start_dim:
            raise ValueError(f"Flatten: expected an array with more than {self.start_dim} axes, got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        self._cache = saved((x.shape, x.dtype))
        return x.reshape(x.shape[:self.start_dim] + (-1,))

    def backward(self, dout):
        shape, dtype = take_cache(self)
        dout = check_grad(self, dout, shape[:self.start_dim] + (int(np.prod(shape[self.start_dim:])),), dtype)
        return dout.reshape(shape)
