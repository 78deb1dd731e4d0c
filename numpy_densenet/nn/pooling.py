"""Max, average and adaptive average pooling on NCHW arrays: the plain specification.

Like im2col, each pool is a loop over the kh x kw window offsets, each reading one strided slice of the
padded input for all output positions at once; backward is the same loop adding into the padded gradient.

The fast tier (:mod:`numpy_densenet.fast.pooling`) computes the same channel-major, MaxPool2d on the
stride phases of its input and on several threads; ``tests/test_fast_tier.py`` proves them equal.
"""
from __future__ import annotations

import numpy as np

from .checks import check_grad, check_input, pair, take_cache
from .conv import conv_output_size
from .module import Module, is_grad_enabled, saved


def pad_nchw(x, padding, value=0.0):
    """``x`` (N, C, H, W) with ``padding = (ph, pw)`` rows/cols of ``value`` on each side."""
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


class _Pool2d(Module):
    """Shared geometry of MaxPool2d and AvgPool2d (ceil_mode=False)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        self.kernel_size = pair(kernel_size, f"{name}: kernel_size", 1)
        self.stride = self.kernel_size if stride is None else pair(stride, f"{name}: stride", 1)
        self.padding = pair(padding, f"{name}: padding", 0)
        for p, k in zip(self.padding, self.kernel_size):
            if p > k // 2:
                raise ValueError(f"{name}: padding should be at most half of kernel size, got "
                                 f"padding={self.padding} for kernel_size={self.kernel_size}")
        self._cache = None

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def output_shape(self, H, W):
        """(Ho, Wo) for an H x W input; a clear error if the window does not fit."""
        Ho, Wo = (conv_output_size(s, k, st, p, 1)
                  for s, k, st, p in zip((H, W), self.kernel_size, self.stride, self.padding))
        if Ho < 1 or Wo < 1:
            raise ValueError(f"{type(self).__name__}: kernel_size {self.kernel_size} is larger than the padded "
                             f"input {(H + 2 * self.padding[0], W + 2 * self.padding[1])}")
        return Ho, Wo

    def windows(self, Ho, Wo):
        """Yield (k, rows, cols): window offset k = i*kw + j and the strided slices of the padded input that
        offset (i, j) reads for every output position."""
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        for i in range(kh):
            for j in range(kw):
                yield i * kw + j, slice(i, i + sh * (Ho - 1) + 1, sh), slice(j, j + sw * (Wo - 1) + 1, sw)


class MaxPool2d(_Pool2d):
    """Max pooling, PyTorch's ``nn.MaxPool2d`` (padding acts as -inf; stride defaults to kernel_size).

    Ties: the gradient goes to the *first* maximal element of each window in row-major window order (the
    element PyTorch's CPU kernel picks), never split among tied elements. NaN propagates, as in PyTorch.

    Shapes: (N, C, H, W) -> (N, C, Ho, Wo), Ho = floor((H + 2p - kh)/s) + 1.
    """

    def forward(self, x):
        x = check_input(self, x, 4, "(N, C, H, W)")
        Ho, Wo = self.output_shape(*x.shape[2:])
        xp = pad_nchw(x, self.padding, value=-np.inf)                        # (N, C, H+2ph, W+2pw)
        y = np.full(x.shape[:2] + (Ho, Wo), -np.inf, dtype=x.dtype)          # (N, C, Ho, Wo)
        for _, rows, cols in self.windows(Ho, Wo):
            y = np.maximum(y, xp[:, :, rows, cols])                          # NaN propagates
        if not is_grad_enabled():
            self._cache = saved(None)
            return y
        # Which window offset k held each maximum: scanning backwards, the last match written is the first
        # maximal element in row-major window order.
        argmax = np.zeros(y.shape, dtype=np.int64)                           # (N, C, Ho, Wo)
        for k, rows, cols in reversed(list(self.windows(Ho, Wo))):
            argmax[xp[:, :, rows, cols] == y] = k
        self._cache = saved((argmax, x.shape, x.dtype))
        return y

    def backward(self, dout):
        argmax, (N, C, H, W), dtype = take_cache(self)
        dout = check_grad(self, dout, argmax.shape, dtype)
        ph, pw = self.padding
        dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dtype)
        for k, rows, cols in self.windows(*argmax.shape[2:]):
            dxp[:, :, rows, cols] += dout * (argmax == k)                    # route to the chosen element
        return dxp[:, :, ph:ph + H, pw:pw + W].copy()


class AvgPool2d(_Pool2d):
    """Average pooling, PyTorch's ``nn.AvgPool2d`` (ceil_mode=False).

    With ``count_include_pad=True`` (the default) every window is divided by kh*kw, padded zeros included;
    with ``False`` by the number of real (unpadded) elements in the window.

    Shapes: (N, C, H, W) -> (N, C, Ho, Wo).
    """

    def __init__(self, kernel_size, stride=None, padding=0, count_include_pad=True):
        super().__init__(kernel_size, stride, padding)
        self.count_include_pad = bool(count_include_pad)

    def divisor(self, H, W, dtype):
        """kh*kw, or per output position the number of real elements in its window, shape (Ho, Wo)."""
        if self.count_include_pad or self.padding == (0, 0):
            return dtype.type(self.kernel_size[0] * self.kernel_size[1])
        ones = pad_nchw(np.ones((1, 1, H, W), dtype=dtype), self.padding)    # 1 inside, 0 in the padding
        Ho, Wo = self.output_shape(H, W)
        return sum(ones[0, 0, rows, cols] for _, rows, cols in self.windows(Ho, Wo))

    def forward(self, x):
        x = check_input(self, x, 4, "(N, C, H, W)")
        (N, C, H, W), (Ho, Wo) = x.shape, self.output_shape(*x.shape[2:])
        xp = pad_nchw(x, self.padding)
        y = np.zeros((N, C, Ho, Wo), dtype=x.dtype)
        for _, rows, cols in self.windows(Ho, Wo):
            y += xp[:, :, rows, cols]                                        # sum over the window
        y /= self.divisor(H, W, x.dtype)
        self._cache = saved((x.shape, x.dtype))
        return y

    def backward(self, dout):
        (N, C, H, W), dtype = take_cache(self)
        Ho, Wo = self.output_shape(H, W)
        dout = check_grad(self, dout, (N, C, Ho, Wo), dtype)
        ph, pw = self.padding
        share = dout / self.divisor(H, W, dtype)                            # each element's share
        dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dtype)
        for _, rows, cols in self.windows(Ho, Wo):
            dxp[:, :, rows, cols] += share
        return dxp[:, :, ph:ph + H, pw:pw + W].copy()


class AdaptiveAvgPool2d(Module):
    """Average pooling to a fixed output size, PyTorch's ``nn.AdaptiveAvgPool2d``.

    Output cell (i, j) averages rows floor(i*H/oh) .. ceil((i+1)*H/oh) - 1 and likewise for columns.
    ``AdaptiveAvgPool2d(1)`` is the global average pool of DenseNet's head.

    Shapes: (N, C, H, W) -> (N, C, oh, ow).
    """

    def __init__(self, output_size):
        super().__init__()
        self.output_size = pair(output_size, "AdaptiveAvgPool2d: output_size", 1)
        self._cache = None

    def extra_repr(self):
        return f"output_size={self.output_size}"

    def cells(self, H, W):
        """Yield (i, j, rows, cols): output cell (i, j) and the input rows and columns it averages."""
        oh, ow = self.output_size
        for i in range(oh):
            rows = slice((i * H) // oh, -(-((i + 1) * H) // oh))
            for j in range(ow):
                yield i, j, rows, slice((j * W) // ow, -(-((j + 1) * W) // ow))

    def forward(self, x):
        x = check_input(self, x, 4, "(N, C, H, W)")
        (N, C, H, W) = x.shape
        y = np.empty((N, C) + self.output_size, dtype=x.dtype)
        for i, j, rows, cols in self.cells(H, W):
            y[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
        self._cache = saved((x.shape, x.dtype))
        return y

    def backward(self, dout):
        (N, C, H, W), dtype = take_cache(self)
        dout = check_grad(self, dout, (N, C) + self.output_size, dtype)
        dx = np.zeros((N, C, H, W), dtype=dtype)
        for i, j, rows, cols in self.cells(H, W):
            area = (rows.stop - rows.start) * (cols.stop - cols.start)
            dx[:, :, rows, cols] += dout[:, :, i:i + 1, j:j + 1] / dtype.type(area)
        return dx
