"""Mini-batches for training: per-channel normalisation and the paper's "+" data augmentation.

The DenseNet paper (Huang et al., 2017) trains "C10+" / "C100+" with the standard augmentation of He et al.:
each image is zero-padded by 4 pixels on every side, a random 32x32 crop is taken, and the crop is mirrored
horizontally with probability 1/2. :class:`BatchIterator` does exactly that, vectorised over the batch, with the
padding and the flip as options: ``train`` takes them from the data set (``Dataset.augmentation``), so for the
28x28 grayscale MNIST and Fashion-MNIST ``--augment`` is a random crop of the image zero-padded by 2 pixels,
without the flip. The steps:

1. gather the batch's images in their stored form (uint8 0..255 or float in [0, 1]);
2. augmentation in *raw pixel space*: the zero padding is a black border, as in the paper, and not the
   per-channel mean that padding after normalisation would give;
3. conversion to float in [0, 1] and normalisation ``(x - mean) / std`` per channel.

``mean`` and ``std`` are always in [0, 1] units: :func:`channel_stats` and :func:`normalize` divide uint8 images by
255 first, so statistics computed on uint8 CIFAR apply unchanged to its float version and vice versa.

Reproducibility: all randomness of an iterator (the shuffling order and the augmentation) comes from the one
``numpy.random.Generator`` in ``iterator.rng``, and an epoch draws all of it when it starts (when ``iter()`` is
called). Saving ``iterator.rng.bit_generator.state`` at any point of epoch *k* and restoring it into a new iterator
therefore reproduces epochs *k + 1, k + 2, ...* bit for bit.
"""
from __future__ import annotations

import numbers

import numpy as np

from .base import to_float

__all__ = ["channel_stats", "normalize", "BatchIterator"]

_STATS_CHUNK = 1024  # images per chunk in channel_stats, to bound the memory of the float conversion


def _check_images(x, argument="x"):
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        shape = getattr(x, "shape", None)
        raise ValueError(f"{argument} must be a 4-D array (N, C, H, W), got "
                         f"{'shape ' + str(shape) if shape is not None else type(x).__name__}")
    if x.dtype != np.uint8 and x.dtype.kind != "f":
        raise ValueError(f"{argument} must hold uint8 pixels (0..255) or floats in [0, 1], got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{argument} holds no images (shape {x.shape})")


def _check_float_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dt not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def _check_stats(mean, std, channels):
    """Return ``(mean, std)`` as float64 arrays of shape (C,), or ``(None, None)``."""
    if mean is None and std is None:
        return None, None
    if mean is None or std is None:
        raise ValueError("mean and std must be given together (or both left None)")
    out = []
    for argument, value in (("mean", mean), ("std", std)):
        value = np.asarray(value, dtype=np.float64).reshape(-1)
        if value.size == 1:
            value = np.repeat(value, channels)
        if value.shape != (channels,):
            raise ValueError(f"{argument} must have one value per channel ({channels}), got {value.size} values")
        if not np.isfinite(value).all():
            raise ValueError(f"{argument} must be finite, got {value}")
        out.append(value)
    if (out[1] <= 0).any():
        raise ValueError(f"std must be positive in every channel, got {out[1]}")
    return out[0], out[1]


def channel_stats(x):
    """Per-channel mean and standard deviation of a set of images, in [0, 1] units.

    Compute them on the *training* set only, then normalise train and test with them.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        uint8 pixels 0..255 (scaled by 1/255 first) or floats in [0, 1].

    Returns
    -------
    mean, std : ndarray of float64, shape (C,)
        Over all images and pixels of each channel; ``std`` is the population standard deviation (ddof=0).
    """
    _check_images(x)
    n, c = x.shape[:2]
    count = n * x.shape[2] * x.shape[3]
    total = np.zeros(c)
    for start in range(0, n, _STATS_CHUNK):
        total += to_float(x[start:start + _STATS_CHUNK], np.float64).sum(axis=(0, 2, 3))
    mean = total / count
    squares = np.zeros(c)  # second pass about the mean: no cancellation
    for start in range(0, n, _STATS_CHUNK):
        chunk = to_float(x[start:start + _STATS_CHUNK], np.float64) - mean[:, None, None]
        squares += np.einsum("nchw,nchw->c", chunk, chunk)
    return mean, np.sqrt(squares / count)


def normalize(x, mean=None, std=None, dtype=np.float32):
    """Convert images to float and normalise each channel: ``(x - mean[c]) / std[c]``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        uint8 pixels 0..255 (scaled by 1/255 first) or floats in [0, 1].
    mean, std : array-like of shape (C,) or scalar, optional
        In [0, 1] units, e.g. from :func:`channel_stats`. Leave both None to only convert to [0, 1].
    dtype : float32 or float64

    Returns
    -------
    ndarray of ``dtype``, shape (N, C, H, W); always a new array.
    """
    _check_images(x)
    dtype = _check_float_dtype(dtype)
    mean, std = _check_stats(mean, std, x.shape[1])
    out = to_float(x, dtype)
    if mean is not None:
        out -= mean.astype(dtype)[:, None, None]
        out /= std.astype(dtype)[:, None, None]
    return out


