"""Fast batch normalisation: :class:`numpy_densenet.nn.BatchNorm2d` computed channel-major, in cache-sized
blocks of channels shared between the threads, without ever storing xhat, with batch statistics a dense
block can compute once and share, and with an optional fused ReLU (:class:`BatchNormReLU2d`).

Its specification is the plain ``nn.BatchNorm2d`` (and ``nn.ReLU`` after it, for the fused layer);
``tests/test_fast_tier.py`` proves them equal.
"""
from __future__ import annotations

import numpy as np

from ..nn import norm as plain
from ..nn.checks import check_grad, check_input, take_cache
from ..nn.module import saved
from .activation import relu_backward, relu_into
from .layout import ChannelMajor
from .threads import MIN_ELEMENTS_TO_SPLIT, get_num_threads, parallel_for


class BatchNorm2d(ChannelMajor, plain.BatchNorm2d):
    """:class:`numpy_densenet.nn.BatchNorm2d` (its specification: same parameters, buffers and results),
    computed channel-major in blocks of channels on all threads; see the module docstring.

    Shapes: x (N, C, H, W) -> y (N, C, H, W) through ``forward``; (C, N, H, W) through ``forward_cnhw``.
    """

    relu = False                                        # BatchNormReLU2d: a ReLU fused into the same pass

    def checked(self, x, out=None):
        """``x`` checked: (C, N, H, W) in the parameters' dtype with ``num_features`` channels (and more than one
        value per channel in train mode); ``out``, if given, a C-contiguous array of x's shape and dtype that
        does not overlap x."""
        name = type(self).__name__
        x = check_input(self, x, 4, "(C, N, H, W)", self.weight.dtype)
        if x.shape[0] != self.num_features:
            raise ValueError(f"{name}: input has {x.shape[0]} channels, expected "
                             f"num_features={self.num_features} (input shape {_nchw(x.shape)} as NCHW)")
        if self.training and x.size // x.shape[0] <= 1:
            raise ValueError(f"{name}: expected more than 1 value per channel when training, "
                             f"got input of shape {_nchw(x.shape)} (NCHW)")
        if out is not None and (out.shape != x.shape or out.dtype != x.dtype or not out.flags.c_contiguous):
            raise ValueError(f"{name}: out must be a C-contiguous array of the input's shape "
                             f"{x.shape} and dtype {x.dtype}, got {out.shape} {out.dtype}")
        if out is not None and np.may_share_memory(out, x):
            raise ValueError(f"{name}: out must not overlap the input, which backward needs")
        return x

    def batch_statistics(self, x):
        """x: (C, N, H, W), channel-major -> (mean, var, M): float64 (C,) each, over M = N*H*W values per
        channel (:func:`channel_statistics`)."""
        return (*channel_statistics(x), x.size // x.shape[0])

    def forward_cnhw(self, x, stats=None, update_stats=True, out=None, keep_output=True):
        """x: (C, N, H, W) -> y: (C, N, H, W).

        Parameters
        ----------
        stats : (mean, var, count), optional
            Train mode only: the batch statistics of ``x`` (float64, each (C,)) over ``count`` values per
            channel, if the caller already has them (a dense block computes each feature map's once and shares
            them with all its consumers); otherwise :meth:`batch_statistics` computes them.
        update_stats : bool
            Train mode only: False when recomputing a forward whose running statistics were already updated
            (the memory-efficient dense layer recomputes BN in backward).
        out : ndarray of x's shape and dtype, optional
            Where to write y (a shared workspace); never x itself, which backward needs.
        keep_output : bool
            With the fused ReLU: False if the caller may overwrite y before backward (a dense layer writes its
            1x1 convolution's input gradient over it); backward then finds the ReLU's mask again from x, with
            the same two operations, so bit for bit the same mask.
        """
        x = self.checked(x, out)
        C = x.shape[0]
        M = x.size // C                                                      # values per channel
        if self.training:
            mean, var, count = self.batch_statistics(x) if stats is None else stats
            if update_stats:
                self.update_running_stats(mean, var, count)
        else:
            mean, var, count = self.running_mean, self.running_var, None
        invstd = (1.0 / np.sqrt(var + self.eps)).astype(x.dtype)              # (C,)
        scale = self.weight.data * invstd                                    # y = x * scale + shift
        shift = self.bias.data - mean.astype(x.dtype) * scale
        x2 = x.reshape(C, M)
        y = np.empty_like(x2) if out is None else out.reshape(C, M)          # (C, M)

        def block(c):                                                        # channels c: cache-sized
            np.multiply(x2[c], scale[c, None], out=y[c])
            y[c] += shift[c, None]
            if self.relu:
                relu_into(y[c], y[c])                                        # the fused ReLU, while in cache

        parallel_for(block, channel_blocks(C, M))
        # Cache the input (usually alive anyway: in a dense block it is a view of the block buffer), not xhat;
        # with the fused ReLU also the output, whose zeros mask the gradient (the next conv keeps it anyway), or
        # what recomputes that mask from x.
        mask = (y if keep_output else (scale, shift)) if self.relu else None
        self._cache = saved((x, np.asarray(mean, dtype=np.float64), invstd, count, mask))
        return y.reshape(x.shape)

    def backward_cnhw(self, dout, out=None, reduce_sums=None):
        """dout: (C, N, H, W) -> dx: (C, N, H, W); adds into weight.grad and bias.grad.

        ``out``: where to write dx instead of a new array; it may be ``dout`` itself (each block of channels
        is read before it is written). ``reduce_sums``: when the batch spans processes (synchronised
        BatchNorm, :mod:`numpy_densenet.training.distributed`), the function that turns this process's two
        per-channel sums, (2, C), into the whole batch's.

        Train mode: with xhat = (x - mean) * invstd and M values per channel,
        dx = weight * invstd / M * (M * dy - sum(dy) - xhat * sum(dy * xhat)).
        The two sums are the gradient through the batch mean and the batch variance. Eval mode: the
        statistics are constants, so dx = dy * weight * invstd. Both are evaluated as
        dx = a*dy + b*(x - mean) + c with per-channel a, b, c, so xhat is never stored.
        With the fused ReLU, dy is first zeroed where the output was (ReLU's backward).

        With ``reduce_sums`` (train mode) this runs in two passes: this process's two sums for all channels,
        their sum over the processes (2C values), then dx with the whole batch's sums and count. Otherwise one
        pass: each block of channels' sums, then its dx, while in cache.
        """
        x, mean, invstd, M, mask = take_cache(self)                         # M: values per channel, whole batch
        training = M is not None
        dout = check_grad(self, dout, x.shape, self.weight.dtype)
        C = x.shape[0]
        m = x.size // C                                                      # values per channel here
        dout2, x2 = dout.reshape(C, m), x.reshape(C, m)
        y2 = mask.reshape(C, m) if isinstance(mask, np.ndarray) else None    # the output, if kept
        if out is not None and (out.shape != x.shape or out.dtype != x.dtype or not out.flags.c_contiguous):
            raise ValueError(f"{type(self).__name__}.backward: out must be a C-contiguous array of the input's "
                             f"shape {x.shape} and dtype {x.dtype}, got {out.shape} {out.dtype}")
        dx = np.empty_like(dout2) if out is None else out.reshape(C, m)
        mean_x = mean.astype(x.dtype)                                        # the mean in x's dtype ...
        rounding = mean_x - mean                                             # ... and its rounding error
        a = self.weight.data * invstd                                        # (C,)

        def prepare(c):                                                      # channels c: cache-sized
            if y2 is not None:                                               # ReLU backward if fused: (c, m)
                dy = relu_backward(dout2[c], y2[c], np.empty_like(y2[c]))
            elif mask is not None:                                           # y again, as forward computed it
                v = x2[c] * mask[0][c, None]
                v += mask[1][c, None]
                dy = relu_backward(dout2[c], v, v)
            else:
                dy = dout2[c]
            return dy, x2[c] - mean_x[c, None]                               # and x - mean, (c, m)

        def sums(c, dy, centred):                                            # this process's, into .grad
            dbeta = dy.sum(axis=1)                                           # (c,)  sum(dy)
            dgamma = invstd[c] * (np.einsum("cm,cm->c", dy, centred) + rounding[c] * dbeta)  # sum(dy*xhat)
            self.weight.grad[c] += dgamma
            self.bias.grad[c] += dbeta
            return dbeta, dgamma

        def finish(c, dy, centred, dbeta, dgamma):                           # dx from the batch's sums
            np.multiply(dy, a[c, None], out=dx[c])
            if training:
                b = -a[c] * invstd[c] * dgamma / M
                centred *= b[:, None]                                        # the variance path
                dx[c] += centred
                dx[c] += (b * rounding[c] - a[c] * dbeta / M)[:, None]       # the mean path

        def block(c):                                                        # one pass
            dy, centred = prepare(c)
            finish(c, dy, centred, *sums(c, dy, centred))

        blocks = channel_blocks(C, m)
        if not training or reduce_sums is None:
            parallel_for(block, blocks)
            return dx.reshape(x.shape)
        local = np.empty((2, C))                                             # [sum(dy), sum(dy * xhat)]

        def first_pass(c):
            local[0, c], local[1, c] = sums(c, *prepare(c))

        parallel_for(first_pass, blocks)
        total = reduce_sums(local)                                           # the whole batch's (2, C)
        parallel_for(lambda c: finish(c, *prepare(c), total[0, c], total[1, c]), blocks)
        return dx.reshape(x.shape)


class BatchNormReLU2d(BatchNorm2d):
    """BatchNorm2d followed by ReLU, computed in one pass: y = max(BN(x), 0). Its specification is
    ``nn.BatchNorm2d`` then ``nn.ReLU``.

    The same parameters, buffers and state_dict keys as :class:`BatchNorm2d` (a DenseNet's ``norm1`` and
    ``norm2`` are BatchNormReLU2d, standing for torchvision's norm -> relu pair). Fusing saves a pass over
    the feature maps each way: the ReLU is applied to each block of channels while it is still in cache, and
    backward masks the gradient there too. Caches its output as well as its input.

    Shapes: x (N, C, H, W) -> y (N, C, H, W), y >= 0.
    """

    relu = True


def channel_statistics(x):
    """Per-channel mean and biased variance of x: (C, N, H, W) -> two float64 (C,) arrays.

    Two passes of pairwise sums: a first mean, rounded to x's dtype, then the sums of the deviations from
    it, which correct the mean (to within rounding of the spread, not of the mean's size) and give the
    variance around the corrected mean.
    """
    C = x.shape[0]
    x2 = x.reshape(C, -1)                                                    # (C, M), M = N*H*W
    M = x2.shape[1]
    mean, var = np.empty(C), np.empty(C)

    def block(c):                                                            # channels c: cache-sized
        first = x2[c].sum(axis=1) / x.dtype.type(M)                          # in x's dtype
        centred = x2[c] - first[:, None]
        s1 = centred.sum(axis=1).astype(np.float64) / M                      # mean - first
        centred *= centred
        mean[c] = first.astype(np.float64) + s1
        var[c] = centred.sum(axis=1).astype(np.float64) / M - s1 * s1        # variance around the mean

    parallel_for(block, channel_blocks(C, M))
    return mean, np.maximum(var, 0.0)


def channel_blocks(C, M, elements=1 << 18):
    """Slices of consecutive channels holding about ``elements`` values each (at least one channel); smaller
    ones if that gives fewer than two blocks per thread, so that the threads share evenly (from
    MIN_ELEMENTS_TO_SPLIT values on)."""
    total = C * M
    if MIN_ELEMENTS_TO_SPLIT <= total < 2 * get_num_threads() * elements:
        elements = total // (2 * get_num_threads())
    step = max(1, elements // max(M, 1))
    return [slice(i, min(i + step, C)) for i in range(0, C, step)]


def _nchw(cnhw_shape):
    C, N, H, W = cnhw_shape
    return (N, C, H, W)
