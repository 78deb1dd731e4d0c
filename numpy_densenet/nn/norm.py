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

The fast tier's :class:`numpy_densenet.fast.BatchNorm2d` computes the same channel-major, in cache-sized
blocks of channels on several threads, with statistics shared between a dense block's consumers and an
optional fused ReLU; ``tests/test_fast_tier.py`` proves the two equal. Synchronised BatchNorm, whose batch
spans several processes, is a subclass in :mod:`numpy_densenet.training.distributed`: it overrides
:meth:`BatchNorm2d.batch_statistics` and :meth:`BatchNorm2d.input_gradient`, the two places where the whole
batch is seen.
"""
from __future__ import annotations

import numpy as np

from .checks import (check_channels, check_grad, check_input, fraction_or_none, positive_int, positive_number,
                      take_cache)
from .module import Module, Parameter, check_float_dtype, saved


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
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        name = type(self).__name__
        self.num_features = positive_int(num_features, f"{name}: num_features")
        self.eps = positive_number(eps, f"{name}: eps")
        self.momentum = fraction_or_none(momentum, f"{name}: momentum")
        dt = check_float_dtype(dtype)
        self.weight = Parameter(np.ones(self.num_features, dtype=dt))
        self.bias = Parameter(np.zeros(self.num_features, dtype=dt))
        self.register_buffer("running_mean", np.zeros(self.num_features, dtype=dt))
        self.register_buffer("running_var", np.ones(self.num_features, dtype=dt))
        self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        self._cache = None

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"

    def forward(self, x):
        """x: (N, C, H, W) -> y: (N, C, H, W)."""
        x = self.checked(x)
        if self.training:
            mean, var, M = self.batch_statistics(x)                         # (C,), (C,), values per channel
            self.update_running_stats(mean, var, M)
        else:
            mean, var, M = self.running_mean, self.running_var, None        # constants: no M in backward
        invstd = 1.0 / np.sqrt(var + x.dtype.type(self.eps))                # (C,)
        xhat = (x - mean[:, None, None]) * invstd[:, None, None]            # (N, C, H, W)
        y = self.weight.data[:, None, None] * xhat + self.bias.data[:, None, None]
        self._cache = saved((xhat, invstd, M))
        return y

    def batch_statistics(self, x):
        """x: (N, C, H, W) -> (mean, var, M): the per-channel batch mean and biased variance, each (C,), over
        M = N*H*W values per channel."""
        mean = x.mean(axis=(0, 2, 3))                                       # (C,)
        var = ((x - mean[:, None, None]) ** 2).mean(axis=(0, 2, 3))         # (C,) biased
        return mean, var, x.size // self.num_features

    def update_running_stats(self, mean, var, count):
        """running = (1 - m) running + m batch, with the unbiased variance var * M/(M-1)."""
        self.num_batches_tracked += 1
        m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        self.running_mean[...] = (1 - m) * self.running_mean + m * mean
        self.running_var[...] = (1 - m) * self.running_var + m * var * (count / (count - 1))

    def backward(self, dout):
        """dout: (N, C, H, W) -> dx: (N, C, H, W); adds into weight.grad and bias.grad."""
        xhat, invstd, M = take_cache(self)
        dout = check_grad(self, dout, xhat.shape, self.weight.dtype)
        dbias = dout.sum(axis=(0, 2, 3))                                    # (C,)  sum(dy)
        dweight = (dout * xhat).sum(axis=(0, 2, 3))                         # (C,)  sum(dy * xhat)
        self.bias.grad += dbias
        self.weight.grad += dweight
        scale = (self.weight.data * invstd)[:, None, None]                  # (C, 1, 1)
        if M is None:                                                       # eval: constant statistics
            return dout * scale
        return self.input_gradient(dout, xhat, scale, dbias, dweight, M)

    def input_gradient(self, dout, xhat, scale, dbias, dweight, M):
        """Train mode's dx: (N, C, H, W), through the batch mean (``dbias`` = sum(dy)) and the batch variance
        (``dweight`` = sum(dy * xhat)), each (C,), over M values per channel; ``scale`` = weight * invstd."""
        return scale / M * (M * dout - dbias[:, None, None] - xhat * dweight[:, None, None])

    def checked(self, x):
        """``x`` checked: a 4-D array of the parameters' dtype, with ``num_features`` channels and, in train
        mode, more than one value per channel."""
        x = check_input(self, x, 4, "(N, C, H, W)", self.weight.dtype)
        check_channels(self, x, self.num_features, self.training)
        return x