class BatchIterator:
    """Epochs of shuffled, optionally augmented and normalised mini-batches.

    Each ``for x_batch, y_batch in iterator`` loop is one epoch; iterate again for the next one.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        uint8 pixels 0..255 or floats in [0, 1]; not copied.
    y : ndarray of integers, shape (N,)
    batch_size : int > 0
    shuffle : bool
        Visit the samples in a new random order each epoch (else in order 0..N-1).
    augment : bool
        Apply the "+" augmentation: random crop of the ``pad``-zero-padded image and random horizontal flip.
    pad : int >= 0
        Zero padding on each side before the random crop back to (H, W); 4 in the paper. Padding happens in raw
        pixel space (a black border), before normalisation.
    flip : bool
        With ``augment``, mirror each image left-right with probability 1/2.
    mean, std : array-like of shape (C,), optional
        Per-channel statistics in [0, 1] units (see :func:`channel_stats`), applied after augmentation.
        Without them batches are only scaled to [0, 1].
    dtype : float32 or float64
        dtype of the image batches.
    seed : None, int, SeedSequence or numpy.random.Generator
        Source of all randomness; a Generator is used (and advanced) as is, anything else seeds a new one.
    drop_last : bool
        Drop the last, smaller batch of an epoch.

    Attributes
    ----------
    rng : numpy.random.Generator
        The iterator's only source of randomness. Save ``rng.bit_generator.state`` in a checkpoint and assign it
        back to resume bit-identically (every epoch draws all its random numbers when it starts).
    num_samples : int

    Yields
    ------
    x_batch : ndarray of ``dtype``, shape (B, C, H, W)
    y_batch : ndarray of int64, shape (B,)
        ``B == batch_size`` except possibly for the last batch of an epoch.
    """

    def __init__(self, x, y, batch_size, *, shuffle=True, augment=False, pad=4, flip=True, mean=None, std=None,
                 dtype=np.float32, seed=None, drop_last=False):
        _check_images(x)
        y = np.asarray(y)
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise ValueError(f"y must be a 1-D array of integer labels, got shape {y.shape} and dtype {y.dtype}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"x and y must have the same length, got {x.shape[0]} images and {y.shape[0]} labels")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(pad, bool) or not isinstance(pad, numbers.Integral) or pad < 0:
            raise ValueError(f"pad must be a non-negative integer, got {pad!r}")
        if drop_last and batch_size > x.shape[0]:
            raise ValueError(f"batch_size ({batch_size}) exceeds the number of samples ({x.shape[0]}) with "
                             "drop_last=True: an epoch would have no batch")
        self.x = x
        self.y = y.astype(np.int64, copy=False)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.pad = int(pad)
        self.flip = bool(flip)
        self.mean, self.std = _check_stats(mean, std, x.shape[1])
        self.dtype = _check_float_dtype(dtype)
        self.drop_last = bool(drop_last)
        try:
            self.rng = np.random.default_rng(seed)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"seed must be None, an int, a SeedSequence or a numpy.random.Generator, "
                             f"got {seed!r} ({exc})") from None

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])

    def __len__(self):
        """Number of batches per epoch."""
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def __iter__(self):
        """Start an epoch: draw its order and augmentation now, then yield its batches."""
        n = self.num_samples
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        offsets = flips = None
        if self.augment and self.pad > 0:
            offsets = self.rng.integers(0, 2 * self.pad + 1, size=(n, 2))  # (top, left) of each crop
        if self.augment and self.flip:
            flips = self.rng.random(n) < 0.5
        return self._batches(order, offsets, flips)

    def _batches(self, order, offsets, flips):
        stop = len(self) * self.batch_size
        for start in range(0, min(stop, self.num_samples), self.batch_size):
            idx = order[start:start + self.batch_size]
            sl = slice(start, start + idx.size)
            xb = self.x[idx]
            if offsets is not None or flips is not None:
                xb = self._crop_and_flip(xb, None if offsets is None else offsets[sl],
                                         None if flips is None else flips[sl])
            yield normalize(xb, self.mean, self.std, self.dtype), self.y[idx]

    def _crop_and_flip(self, xb, offsets, flips):
        """Vectorised crop of the zero-padded batch at ``offsets`` (B, 2) and left-right flip where ``flips`` (B,).

        One fancy-indexing gather: output pixel ``[b, c, i, j]`` is padded pixel ``[b, c, top_b + i, col_b(j)]``
        with ``col_b(j) = left_b + j``, or ``left_b + W - 1 - j`` for flipped images.
        """
        b, c, h, w = xb.shape
        p = self.pad
        if offsets is None:
            offsets = np.full((b, 2), p)  # no crop: the centre window of the (possibly zero-) padded image
        if p:
            xb = np.pad(xb, ((0, 0), (0, 0), (p, p), (p, p)))  # zeros: a black border in raw pixel space
        rows = offsets[:, 0, None] + np.arange(h)  # (B, H)
        cols = offsets[:, 1, None] + np.arange(w)  # (B, W)
        if flips is not None:
            cols = np.where(flips[:, None], cols[:, ::-1], cols)
        return xb[np.arange(b)[:, None, None, None], np.arange(c)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]

    def __repr__(self):
        return (f"BatchIterator(num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"batches={len(self)}, shuffle={self.shuffle}, augment={self.augment}, pad={self.pad}, "
                f"flip={self.flip}, normalized={self.mean is not None}, dtype={self.dtype})")
