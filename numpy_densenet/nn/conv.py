"""2-D convolution by im2col + one GEMM, in channel-major (C, N, H, W) layout.

im2col is a loop over the kh x kw kernel offsets; each offset copies one strided slice of the padded input,
so the whole patch matrix is built by kh*kw large memcpy-like copies (no fancy indexing). Its adjoint,
col2im, is the same loop with ``+=``. A 1x1 convolution with stride 1 and no padding needs no patch matrix
at all: in channel-major layout the input already *is* the (C, N*H*W) matrix.
"""
from __future__ import annotations

import math

import numpy as np

from ._checks import check_grad, check_input, pair, take_cache
from .module import Parameter, SpatialModule, check_float_dtype


def conv_output_size(size, kernel, stride, padding, dilation):
    """Output length along one axis: floor((size + 2p - d(k-1) - 1) / s) + 1 (may be <= 0 if invalid)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def pad_cnhw(x, padding, value=0.0):
    """Return ``x`` (C, N, H, W) with ``padding = (ph, pw)`` rows/cols of ``value`` on each side (a copy)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    C, N, H, W = x.shape
    xp = np.full((C, N, H + 2 * ph, W + 2 * pw), value, dtype=x.dtype)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    return xp


def window_slices(i, j, out_hw, stride, dilation):
    """The strided (rows, cols) slices of the padded input seen by kernel offset (i, j) for every output."""
    (Ho, Wo), (sh, sw), (dh, dw) = out_hw, stride, dilation
    return (slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh),
            slice(j * dw, j * dw + sw * (Wo - 1) + 1, sw))


