"""The one adapter between PyTorch's NCHW layout and the fast tier's channel-major (C, N, H, W) layout.

In channel-major layout a slice of channels is one contiguous block of memory: a dense block's
concatenation is a view of one buffer, and a 1x1 convolution is a single GEMM on the input as it lies.
Fast layers implement ``forward_cnhw`` / ``backward_cnhw``; this mixin gives them PyTorch's ``forward`` /
``backward`` on NCHW arrays by swapping the first two axes (a transposed view, never a copy).
"""
from __future__ import annotations

import numpy as np

from ..nn import module


def swap01(x):
    """(N, C, H, W) <-> (C, N, H, W): a transposed view, never a copy."""
    if isinstance(x, np.ndarray) and x.ndim == 4:
        return x.transpose(1, 0, 2, 3)
    return x


class ChannelMajor:
    """Mixin: NCHW ``forward``/``backward`` around a layer's channel-major ``forward_cnhw``/``backward_cnhw``.

    Put it first among the bases (``class Conv2d(ChannelMajor, nn.Conv2d)``), so that its ``forward`` and
    ``backward`` replace the plain layer's.
    """

    def forward(self, x):
        if isinstance(x, np.ndarray) and x.ndim != 4:
            raise ValueError(f"{type(self).__name__}: expected a 4-D input of shape (N, C, H, W), "
                             f"got shape {x.shape}")
        y = swap01(self.forward_cnhw(swap01(x)))
        object.__setattr__(self, "_output_shape", y.shape)
        return y

    def backward(self, dout):
        if isinstance(dout, np.ndarray) and dout.ndim != 4:
            raise ValueError(f"{type(self).__name__}.backward: expected a 4-D gradient of shape "
                             f"(N, C, H, W), got shape {dout.shape}")
        expected = self.__dict__.get("_output_shape")
        if isinstance(dout, np.ndarray) and expected is not None and self.__dict__.get("_cache") is not None \
                and dout.shape != expected:
            raise ValueError(f"{type(self).__name__}.backward: upstream gradient has shape {dout.shape}, expected "
                             f"the forward output's shape {expected}")
        return swap01(self.backward_cnhw(swap01(dout)))


class Sequential(ChannelMajor, module.Sequential):
    """:class:`numpy_densenet.nn.Sequential` whose children are all run channel-major."""

    def forward_cnhw(self, x):
        for m in self:
            x = m.forward_cnhw(x) if hasattr(m, "forward_cnhw") else m(x)       # layout-free: Dropout
        return x

    def backward_cnhw(self, dout):
        for m in reversed(list(self)):
            dout = m.backward_cnhw(dout) if hasattr(m, "backward_cnhw") else m.backward(dout)
        return dout
