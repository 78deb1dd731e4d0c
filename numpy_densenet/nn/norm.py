"""Batch normalisation over (N, H, W) for each channel, PyTorch's ``nn.BatchNorm2d`` semantics.

The textbook formulas (Ioffe & Szegedy 2015), with M = N*H*W values per channel::

    mean = sum(x) / M                  var = sum((x - mean)^2) / M          (biased)
    xhat = (x - mean) / sqrt(var + eps)
    y    = weight * xhat + bias

    dbias   = sum(dy)                  dweight = sum(dy * xhat)
    dx      = weight / sqrt(var + eps) / M * (M * dy - sum(dy) - xhat * sum(dy * xhat))

The two sums in dx are the gradient through the batch mean and the batch variance: every value of a channel
moved the statistics every other value was normalised with. In eval mode the statistics are constants, so
dx = dy * weight / sqrt(running_var + eps).

The batch may span several processes (data-parallel training with synchronised BatchNorm): the layer's
``batch_sync`` hook (by default :data:`LOCAL_BATCH`, which does nothing) turns this process's statistics into
the whole batch's, and in backward its two per-channel sums into the whole batch's; the formulas are unchanged,
with M the whole batch's count. :mod:`numpy_densenet.distributed` installs an MPI hook.

The fast tier's :class:`numpy_densenet.fast.BatchNorm2d` computes the same channel-major, in cache-sized
blocks of channels on several threads, with statistics shared between a dense block's consumers and an
optional fused ReLU; ``tests/test_fast_tier.py`` proves the two equal.
"""
from __future__ import annotations

import numbers

import numpy as np

from ._checks import check_grad, check_input, positive_int, take_cache
from .module import Module, Parameter, check_float_dtype, saved


class LocalBatch:
    """A BatchNorm's ``batch_sync`` hook when the batch is this process's alone (the default): does nothing.

    Data-parallel training with synchronised BatchNorm replaces it (per layer, see
    :class:`numpy_densenet.distributed.SyncBatch`) by one that combines the processes' values, so that every
    process normalises with the statistics of the whole, global batch.
    """

    def statistics(self, mean, var, count):
        """This process's per-channel batch mean and biased variance (each (C,)) over ``count`` values per
        channel -> ``(mean, var, count)`` of the whole batch, in the same dtypes."""
        return mean, var, count

    def sums(self, sums):
        """This process's per-channel sums of backward, ``sums`` (2, C) = [sum(dy), sum(dy * xhat)] -> the
        whole batch's, same shape and dtype."""
        return sums


LOCAL_BATCH = LocalBatch()


class BatchNorm2d(Module):
    """Batch normalisation with learnable affine parameters and running statistics.

    Train mode normalises with the batch mean and the *biased* batch variance, and updates
    ``running = (1 - momentum) * running + momentum * batch`` using the *unbiased* variance for
    ``running_var``; ``num_batches_tracked`` counts the updates (``momentum=None`` gives the cumulative
    average, as in PyTorch). Eval mode normalises with the running statistics.

    Parameters
    ----------
    num_features : int
        C, the number of channels.
    eps : float
        Added to the variance; a finite positive number.
    momentum : float in [0, 1] or None
    dtype : float32 or float64

    Shapes
    ------
    x : (N, C, H, W) -> y : (N, C, H, W); weight, bias, running_mean, running_var : (C,).

    Attributes
    ----------
    batch_sync : LocalBatch
        Where the batch statistics come from (see the module docstring): :data:`LOCAL_BATCH` unless data-parallel
        training synchronises this layer across processes.
    """

    batch_sync = LOCAL_BATCH

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        self.num_features = positive_int(num_features, f"{name}: num_features")
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < np.inf:
            raise ValueError(f"{name}: eps must be a finite positive number, got {eps!r}")
        if momentum is not None and (isinstance(momentum, bool) or not isinstance(momentum, numbers.Real)
                                     or not 0 <= momentum <= 1):
            raise ValueError(f"{name}: momentum must be a number in [0, 1] or None, got {momentum!r}")
        dt = check_float_dtype(dtype)
        self.eps, self.momentum = float(eps), momentum
        self.weight = Parameter(np.ones(self.num_features, dtype=dt))
        self.bias = Parameter(np.zeros(self.num_features, dtype=dt))
        self.register_buffer("running_mean", np.zeros(self.num_features, dtype=dt))
        self.register_buffer("running_var", np.ones(self.num_features, dtype=dt))
        self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        self._cache = None
        self.batch_count = None     # values per channel in the last batch normalised in train mode (whole batch)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def check(self, x, channel_axis):
        """Check the input's channel count and, in train mode, that each channel has more than one value."""
        C = x.shape[channel_axis]
        nchw = x.shape if channel_axis == 1 else (x.shape[1], x.shape[0]) + x.shape[2:]
        if C != self.num_features:
            raise ValueError(f"{type(self).__name__}: input has {C} channels, expected "
                             f"num_features={self.num_features} (input shape {nchw} as NCHW)")
        if self.training and x.size // C <= 1:
            raise ValueError(f"{type(self).__name__}: expected more than 1 value per channel when training, "
                             f"got input of shape {nchw} (NCHW)")

    def update_running_stats(self, mean, var, count):
        """running = (1 - m) running + m batch, with the unbiased variance var * M/(M-1)."""
        self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean[...] = (1 - m) * self.running_mean + m * mean
        self.running_var[...] = (1 - m) * self.running_var + m * var * (count / (count - 1))

    def forward(self, x):
        """x: (N, C, H, W) -> y: (N, C, H, W)."""
        x = check_input(self, x, 4, "(N, C, H, W)", self.weight.dtype)
        self.check(x, channel_axis=1)
        M = x.size // self.num_features                                     # values per channel: N*H*W
        if self.training:
            mean = x.mean(axis=(0, 2, 3))                                   # (C,)
            var = ((x - mean[:, None, None]) ** 2).mean(axis=(0, 2, 3))     # (C,) biased
            mean, var, M = self.batch_sync.statistics(mean, var, M)         # the whole batch's (if it spans processes)
            self.update_running_stats(mean, var, M)
        else:
            mean, var = self.running_mean, self.running_var
        invstd = 1.0 / np.sqrt(var + x.dtype.type(self.eps))                # (C,)
        xhat = (x - mean[:, None, None]) * invstd[:, None, None]            # (N, C, H, W)
        y = self.weight.data[:, None, None] * xhat + self.bias.data[:, None, None]
        self._cache = saved((xhat, invstd, self.training))
        self.batch_count = M                                                # for backward: the whole batch's
        return y

    def backward(self, dout):
        """dout: (N, C, H, W) -> dx: (N, C, H, W); adds into weight.grad and bias.grad."""
        xhat, invstd, training = take_cache(self)
        M = self.batch_count                                                # values per channel, whole batch
        dy = check_grad(self, dout, xhat.shape, self.weight.dtype)
        dbias = dy.sum(axis=(0, 2, 3))                                      # (C,)  sum(dy)
        dweight = (dy * xhat).sum(axis=(0, 2, 3))                           # (C,)  sum(dy * xhat)
        self.bias.grad += dbias                                             # this process's share of the
        self.weight.grad += dweight                                         # gradients (data parallel sums them)
        scale = (self.weight.data * invstd)[:, None, None]                  # (C, 1, 1)
        if not training:                                                    # constant statistics
            return dy * scale
        dbias, dweight = self.batch_sync.sums(np.stack([dbias, dweight]))   # the whole batch's sums
        return scale / M * (M * dy - dbias[:, None, None] - xhat * dweight[:, None, None])