def im2col(x, kernel, stride, padding, dilation):
    """Patch matrix of ``x``.

    Parameters
    ----------
    x : ndarray, shape (C, N, H, W)

    Returns
    -------
    cols : ndarray, shape (C*kh*kw, N*Ho*Wo)
        Row ``(c, i, j)`` holds input channel ``c`` shifted by kernel offset ``(i, j)``, which matches a weight
        of shape (O, C, kh, kw) reshaped to (O, C*kh*kw).
    """
    C, N, H, W = x.shape
    kh, kw = kernel
    Ho = conv_output_size(H, kh, stride[0], padding[0], dilation[0])
    Wo = conv_output_size(W, kw, stride[1], padding[1], dilation[1])
    xp = pad_cnhw(x, padding)
    cols = np.empty((C, kh, kw, N, Ho, Wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = window_slices(i, j, (Ho, Wo), stride, dilation)
            cols[:, i, j] = xp[:, :, rows, columns]                       # (C, N, Ho, Wo) strided copy
    return cols.reshape(C * kh * kw, N * Ho * Wo)


def col2im(cols, x_shape, kernel, stride, padding, dilation):
    """Adjoint of :func:`im2col`: add each patch-matrix row back where it was read from.

    Parameters
    ----------
    cols : ndarray, shape (C*kh*kw, N*Ho*Wo)
    x_shape : tuple (C, N, H, W)

    Returns
    -------
    dx : ndarray, shape (C, N, H, W)
    """
    C, N, H, W = x_shape
    kh, kw = kernel
    (ph, pw) = padding
    Ho = conv_output_size(H, kh, stride[0], ph, dilation[0])
    Wo = conv_output_size(W, kw, stride[1], pw, dilation[1])
    cols = cols.reshape(C, kh, kw, N, Ho, Wo)
    dxp = np.zeros((C, N, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            rows, columns = window_slices(i, j, (Ho, Wo), stride, dilation)
            dxp[:, :, rows, columns] += cols[:, i, j]                     # overlapping windows add up
    if ph == 0 and pw == 0:
        return dxp
    return np.ascontiguousarray(dxp[:, :, ph:ph + H, pw:pw + W])


class Conv2d(SpatialModule):
    """2-D convolution (cross-correlation), PyTorch's ``nn.Conv2d`` semantics.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, padding, dilation : int or (int, int)
        Padding is with zeros.
    bias : bool
    dtype : float32 or float64
    generator : numpy.random.Generator, optional
        Source of the initial weights (PyTorch's default: uniform in +-1/sqrt(fan_in)).

    Shapes
    ------
    x : (N, C_in, H, W) -> y : (N, C_out, Ho, Wo), Ho = floor((H + 2p - d(k-1) - 1)/s) + 1.
    weight : (C_out, C_in, kh, kw); bias : (C_out,).
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 dtype=np.float32, generator=None):
        super().__init__()
        for arg, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Conv2d: {arg} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "Conv2d: kernel_size", 1)
        self.stride = pair(stride, "Conv2d: stride", 1)
        self.padding = pair(padding, "Conv2d: padding", 0)
        self.dilation = pair(dilation, "Conv2d: dilation", 1)
        dt = check_float_dtype(dtype)
        rng = generator if generator is not None else np.random.default_rng()
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        self.weight = Parameter(rng.uniform(-bound, bound, size=shape).astype(dt))
        self.bias = Parameter(rng.uniform(-bound, bound, size=self.out_channels).astype(dt)) if bias else None
        self._cache = None

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        return s + ("" if self.bias is not None else ", bias=False")

    @property
    def _is_pointwise(self):
        return self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0)

    def output_shape(self, H, W):
        """(Ho, Wo) for an H x W input."""
        return tuple(conv_output_size(s, k, st, p, d) for s, k, st, p, d in
                     zip((H, W), self.kernel_size, self.stride, self.padding, self.dilation))

    def forward_cnhw(self, x):
        """x: (C_in, N, H, W) -> y: (C_out, N, Ho, Wo)."""
        x = check_input(self, x, 4, "(C, N, H, W)", self.weight.dtype)
        C, N, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"Conv2d: input has {C} channels, expected in_channels={self.in_channels} "
                             f"(input shape {(N, C, H, W)} as NCHW)")
        Ho, Wo = self.output_shape(H, W)
        if Ho < 1 or Wo < 1:
            eff = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))
            raise ValueError(f"Conv2d: kernel size {eff} (with dilation) is larger than the padded input "
                             f"{(H + 2 * self.padding[0], W + 2 * self.padding[1])}")
        O = self.out_channels
        w2 = self.weight.data.reshape(O, -1)                                 # (O, C*kh*kw)
        if self._is_pointwise:
            cols = x.reshape(C, N * H * W)                                   # the input is the matrix
        else:
            cols = im2col(x, self.kernel_size, self.stride, self.padding, self.dilation)  # (C*kh*kw, N*Ho*Wo)
        y = w2 @ cols                                                        # (O, N*Ho*Wo)
        if self.bias is not None:
            y += self.bias.data[:, None]
        # Cache the input, not the patch matrix: cols is kh*kw times larger; backward rebuilds it.
        self._cache = (x, cols if self._is_pointwise else None)
        return y.reshape(O, N, Ho, Wo)

    def backward_cnhw(self, dout):
        """dout: (C_out, N, Ho, Wo) -> dx: (C_in, N, H, W); adds into weight.grad and bias.grad."""
        x, cols = take_cache(self)
        C, N, H, W = x.shape
        O = self.out_channels
        dout = check_grad(self, dout, (O, N) + self.output_shape(H, W), self.weight.dtype)
        d2 = dout.reshape(O, -1)                                             # (O, N*Ho*Wo)
        if cols is None:
            cols = im2col(x, self.kernel_size, self.stride, self.padding, self.dilation)
        # dW = d2 @ cols.T, computed as (cols @ d2.T).T: OpenBLAS runs this long-K product ~3x faster that way.
        self.weight.grad += (cols @ d2.T).T.reshape(self.weight.shape)      # (O, C*kh*kw)
        if self.bias is not None:
            self.bias.grad += d2.sum(axis=1)                                 # sum over N, Ho, Wo
        dcols = self.weight.data.reshape(O, -1).T @ d2                      # (C*kh*kw, N*Ho*Wo)
        if self._is_pointwise:
            return dcols.reshape(C, N, H, W)
        return col2im(dcols, x.shape, self.kernel_size, self.stride, self.padding, self.dilation)
