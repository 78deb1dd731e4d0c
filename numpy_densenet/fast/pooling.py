"""Fast pooling: :class:`numpy_densenet.nn.MaxPool2d`, ``AvgPool2d`` and ``AdaptiveAvgPool2d`` (their
specifications) computed in channel-major (C, N, H, W) layout; ``tests/test_fast_tier.py`` proves them equal.

Like im2col, each pool is a loop over the kh x kw window offsets, each reading one slice of the padded
input; backward is the same loop adding into the padded gradient. MaxPool2d with a stride s > 1 first splits
the padded input into its s x s stride phases (every s-th row and column, copied contiguous), so that each
of its overlapping windows reads a unit-stride slice of one phase instead of a stride-s gather, which NumPy
runs several times slower (for AvgPool's non-overlapping 2x2 windows the plain gather is as fast).
"""
from __future__ import annotations

import numpy as np

from ..nn import pooling as plain
from ..nn.checks import check_grad, check_input, take_cache
from ..nn.module import is_grad_enabled, saved
from .conv import pad_cnhw, window_slices
from .layout import ChannelMajor
from .norm import channel_blocks
from .threads import parallel_for

POOL_BLOCK_ELEMENTS = 1 << 19      # MaxPool2d: about this many input values per block of channels


class _Pool2d(ChannelMajor):
    """Channel-major geometry shared by the fast MaxPool2d and AvgPool2d."""

    def _geometry(self, x):
        x = check_input(self, x, 4, "(C, N, H, W)")
        return (x,) + self.output_shape(*x.shape[2:])

    def _windows(self, Ho, Wo):
        """Yield (k, rows, cols): window offset index k = i*kw + j and its strided slices."""
        kh, kw = self.kernel_size
        for i in range(kh):
            for j in range(kw):
                yield (i * kw + j,) + window_slices(i, j, (Ho, Wo), self.stride, (1, 1))

    def _phases(self, xp):
        """{(a, b): xp[:, :, a::sh, b::sw]} as contiguous copies (just {(0, 0): xp} for stride 1)."""
        (sh, sw), (kh, kw) = self.stride, self.kernel_size
        if (sh, sw) == (1, 1):
            return {(0, 0): xp}
        return {(a, b): np.ascontiguousarray(xp[:, :, a::sh, b::sw]) for a in range(min(sh, kh))
                for b in range(min(sw, kw))}

    def _phase_windows(self, Ho, Wo):
        """Yield (k, phase, rows, cols): window offset (i, j) reads rows i + s*t of the padded input, which
        are rows i//s + t of phase i % s: a unit-stride slice."""
        (sh, sw), (kh, kw) = self.stride, self.kernel_size
        for i in range(kh):
            for j in range(kw):
                yield (i * kw + j, (i % sh, j % sw), slice(i // sh, i // sh + Ho), slice(j // sw, j // sw + Wo))

    def _unphase(self, dphases, padded_shape, dtype):
        """The adjoint of :meth:`_phases`: interleave per-phase gradients back into the padded layout."""
        if (0, 0) in dphases and len(dphases) == 1 and self.stride == (1, 1):
            return dphases[(0, 0)]
        sh, sw = self.stride
        dxp = np.zeros(padded_shape, dtype=dtype)
        for (a, b), d in dphases.items():
            dxp[:, :, a::sh, b::sw] = d
        return dxp


class MaxPool2d(_Pool2d, plain.MaxPool2d):
    """:class:`numpy_densenet.nn.MaxPool2d` (its specification), channel-major, on the stride phases of its
    input and on all threads: PyTorch's ``nn.MaxPool2d`` (padding acts as -inf).

    Ties: the gradient goes to the *first* maximal element of each window in row-major window order (the
    same element PyTorch's CPU kernel picks), never split among tied elements.

    Shapes: (N, C, H, W) -> (N, C, Ho, Wo), Ho = floor((H + 2p - kh)/s) + 1.
    """

    def forward_cnhw(self, x):
        x, Ho, Wo = self._geometry(x)
        C, N, H, W = x.shape
        windows = list(self._phase_windows(Ho, Wo))
        out = np.empty((C, N, Ho, Wo), dtype=x.dtype)
        argmax = np.empty((C, N, Ho, Wo), dtype=np.uint16) if is_grad_enabled() else None

        def channels(c):                                                     # the threads share the channels
            phases = self._phases(pad_cnhw(x[c], self.padding, value=-np.inf))
            out[c] = -np.inf
            for _, phase, rows, cols in windows:
                np.maximum(out[c], phases[phase][:, :, rows, cols], out=out[c])  # NaN propagates, as PyTorch
            if argmax is not None:
                # Where each maximum came from: scanning the window offsets backwards, the last match
                # written is the first maximal element in row-major window order.
                argmax[c] = 0
                for k, phase, rows, cols in reversed(windows):
                    np.copyto(argmax[c], np.uint16(k), where=phases[phase][:, :, rows, cols] == out[c])

        parallel_for(channels, channel_blocks(C, N * H * W, POOL_BLOCK_ELEMENTS))
        self._cache = saved((argmax, x.shape, x.dtype)) if argmax is not None else saved(None)
        return out

    def backward_cnhw(self, dout):
        argmax, shape, dtype = take_cache(self)
        dout = check_grad(self, dout, argmax.shape, dtype)
        C, N, H, W = shape
        ph, pw = self.padding
        Ho, Wo = argmax.shape[2:]
        dx = np.empty(shape, dtype=dtype)

        def channels(c):                                                     # the threads share the channels
            padded = (c.stop - c.start, N, H + 2 * ph, W + 2 * pw)
            dphases = {phase: np.zeros(p.shape, dtype=dtype)
                       for phase, p in self._phases(np.empty(padded, dtype=np.uint8)).items()}
            for k, phase, rows, cols in self._phase_windows(Ho, Wo):
                dphases[phase][:, :, rows, cols] += dout[c] * (argmax[c] == k)  # route to the chosen element
            dx[c] = self._unphase(dphases, padded, dtype)[:, :, ph:ph + H, pw:pw + W]

        parallel_for(channels, channel_blocks(C, N * H * W, POOL_BLOCK_ELEMENTS))
        return dx


class AvgPool2d(_Pool2d, plain.AvgPool2d):
    """:class:`numpy_densenet.nn.AvgPool2d` (its specification), channel-major: PyTorch's ``nn.AvgPool2d``
    (ceil_mode=False).

    With ``count_include_pad=True`` (the default) every window is divided by kh*kw, padded zeros included;
    with ``False`` by the number of real (unpadded) elements in the window.

    Shapes: (N, C, H, W) -> (N, C, Ho, Wo).
    """

    def _divisor(self, H, W, Ho, Wo, dtype):
        kh, kw = self.kernel_size
        if self.count_include_pad or self.padding == (0, 0):
            return dtype.type(kh * kw)
        ones = pad_cnhw(np.ones((1, 1, H, W), dtype=dtype), self.padding)   # 1 inside, 0 in the padding
        count = np.zeros((Ho, Wo), dtype=dtype)
        for _, rows, cols in self._windows(Ho, Wo):
            count += ones[0, 0, rows, cols]
        return count                                                         # (Ho, Wo), broadcasts

    def forward_cnhw(self, x):
        x, Ho, Wo = self._geometry(x)
        xp = pad_cnhw(x, self.padding)
        C, N, H, W = x.shape
        out = np.zeros((C, N, Ho, Wo), dtype=x.dtype)
        for _, rows, cols in self._windows(Ho, Wo):
            out += xp[:, :, rows, cols]
        divisor = self._divisor(H, W, Ho, Wo, x.dtype)
        out /= divisor
        self._cache = saved((x.shape, (Ho, Wo), divisor, x.dtype))
        return out

    def backward_cnhw(self, dout):
        shape, (Ho, Wo), divisor, dtype = take_cache(self)
        C, N, H, W = shape
        dout = check_grad(self, dout, (C, N, Ho, Wo), dtype)
        ph, pw = self.padding
        share = dout / divisor                                               # each element's share
        dxp = np.zeros((C, N, H + 2 * ph, W + 2 * pw), dtype=dtype)
        for _, rows, cols in self._windows(Ho, Wo):
            dxp[:, :, rows, cols] += share
        if ph == 0 and pw == 0:
            return dxp
        return np.ascontiguousarray(dxp[:, :, ph:ph + H, pw:pw + W])


class AdaptiveAvgPool2d(ChannelMajor, plain.AdaptiveAvgPool2d):
    """:class:`numpy_densenet.nn.AdaptiveAvgPool2d` (its specification), channel-major: PyTorch's
    ``nn.AdaptiveAvgPool2d``.

    Output cell (i, j) averages rows floor(i*H/oh) .. ceil((i+1)*H/oh) - 1 and likewise for columns.
    ``AdaptiveAvgPool2d(1)`` is the global average pool of DenseNet's head.

    Shapes: (N, C, H, W) -> (N, C, oh, ow).
    """

    def forward_cnhw(self, x):
        x = check_input(self, x, 4, "(C, N, H, W)")
        C, N, H, W = x.shape
        oh, ow = self.output_size
        if (oh, ow) == (1, 1):
            out = x.mean(axis=(2, 3), keepdims=True)                         # global average pool
        else:
            out = np.empty((C, N, oh, ow), dtype=x.dtype)
            for i, j, rows, cols in self.cells(H, W):
                out[:, :, i, j] = x[:, :, rows, cols].mean(axis=(2, 3))
        self._cache = saved((x.shape, x.dtype))
        return out

    def backward_cnhw(self, dout):
        shape, dtype = take_cache(self)
        C, N, H, W = shape
        dout = check_grad(self, dout, (C, N) + self.output_size, dtype)
        dx = np.zeros(shape, dtype=dtype)
        for i, j, rows, cols in self.cells(H, W):
            area = (rows.stop - rows.start) * (cols.stop - cols.start)
            dx[:, :, rows, cols] += dout[:, :, i:i + 1, j:j + 1] / dtype.type(area)
        return dx
