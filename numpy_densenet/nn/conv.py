"""2-D convolution by im2col: the plain, readable specification (PyTorch's ``nn.Conv2d``, groups=1).

A convolution is a matrix product once every input window is laid out as a column. ``im2col`` builds that
patch matrix with one strided-slice copy per kernel offset (a kh x kw loop, no fancy indexing):
``cols[n, c, i, j]`` is channel c of image n shifted by kernel offset (i, j), seen at every output position.
Then the forward pass is one GEMM of the weight, reshaped to (C_out, C_in*kh*kw), with the patch matrix.

Backward is two GEMMs and the adjoint of im2col (with dy laid out as (C_out, N*Ho*Wo)):

* dW = dy @ cols^T        (every output position contributes its window, times its gradient)
* dcols = W^T @ dy        (each window position receives the weight times the output gradient)
* dx = col2im(dcols)      (the same kh x kw loop, *adding* each window back where it was read from:
                           windows overlap, so an input value collects the gradients of all of them)

The fast tier's :class:`numpy_densenet.fast.Conv2d` computes the same thing channel-major, with 1x1 and
"shift" shortcuts and threads; ``tests/test_fast_tier.py`` proves the two equal.
"""
from __future__ import annotations

import math

import numpy as np

from .checks import check_generator, check_grad, check_input, pair, positive_int, take_cache
from .module import Module, Parameter, check_float_dtype, saved


def conv_output_size(size, kernel, stride, padding, dilation):
    """Output length along one axis: floor((size + 2p - d(k-1) - 1) / s) + 1 (may be <= 0 if invalid)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def im2col(x, kernel, stride, padding, dilation):
    """The patch matrix of ``x``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel, stride, padding, dilation : (int, int)

    Returns
    -------
    cols : ndarray, shape (C, kh, kw, N, Ho, Wo)
        ``cols[c, i, j, n, h, w] = x_padded[n, c, h*sh + i*dh, w*sw + j*dw]``: the value kernel offset (i, j)
        sees at output (h, w). Reshaped to (C*kh*kw, N*Ho*Wo) it has one column per output position, and row
        (c, i, j) matches the weight (C_out, C, kh, kw) reshaped to (C_out, C*kh*kw).
    """
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    Ho = conv_output_size(H, kh, sh, ph, dh)
    Wo = conv_output_size(W, kw, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))                 # zero padding: (N, C, H+2ph, W+2pw)
    cols = np.empty((C, kh, kw, N, Ho, Wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh)           # the rows offset i reads
            columns = slice(j * dw, j * dw + sw * (Wo - 1) + 1, sw)
            cols[:, i, j] = xp[:, :, rows, columns].transpose(1, 0, 2, 3)  # (C, N, Ho, Wo) strided copy
    return cols


def col2im(cols, x_shape, stride, padding, dilation):
    """Adjoint of :func:`im2col`: add every window value back where it was read from.

    Parameters
    ----------
    cols : ndarray, shape (C, kh, kw, N, Ho, Wo)
    x_shape : tuple (N, C, H, W)

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
    """
    N, C, H, W = x_shape
    _, kh, kw, _, Ho, Wo = cols.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh)
            columns = slice(j * dw, j * dw + sw * (Wo - 1) + 1, sw)
            dxp[:, :, rows, columns] += cols[:, i, j].transpose(1, 0, 2, 3)   # overlapping windows add up
    return dxp[:, :, ph:ph + H, pw:pw + W].copy()                          # drop the padding's gradient


class Conv2d(Module):
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
        self.in_channels = positive_int(in_channels, "Conv2d: in_channels")
        self.out_channels = positive_int(out_channels, "Conv2d: out_channels")
        self.kernel_size = pair(kernel_size, "Conv2d: kernel_size", 1)
        self.stride = pair(stride, "Conv2d: stride", 1)
        self.padding = pair(padding, "Conv2d: padding", 0)
        self.dilation = pair(dilation, "Conv2d: dilation", 1)
        dt = check_float_dtype(dtype)
        rng = check_generator(generator, "Conv2d")
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

    def output_shape(self, H, W):
        """(Ho, Wo) for an H x W input."""
        return tuple(conv_output_size(s, k, st, p, d) for s, k, st, p, d in
                     zip((H, W), self.kernel_size, self.stride, self.padding, self.dilation))

    def check(self, x):
        """Check an (N, C_in, H, W) input against the layer; return (Ho, Wo)."""
        N, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"Conv2d: input has {C} channels, expected in_channels={self.in_channels} "
                             f"(input shape {x.shape} as NCHW)")
        Ho, Wo = self.output_shape(H, W)
        if Ho < 1 or Wo < 1:
            eff = tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation))
            raise ValueError(f"Conv2d: kernel size {eff} (with dilation) is larger than the padded input "
                             f"{(H + 2 * self.padding[0], W + 2 * self.padding[1])}")
        return Ho, Wo

    def forward(self, x):
        """x: (N, C_in, H, W) -> y: (N, C_out, Ho, Wo)."""
        x = check_input(self, x, 4, "(N, C, H, W)", self.weight.dtype)
        Ho, Wo = self.check(x)
        N, O = x.shape[0], self.out_channels
        cols = im2col(x, self.kernel_size, self.stride, self.padding, self.dilation)  # (C, kh, kw, N, Ho, Wo)
        cols = cols.reshape(-1, N * Ho * Wo)                                # (C*kh*kw, N*Ho*Wo)
        w = self.weight.data.reshape(O, -1)                                 # (O, C*kh*kw)
        y = w @ cols                                                        # (O, N*Ho*Wo): one GEMM
        if self.bias is not None:
            y += self.bias.data[:, None]
        self._cache = saved(x)            # the input, not cols (kh*kw times larger): backward rebuilds cols
        return np.ascontiguousarray(y.reshape(O, N, Ho, Wo).transpose(1, 0, 2, 3))  # (N, O, Ho, Wo)

    def backward(self, dout):
        """dout: (N, C_out, Ho, Wo) -> dx: (N, C_in, H, W); adds into weight.grad and bias.grad."""
        x = take_cache(self)
        (N, C, H, W), O = x.shape, self.out_channels
        Ho, Wo = self.output_shape(H, W)
        dout = check_grad(self, dout, (N, O, Ho, Wo), self.weight.dtype)
        dy = dout.transpose(1, 0, 2, 3).reshape(O, N * Ho * Wo)             # (O, N*Ho*Wo), the GEMMs' layout
        cols = im2col(x, self.kernel_size, self.stride, self.padding, self.dilation).reshape(-1, N * Ho * Wo)
        if self.bias is not None:
            self.bias.grad += dy.sum(axis=1)                                # sum over N, Ho, Wo
        self.weight.grad += (dy @ cols.T).reshape(self.weight.shape)        # (O, C*kh*kw)
        dcols = self.weight.data.reshape(O, -1).T @ dy                      # (C*kh*kw, N*Ho*Wo)
        dcols = dcols.reshape((C,) + self.kernel_size + (N, Ho, Wo))        # (C, kh, kw, N, Ho, Wo)
        return col2im(dcols, x.shape, self.stride, self.padding, self.dilation)   # (N, C, H, W)
