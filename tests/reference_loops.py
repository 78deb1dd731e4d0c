"""Slow, obviously-correct reference implementations: the oracles the layer tests compare against.

Every function here works on PyTorch's NCHW layout and is written to be read, not to be fast: a plain Python
loop over the output positions, each computing one small NumPy reduction over its input window. None of them
shares code with :mod:`numpy_densenet.nn` (no im2col, no channel-major layout, no strided window slices),
so an agreement between the two is evidence that both are right.

Output size along one spatial axis, for an input of length ``L``, kernel ``k``, stride ``s``, padding ``p``
and dilation ``d`` (``ceil_mode=False``)::

    L_out = floor((L + 2p - d*(k - 1) - 1) / s) + 1

These functions are test oracles; they check their arguments only as much as they need to compute.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["adaptive_avgpool2d_loop", "avgpool2d_loop", "batchnorm2d_train_reference", "conv2d_loop",
           "maxpool2d_backward_loop", "maxpool2d_loop", "output_size"]


def _pair(value):
    """``3 -> (3, 3)``; ``(2, 3) -> (2, 3)``."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    a, b = value
    return int(a), int(b)


def output_size(size, kernel, stride, padding, dilation=1):
    """Output length along one axis: ``floor((size + 2*padding - dilation*(kernel-1) - 1) / stride) + 1``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pad(x, padding, value):
    """Return ``x`` of shape (N, C, H, W) with ``padding = (ph, pw)`` rows/columns of ``value`` on each side."""
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), mode="constant", constant_values=value)


def conv2d_loop(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """2-D cross-correlation (``torch.nn.functional.conv2d`` with ``groups=1``), one output value at a time.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
    weight : ndarray, shape (C_out, C_in, kh, kw)
    bias : ndarray, shape (C_out,), optional
    stride, padding, dilation : int or (int, int)
        Padding is with zeros.

    Returns
    -------
    y : ndarray, shape (N, C_out, Ho, Wo)
        ``y[n, o, i, j] = bias[o] + sum over c, a, b of
        weight[o, c, a, b] * x_padded[n, c, i*sh + a*dh, j*sw + b*dw]``,
        with ``Ho = floor((H + 2ph - dh*(kh-1) - 1)/sh) + 1`` and likewise ``Wo``.
    """
    x, weight = np.asarray(x), np.asarray(weight)
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    N, C, H, W = x.shape
    O, C_w, kh, kw = weight.shape
    if C_w != C:
        raise ValueError(f"conv2d_loop: x has {C} channels, weight expects {C_w}")
    Ho, Wo = output_size(H, kh, sh, ph, dh), output_size(W, kw, sw, pw, dw)
    if Ho < 1 or Wo < 1:
        raise ValueError("conv2d_loop: the (dilated) kernel is larger than the padded input")
    xp = _pad(x, (ph, pw), 0)
    dtype = np.result_type(x, weight)
    y = np.zeros((N, O, Ho, Wo), dtype=dtype)
    for n in range(N):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    top, left = i * sh, j * sw
                    # The receptive field: kh x kw input pixels, dh rows and dw columns apart.
                    window = xp[n, :, top:top + dh * (kh - 1) + 1:dh, left:left + dw * (kw - 1) + 1:dw]
                    y[n, o, i, j] = np.sum(window * weight[o])
            if bias is not None:
                y[n, o] += bias[o]
    return y


def maxpool2d_loop(x, kernel_size, stride=None, padding=0, return_indices=False):
    """Max pooling (``torch.nn.functional.max_pool2d``, ``dilation=1``, ``ceil_mode=False``).

    Padding acts as ``-inf``: it is never the maximum of a window that holds a real value.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
    return_indices : bool
        Also return where each maximum came from.

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo)
        ``y[n, c, i, j]`` is the maximum of the kh x kw window whose top-left corner is
        ``(i*sh - ph, j*sw - pw)`` in unpadded coordinates.
    indices : ndarray of int, shape (N, C, Ho, Wo), only if ``return_indices``
        The flat index ``row * W + col`` into the unpadded H x W plane of the element chosen as the maximum:
        the *first* maximal element of the window in row-major window order (``np.argmax`` picks the first
        of equal values). This is where the gradient of ``y[n, c, i, j]`` goes.
    """
    x = np.asarray(x)
    (kh, kw), (ph, pw) = _pair(kernel_size), _pair(padding)
    sh, sw = (kh, kw) if stride is None else _pair(stride)
    N, C, H, W = x.shape
    Ho, Wo = output_size(H, kh, sh, ph), output_size(W, kw, sw, pw)
    xp = _pad(x, (ph, pw), -np.inf)
    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    indices = np.empty((N, C, Ho, Wo), dtype=np.int64)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    window = xp[n, c, i * sh:i * sh + kh, j * sw:j * sw + kw]
                    a, b = np.unravel_index(np.argmax(window), window.shape)   # first max, row-major
                    y[n, c, i, j] = window[a, b]
                    row, col = i * sh + a - ph, j * sw + b - pw                   # back to unpadded coordinates
                    indices[n, c, i, j] = row * W + col
    return (y, indices) if return_indices else y


def maxpool2d_backward_loop(x, dout, kernel_size, stride=None, padding=0):
    """Input gradient of :func:`maxpool2d_loop`: each ``dout`` value goes to its window's first maximum.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        The forward input.
    dout : ndarray, shape (N, C, Ho, Wo)
        The gradient of the loss with respect to the pooled output.
    kernel_size, stride, padding
        As in :func:`maxpool2d_loop`.

    Returns
    -------
    dx : ndarray, shape (N, C, H, W)
        Zero except at chosen maxima, where the gradients of every window that chose that element add up.
    """
    x, dout = np.asarray(x), np.asarray(dout)
    _, indices = maxpool2d_loop(x, kernel_size, stride, padding, return_indices=True)
    N, C, H, W = x.shape
    dx = np.zeros((N, C, H * W), dtype=dout.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(indices.shape[2]):
                for j in range(indices.shape[3]):
                    dx[n, c, indices[n, c, i, j]] += dout[n, c, i, j]
    return dx.reshape(N, C, H, W)


def avgpool2d_loop(x, kernel_size, stride=None, padding=0, count_include_pad=True):
    """Average pooling (``torch.nn.functional.avg_pool2d``, ``ceil_mode=False``).

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    kernel_size : int or (int, int)
    stride : int or (int, int), optional
        Defaults to ``kernel_size``.
    padding : int or (int, int)
        Zero padding.
    count_include_pad : bool
        Divide every window sum by ``kh * kw`` (True), or by the number of real, unpadded elements in the
        window (False).

    Returns
    -------
    y : ndarray, shape (N, C, Ho, Wo)
    """
    x = np.asarray(x)
    (kh, kw), (ph, pw) = _pair(kernel_size), _pair(padding)
    sh, sw = (kh, kw) if stride is None else _pair(stride)
    N, C, H, W = x.shape
    Ho, Wo = output_size(H, kh, sh, ph), output_size(W, kw, sw, pw)
    xp = _pad(x, (ph, pw), 0)
    real = _pad(np.ones((1, 1, H, W)), (ph, pw), 0)[0, 0]       # 1 on the input, 0 on the padding
    y = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    for i in range(Ho):
        for j in range(Wo):
            rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
            divisor = kh * kw if count_include_pad else real[rows, cols].sum()
            for n in range(N):
                for c in range(C):
                    y[n, c, i, j] = xp[n, c, rows, cols].sum() / divisor
    return y


def adaptive_avgpool2d_loop(x, output_size):
    """Adaptive average pooling (``torch.nn.functional.adaptive_avg_pool2d``).

    Output cell ``(i, j)`` of an ``oh x ow`` output averages input rows ``floor(i*H/oh)`` up to
    ``ceil((i+1)*H/oh) - 1`` and columns ``floor(j*W/ow)`` up to ``ceil((j+1)*W/ow) - 1``. When ``H`` is not
    a multiple of ``oh`` neighbouring cells overlap or differ in size; the cells always cover the input.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    output_size : int or (int, int)

    Returns
    -------
    y : ndarray, shape (N, C, oh, ow)
    """
    x = np.asarray(x)
    oh, ow = _pair(output_size)
    N, C, H, W = x.shape
    y = np.empty((N, C, oh, ow), dtype=x.dtype)
    for i in range(oh):
        r0, r1 = math.floor(i * H / oh), math.ceil((i + 1) * H / oh)
        for j in range(ow):
            c0, c1 = math.floor(j * W / ow), math.ceil((j + 1) * W / ow)
            for n in range(N):
                for c in range(C):
                    y[n, c, i, j] = x[n, c, r0:r1, c0:c1].mean()
    return y


def batchnorm2d_train_reference(x, weight, bias, eps):
    """Batch normalisation in training mode, in closed form (``torch.nn.functional.batch_norm``, training).

    For each channel ``c``, over its ``M = N*H*W`` values::

        mean[c] = sum(x[:, c]) / M
        var[c]  = sum((x[:, c] - mean[c])**2) / M                 (biased: used to normalise)
        y[:, c] = (x[:, c] - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]

    The running statistics are updated with the *unbiased* variance ``var[c] * M / (M - 1)``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
    weight, bias : ndarray, shape (C,)
    eps : float

    Returns
    -------
    y : ndarray, shape (N, C, H, W)
    mean : ndarray, shape (C,)
        The batch mean.
    var : ndarray, shape (C,)
        The biased batch variance.
    """
    x = np.asarray(x)
    N, C, H, W = x.shape
    y = np.empty_like(x)
    mean = np.empty(C, dtype=x.dtype)
    var = np.empty(C, dtype=x.dtype)
    M = N * H * W
    for c in range(C):
        values = x[:, c]
        mean[c] = values.sum() / M
        var[c] = ((values - mean[c]) ** 2).sum() / M
        y[:, c] = (values - mean[c]) / np.sqrt(var[c] + eps) * weight[c] + bias[c]
    return y, mean, var
