"""Fast ReLU: :class:`numpy_densenet.nn.ReLU` run on several threads against a block of zeros."""
from __future__ import annotations

import numpy as np

from ..nn import activation as plain
from ..nn.checks import check_grad, take_cache
from ..nn.module import is_grad_enabled, saved
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


def relu_backward(dout, y, out):
    """``dout * (y > 0)`` written into ``out`` (which may be y, not dout): the comparison written as 1.0 / 0.0 in
    dout's dtype, then one product - the same values as multiplying by the boolean mask, which NumPy first
    converts element by element (about twice as slow)."""
    np.greater(y, 0, out=out, casting="unsafe")
    return np.multiply(dout, out, out=out)


class ReLU(plain.ReLU):
    """:class:`numpy_densenet.nn.ReLU` (its specification), its passes shared between the threads. Layout-free:
    ``forward_cnhw`` is ``forward``. With ``inplace=True`` it keeps for backward where its output is positive
    (one byte a value) rather than the output itself, whose memory its caller may then let go (the ImageNet
    stem's relu0 output, once max-pooled).

    Shapes: any -> same.
    """

    def forward(self, x):
        x = plain.check_float_array(self, x)
        y = x if self.inplace else np.empty_like(x)                          # same dtype as x
        if self.inplace and is_grad_enabled():
            positive = np.empty(x.shape, dtype=bool)
            elementwise(lambda a, b, p: np.greater(relu_into(a, b), 0, out=p), x, y, positive)
            self._cache = saved((positive, x.dtype))
        else:
            elementwise(relu_into, x, y)
            self._cache = saved((y, y.dtype))
        return y

    def backward(self, dout, out=None):
        """dout -> dx, written into ``out`` if given: an array of dout's shape and dtype, which may be dout."""
        kept, dtype = take_cache(self)                                      # the output, or where it is > 0
        dout = check_grad(self, dout, kept.shape, dtype)
        if out is not None and (out.shape != kept.shape or out.dtype != dtype):
            raise ValueError(f"ReLU.backward: out must be an array of shape {kept.shape} and dtype {dtype}, "
                             f"got {out.shape} {out.dtype}")
        dx = np.empty_like(dout) if out is None else out
        elementwise(lambda d, k, dx_: np.multiply(d, k if k.dtype == bool else k > 0, out=dx_), dout, kept, dx)
        return dx

    forward_cnhw = forward
    backward_cnhw = backward
