"""Fast 2-D convolution: :class:`numpy_densenet.nn.Conv2d` computed channel-major, (C, N, H, W), on several
threads, by one of three GEMM-based algorithms. Its specification is the plain ``nn.Conv2d`` (im2col, one
GEMM); ``tests/test_fast_tier.py`` proves the two equal on every path below.

* pointwise (1x1, stride 1, no padding): in channel-major layout the input already *is* the (C, N*H*W)
  matrix, so the convolution is one GEMM with no copy at all.
* im2col: a loop over the kh x kw kernel offsets copies one strided slice of the padded input each, building
  the (C*kh*kw, N*Ho*Wo) patch matrix with kh*kw memcpy-like copies (no fancy indexing); then one GEMM. Its
  adjoint, col2im, is the same loop with ``+=``.
* shift (stride 1 and fewer output than input channels, like DenseNet's 3x3 convs from 4k to k channels):
  the GEMM comes first, on the input itself, giving every kernel offset's contribution at every input
  position, (kh*kw*O, N*H*W); the output is the sum of kh*kw shifted windows of it, each clipped where it
  would read the zero padding (so no padded copy is made). Backward builds the shifted copies of the *output*
  gradient instead of the input. Both copy O*kh*kw rows instead of C*kh*kw, so for O < C far less memory is
  moved than by im2col. When the output is as large as the input (DenseNet's 3x3 convs, padding 1) each
  window is one long slice over the flattened images, the few values it would read across a row's or an
  image's edge zeroed first (see ``Conv2d._flat_shifts``): long contiguous adds instead of many short rows.
"""
from __future__ import annotations

import numpy as np

from ..nn import conv as plain
from ..nn.checks import check_grad, check_input, take_cache
from ..nn.module import saved
from .layout import ChannelMajor
from .threads import MIN_ELEMENTS_TO_SPLIT, blas_single_threaded, get_num_threads, matmul, parallel_for, split

SHIFT_CHUNK_ELEMENTS = 1 << 18      # shift algorithm: about this many offset-matrix values per chunk of images
IM2COL_CHUNK_ELEMENTS = 1 << 18     # im2col algorithm: about this many patch-matrix values per chunk of images


conv_output_size = plain.conv_output_size


def _chunkwise(function, chunks):
    """parallel_for over chunks of images; several chunks run on all threads with OpenBLAS on one thread each,
    a single chunk (or every chunk, with one thread of ours) runs here and its products go through
    :func:`matmul` (split between the threads, or left to OpenBLAS as the caller set it)."""
    if len(chunks) == 1 or get_num_threads() == 1:
        return [function(chunk) for chunk in chunks]
    with blas_single_threaded():
        return parallel_for(function, chunks)


