"""Fast ReLU: :class:`numpy_densenet.nn.ReLU` run on several threads against a block of zeros."""
from __future__ import annotations

import numpy as np

from ..nn import activation as plain
from ..nn.checks import check_grad, take_cache
from ..nn.module import saved
from .threads import elementwise

_ZEROS = {}                          # dtype -> a read-only block of zeros for relu_into


def relu_into(x, out):
    """``out = max(x, 0)`` for two arrays of one shape and dtype (``out`` may be ``x``); returns ``out``.

    NumPy's ``maximum`` is several times slower against the scalar 0 than against an array of zeros (float32:
    ~120 vs ~45 us per 2**18 values, NumPy 2.4 on this project's machines), so C-contiguous arrays are
    compared with a cached block of zeros, one piece of that length at a time.
    """
    if not (x.flags.c_contiguous and out.flags.c_contiguous):
        return np.maximum(x, 0, out=out)
    zeros = _ZEROS.get(x.dtype)
    if zeros is None:
        zeros = np.zeros(1 << 16, dtype=x.dtype)
        zeros.flags.writeable = False
        _ZEROS[x.dtype] = zeros
    flat_x, flat_out = x.reshape(-1), out.reshape(-1)
    for i in range(0, flat_x.size, zeros.size):
        piece = slice(i, i + zeros.size)
        np.maximum(flat_x[piece], zeros[:flat_x[piece].size], out=flat_out[piece])
    return out


class ReLU(plain.ReLU):
    """:class:`numpy_densenet.nn.ReLU` (its specification), its passes shared between the threads. Layout-free:
    ``forward_cnhw`` is ``forward``.

    Shapes: any -> same.
    """

    def forward(self, x):
        x = plain.check_float_array(self, x)
        y = x if self.inplace else np.empty_like(x)                          # same dtype as x
        elementwise(relu_into, x, y)
        self._cache = saved(y)
        return y

    def backward(self, dout, out=None):
        """dout -> dx, written into ``out`` if given: an array of dout's shape and dtype, which may be dout."""
        y = take_cache(self)
        dout = check_grad(self, dout, y.shape, y.dtype)
        if out is not None and (out.shape != y.shape or out.dtype != y.dtype):
            raise ValueError(f"ReLU.backward: out must be an array of shape {y.shape} and dtype {y.dtype}, "
                             f"got {out.shape} {out.dtype}")
        dx = np.empty_like(y) if out is None else out
        elementwise(lambda d, y_, dx_: np.multiply(d, y_ > 0, out=dx_), dout, y, dx)
        return dx

    forward_cnhw = forward
    backward_cnhw = backward