def image_chunks(N, per_image, elements):
    """Slices of a batch of N images, a few images each, so that a chunk's matrix of ``per_image`` values an
    image (the shift algorithm's offset matrix, im2col's patch matrix) holds about ``elements``; a single
    slice of all N if that gives fewer chunks than threads, whose products are then split between the threads
    instead. Depends only on the shapes and the thread count."""
    chunks = split(N, max(1, N * per_image // elements))
    return chunks if len(chunks) >= get_num_threads() else [slice(0, N)]


def check_out(layer, out, shape, x):
    """Raise a ValueError naming ``layer`` unless ``out`` is None or a C-contiguous array of ``shape`` and x's
    dtype that does not overlap x (which the layer reads while writing out)."""
    if out is None:
        return
    if out.shape != tuple(shape) or out.dtype != x.dtype or not out.flags.c_contiguous:
        raise ValueError(f"{type(layer).__name__}: out must be a C-contiguous array of shape {tuple(shape)} and "
                         f"dtype {x.dtype}, got {out.shape} {out.dtype}")
    if np.may_share_memory(out, x):
        raise ValueError(f"{type(layer).__name__}: out must not overlap the input")


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
    cols = np.empty((C, kh, kw, N, Ho, Wo), dtype=x.dtype)

    def images(n):                                                        # the threads share the images
        xp = pad_cnhw(x[:, n], padding)
        for i in range(kh):
            for j in range(kw):
                rows, columns = window_slices(i, j, (Ho, Wo), stride, dilation)
                cols[:, i, j, n] = xp[:, :, rows, columns]                # (C, images, Ho, Wo) strided copy

    parallel_for(images, split(N, get_num_threads() if cols.size >= MIN_ELEMENTS_TO_SPLIT else 1))
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
    dx = np.empty(x_shape, dtype=cols.dtype)

    def images(n):                                                        # the threads share the images
        dxp = np.zeros((C, n.stop - n.start, H + 2 * ph, W + 2 * pw), dtype=cols.dtype)
        for i in range(kh):
            for j in range(kw):
                rows, columns = window_slices(i, j, (Ho, Wo), stride, dilation)
                dxp[:, :, rows, columns] += cols[:, i, j, n]              # overlapping windows add up
        dx[:, n] = dxp[:, :, ph:ph + H, pw:pw + W]

    parallel_for(images, split(N, get_num_threads() if cols.size >= MIN_ELEMENTS_TO_SPLIT else 1))
    return dx


class Conv2d(ChannelMajor, plain.Conv2d):
    """:class:`numpy_densenet.nn.Conv2d` (its specification: same parameters, init and results), computed
    channel-major by the pointwise, shift or im2col algorithm (see the module docstring) on all threads.

    Shapes: x (N, C_in, H, W) -> y (N, C_out, Ho, Wo) through ``forward``; (C, N, H, W) through
    ``forward_cnhw``.
    """

    @property
    def algorithm(self):
        """"pointwise", "shift" or "im2col" (see the module docstring)."""
        if self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0):
            return "pointwise"
        if self.stride == (1, 1) and self.out_channels < self.in_channels:
            return "shift"
        return "im2col"

    def output_shape(self, H, W):
        """(Ho, Wo) for an H x W input."""
        return tuple(conv_output_size(s, k, st, p, d) for s, k, st, p, d in
                     zip((H, W), self.kernel_size, self.stride, self.padding, self.dilation))

    def forward_cnhw(self, x, keep_input=True, out=None):
        """x: (C_in, N, H, W) -> y: (C_out, N, Ho, Wo).

        With ``keep_input=False`` the input is not cached and ``backward_cnhw`` must be handed it again
        (the memory-efficient dense layer recomputes it instead of storing it). ``out``, a C-contiguous array
        of y's shape and dtype not overlapping x, receives y instead of a new array.
        """
        x = check_input(self, x, 4, "(C, N, H, W)", self.weight.dtype)
        C, N, H, W = x.shape
        Ho, Wo = self.check(x.transpose(1, 0, 2, 3))
        O = self.out_channels
        check_out(self, out, (O, N, Ho, Wo), x)
        algorithm = self.algorithm
        if algorithm == "shift":
            y = self._shift_forward(x, Ho, Wo, out)                          # (O, N, Ho, Wo)
        elif algorithm == "im2col":
            y = self._im2col_forward(x, Ho, Wo, out)
        else:                                                                # the input is the matrix
            y = matmul(self.weight.data.reshape(O, C), x.reshape(C, N * H * W),
                       out=None if out is None else out.reshape(O, -1)).reshape(O, N, Ho, Wo)
        if self.bias is not None:
            y += self.bias.data[:, None, None, None]
        # Cache the input, not the patch matrix: cols is kh*kw times larger; backward rebuilds it.
        self._cache = saved((x.shape, x if keep_input else None))
        return y if out is None else out

    def backward_cnhw(self, dout, x=None, out=None):
        """dout: (C_out, N, Ho, Wo) -> dx: (C_in, N, H, W); adds into weight.grad and bias.grad.

        ``x`` is the forward input, needed only if forward ran with ``keep_input=False``. ``out``, an array of
        dx's shape and dtype, receives dx instead of a new array; it may be the forward input itself (every
        algorithm reads a piece of the input before it writes that piece of dx), as a dense layer does.
        """
        shape, cached = take_cache(self)
        if cached is None:
            if x is None or x.shape != shape:
                raise RuntimeError(f"Conv2d.backward: forward ran with keep_input=False, so backward needs the "
                                   f"input of shape {shape} again, got {None if x is None else x.shape}")
        else:
            x = cached
        C, N, H, W = x.shape
        O = self.out_channels
        dout = check_grad(self, dout, (O, N) + self.output_shape(H, W), self.weight.dtype)
        if out is not None and (out.shape != x.shape or out.dtype != x.dtype or not out.flags.c_contiguous):
            raise ValueError(f"Conv2d.backward: out must be a C-contiguous array of the input's shape {x.shape} "
                             f"and dtype {x.dtype}, got {out.shape} {out.dtype}")
        if self.bias is not None:
            self.bias.grad += dout.reshape(O, -1).sum(axis=1)                # sum over N, Ho, Wo
        algorithm = self.algorithm
        if algorithm == "shift":
            return self._shift_backward(x, dout, out)
        if algorithm == "im2col":
            return self._im2col_backward(x, dout, out)
        d2 = dout.reshape(O, -1)                                             # (O, N*H*W)
        # dW = d2 @ x2.T, computed as (x2 @ d2.T).T: OpenBLAS runs this long-K product ~3x faster that way.
        self.weight.grad += matmul(x.reshape(C, -1), d2.T, split_inner=True).T.reshape(self.weight.shape)
        dx = matmul(self.weight.data.reshape(O, C).T, d2, out=None if out is None else out.reshape(C, -1))
        return dx.reshape(x.shape) if out is None else out                  # dx = W^T @ d2, (C, N*H*W)

    # -- the im2col algorithm ----------------------------------------------------------------------------------
    def _im2col_forward(self, x, Ho, Wo, out=None):
        """y = W2 @ cols, W2 the weight as (O, C*kh*kw), cols the patch matrix of a few images at a time (the
        chunks shared out between the threads: the patch matrix, kh*kw times the input, never exists for the
        whole batch). y is written into ``out`` if given."""
        C, N = x.shape[:2]
        O = self.out_channels
        w2 = self.weight.data.reshape(O, -1)                                 # (O, C*kh*kw)
        y = np.empty((O, N, Ho, Wo), dtype=x.dtype) if out is None else out
        chunks = image_chunks(N, w2.shape[1] * Ho * Wo, IM2COL_CHUNK_ELEMENTS)
        geometry = (self.kernel_size, self.stride, self.padding, self.dilation)

        def images(n):                                                       # images n: columns of y's (O, N*Ho*Wo)
            matmul(w2, im2col(x[:, n], *geometry), out=y.reshape(O, -1)[:, n.start * Ho * Wo:n.stop * Ho * Wo])

        _chunkwise(images, chunks)
        return y

    def _im2col_backward(self, x, dout, out=None):
        """dW = dout2 @ cols^T and dcols = W2^T @ dout2, then dx = col2im(dcols); a few images at a time, as
        forward, the chunks' shares of dW summed in a fixed order. dx is written into ``out`` if given, which
        may be x (a chunk's patch matrix is built before its dx is written)."""
        C, N, H, W = x.shape
        O, Ho, Wo = dout.shape[0], *dout.shape[2:]
        w2 = self.weight.data.reshape(O, -1)                                 # (O, C*kh*kw)
        dx = np.empty(x.shape, dtype=x.dtype) if out is None else out
        geometry = (self.kernel_size, self.stride, self.padding, self.dilation)
        dout2 = dout.reshape(O, -1)                                          # (O, N*Ho*Wo)

        def images(n):                                                       # images n
            cols = im2col(x[:, n], *geometry)                               # (C*kh*kw, n*Ho*Wo)
            d2 = dout2[:, n.start * Ho * Wo:n.stop * Ho * Wo]                # (O, n*Ho*Wo), its columns
            # dW = d2 @ cols.T, computed as (cols @ d2.T).T: OpenBLAS runs this long-K product ~3x faster so.
            dW = matmul(cols, d2.T, split_inner=True)                        # this chunk's: (C*kh*kw, O)
            dx[:, n] = col2im(matmul(w2.T, d2), (C, n.stop - n.start, H, W), *geometry)
            return dW

        dW = sum(_chunkwise(images, image_chunks(N, w2.shape[1] * Ho * Wo, IM2COL_CHUNK_ELEMENTS)))
        self.weight.grad += dW.T.reshape(self.weight.shape)
        return dx

    # -- the shift algorithm (stride 1) ------------------------------------------------------------------------
    def _offset_weights(self):
        """The weight as (kh*kw*O, C): row (i, j, o) holds weight[o, :, i, j]."""
        O, C, kh, kw = self.weight.shape
        return self.weight.data.transpose(2, 3, 0, 1).reshape(kh * kw * O, C)

    def _offset_ranges(self, H, W, Ho, Wo):
        """For each kernel offset (i, j): the output rows/cols it reaches and the input rows/cols they read.

        Output (h, w) reads input (h + i*dh - ph, w + j*dw - pw); positions that would read the zero padding
        are left out, so no padded copy of the input is ever made.
        """
        (ph, pw), (dh, dw) = self.padding, self.dilation
        kh, kw = self.kernel_size
        for i in range(kh):
            r0, r1 = max(0, ph - i * dh), min(Ho, H + ph - i * dh)
            for j in range(kw):
                c0, c1 = max(0, pw - j * dw), min(Wo, W + pw - j * dw)
                if r0 < r1 and c0 < c1:
                    out = (slice(r0, r1), slice(c0, c1))
                    inp = (slice(r0 + i * dh - ph, r1 + i * dh - ph), slice(c0 + j * dw - pw, c1 + j * dw - pw))
                    yield i, j, out, inp

    def _flat_shifts(self, H, W):
        """For a convolution whose output is as large as its input (padding = dilation*(kernel-1)/2): each kernel
        offset (i, j) that reaches the output, as (i, j, shift, rows, cols).

        Output (h, w) reads input (h + a, w + b), a = i*dh - ph, b = j*dw - pw: over the flattened positions
        of a chunk of images, output p reads input p + shift with shift = a*W + b, so one long slice per offset
        does the whole shifted add. Only the input ``rows`` and ``cols`` (slices) would be read across a row's
        or an image's edge, where the padding is: their values are zeroed first.
        """
        (ph, pw), (dh, dw) = self.padding, self.dilation
        kh, kw = self.kernel_size
        for i in range(kh):
            a = i * dh - ph
            for j in range(kw):
                b = j * dw - pw
                if abs(a) < H and abs(b) < W:                                # else it only reads padding
                    rows = slice(0, a) if a > 0 else slice(H + a, H)         # empty for a = 0
                    cols = slice(0, b) if b > 0 else slice(W + b, W)
                    yield i, j, a * W + b, rows, cols

    def _image_chunks(self, N, H, W):
        """Slices of a few images each, so that one chunk's (kh*kw*O, images*H*W) offset matrix fits in cache
        (the offsets never reach across images): see :func:`image_chunks`."""
        return image_chunks(N, self.kernel_size[0] * self.kernel_size[1] * self.out_channels * H * W,
                            SHIFT_CHUNK_ELEMENTS)

    def _shift_forward(self, x, Ho, Wo, out=None):
        """y[o, p] = sum over (i, j) of Y[(i, j, o), p + offset(i, j)], with Y = W_offsets @ x.

        A few images at a time, the chunks shared out between the threads: Y never exists for the whole batch.
        y is written into ``out`` if given.
        """
        C, N, H, W = x.shape
        O, kh, kw = self.out_channels, *self.kernel_size
        w_offsets = self._offset_weights()                                   # (kh*kw*O, C)
        y = np.empty((O, N, Ho, Wo), dtype=x.dtype) if out is None else out

        def images(n):                                                       # images n
            Y = matmul(w_offsets, x[:, n].reshape(C, -1))                    # (kh*kw*O, images*H*W)
            Y = Y.reshape(kh, kw, O, -1, H, W)
            y[:, n] = 0
            if (Ho, Wo) == (H, W):                                           # flat shifts: whole rows at once
                L = Y.shape[3] * H * W
                yf = y[:, n].reshape(O, L)                                   # (O, images*H*W)
                for i, j, shift, rows, cols in self._flat_shifts(H, W):
                    Y[i, j][:, :, rows] = 0                                  # inputs whose reads would wrap
                    Y[i, j][:, :, :, cols] = 0                               # into the next row or image
                    Yf = Y[i, j].reshape(O, L)
                    if shift >= 0:                                           # output p reads input p + shift
                        yf[:, :L - shift] += Yf[:, shift:]
                    else:
                        yf[:, -shift:] += Yf[:, :L + shift]
                return
            for i, j, (rows, cols), (in_rows, in_cols) in self._offset_ranges(H, W, Ho, Wo):
                y[:, n, rows, cols] += Y[i, j][:, :, in_rows, in_cols]       # offset (i, j)'s contribution

        _chunkwise(images, self._image_chunks(N, H, W))
        return y

    def _shift_backward(self, x, dout, out=None):
        """G[(i, j, o), q] = dout[o, q - offset(i, j)]; then dW = G @ x^T and dx = W_offsets^T @ G.

        A few images at a time, as forward; the chunks' shares of dW are summed in a fixed order. dx is written
        into ``out`` if given, which may be x (a chunk's images of x are read before their dx is written).
        """
        C, N, H, W = x.shape
        O, kh, kw = self.out_channels, *self.kernel_size
        Ho, Wo = dout.shape[2:]
        w_offsets = self._offset_weights()                                   # (kh*kw*O, C)
        dx = np.empty(x.shape, dtype=x.dtype) if out is None else out

        def images(n):                                                       # images n
            G = np.zeros((kh, kw, O, n.stop - n.start, H, W), dtype=x.dtype)
            if (Ho, Wo) == (H, W):                                           # flat shifts, as in forward
                L = G.shape[3] * H * W
                df = dout[:, n].reshape(O, L)                                # (O, images*H*W)
                for i, j, shift, rows, cols in self._flat_shifts(H, W):
                    Gf = G[i, j].reshape(O, L)                               # input q gets dout at q - shift
                    if shift >= 0:
                        Gf[:, shift:] = df[:, :L - shift]
                    else:
                        Gf[:, :L + shift] = df[:, -shift:]
                    G[i, j][:, :, rows] = 0                                  # the reads forward did not make
                    G[i, j][:, :, :, cols] = 0
            else:
                for i, j, (rows, cols), (in_rows, in_cols) in self._offset_ranges(H, W, Ho, Wo):
                    G[i, j][:, :, in_rows, in_cols] = dout[:, n, rows, cols]  # dout shifted by offset (i, j)
            G = G.reshape(kh * kw * O, -1)                                   # (kh*kw*O, images*H*W)
            dW = matmul(G, x[:, n].reshape(C, -1).T, split_inner=True)      # this chunk's: (kh*kw*O, C)
            dx[:, n] = matmul(w_offsets.T, G).reshape(C, -1, H, W)           # after x[:, n] was read: out may be x
            return dW

        dW = sum(_chunkwise(images, self._image_chunks(N, H, W)))
        self.weight.grad += dW.reshape(kh, kw, O, C).transpose(2, 3, 0, 1)
        return dx
