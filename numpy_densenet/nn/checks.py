"""Input validation shared by the layers: clear errors instead of tracebacks from deep inside NumPy.

Every check lives here, so that a layer's ``forward`` starts with one call and then reads as its formula.
"""
from __future__ import annotations

import numbers

import numpy as np

from .module import FLOAT_DTYPES, NO_GRAD


def pair(value, argument, minimum):
    """Turn an int or a pair of ints into a pair, checking each is an int >= ``minimum``."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value), int(value))
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"{argument} must be an int or a pair of ints, got {value!r}") from None
    for v in (a, b):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
            raise TypeError(f"{argument} must be an int or a pair of ints, got {value!r}")
        if v < minimum:
            what = "positive" if minimum == 1 else "non-negative"
            raise ValueError(f"{argument} must be {what}, got {value!r}")
    return int(a), int(b)


def check_input(layer, x, ndim, layout, dtype=None):
    """Check that ``x`` is a float32/float64 ndarray with ``ndim`` dimensions (and ``dtype`` if given).

    Returns ``x`` as an ndarray. ``layout`` names the expected axes in the message, e.g. ``"(N, C, H, W)"``.
    """
    name = type(layer).__name__
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: input must be a NumPy array of shape {layout}, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: input must be float32 or float64, got dtype {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D input of shape {layout}, got shape {x.shape}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name}: input dtype {x.dtype} does not match the layer's parameters ({dtype}); "
                        f"use x.astype(np.{dtype}) or layer.to(np.{x.dtype})")
    return x


def check_grad(layer, dout, expected_shape, dtype):
    """Check the upstream gradient given to ``backward`` against the forward output's shape and dtype."""
    name = type(layer).__name__
    if not isinstance(dout, np.ndarray):
        dout = np.asarray(dout, dtype=dtype)
    if dout.shape != tuple(expected_shape):
        raise ValueError(f"{name}.backward: upstream gradient has shape {dout.shape}, expected the forward "
                         f"output's shape {tuple(expected_shape)}")
    if dout.dtype != dtype:
        if dout.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}.backward: upstream gradient must be float32 or float64, got {dout.dtype}")
        dout = dout.astype(dtype)
    return dout


def take_cache(layer):
    """Return and clear the layer's forward cache; a clear error if there is none."""
    cache = layer.__dict__.get("_cache")
    if cache is NO_GRAD:
        raise RuntimeError(f"{type(layer).__name__}.backward: the forward pass ran inside no_grad(), so nothing "
                           f"was kept for backward; run forward again outside no_grad()")
    if cache is None:
        raise RuntimeError(f"{type(layer).__name__}.backward called before forward (or twice after one "
                           f"forward): run forward first; backward frees what forward cached")
    object.__setattr__(layer, "_cache", None)
    return cache


def positive_int(value, argument):
    """``value`` as an int if it is a positive int (not a bool), else a ValueError naming ``argument``."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{argument} must be a positive int, got {value!r}")
    return int(value)


def check_generator(generator, layer):
    """``generator`` if it is a numpy.random.Generator, a fresh one if None, else a TypeError."""
    if generator is None:
        return np.random.default_rng()
    if not isinstance(generator, np.random.Generator):
        raise TypeError(f"{layer}: generator must be a numpy.random.Generator (e.g. np.random.default_rng(0)) "
                        f"or None, got {type(generator).__name__} {generator!r}")
    return generator


def positive_number(value, argument):
    """``value`` as a float if it is a finite positive real number (not a bool), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < np.inf:
        raise ValueError(f"{argument} must be a finite positive number, got {value!r}")
    return float(value)


def fraction_or_none(value, argument):
    """``value`` if it is None or a real number in [0, 1] (not a bool), else a ValueError."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                              or not 0 <= value <= 1):
        raise ValueError(f"{argument} must be a number in [0, 1] or None, got {value!r}")
    return value


def check_channels(layer, x, channels, training=False):
    """Check that NCHW ``x`` has ``channels`` channels and, when ``training``, more than one value per channel
    (BatchNorm's batch variance needs two)."""
    name = type(layer).__name__
    if x.shape[1] != channels:
        raise ValueError(f"{name}: input has {x.shape[1]} channels, expected num_features={channels} "
                         f"(input shape {x.shape} as NCHW)")
    if training and x.size // max(channels, 1) <= 1:
        raise ValueError(f"{name}: expected more than 1 value per channel when training, got input of shape "
                         f"{x.shape} (NCHW)")


def check_same_nhw(layer, xs):
    """Check the inputs of a channel concatenation: at least one, each a float32/float64 4-D array, all with
    the first one's N, H, W and dtype."""
    name = type(layer).__name__
    if not xs:
        raise ValueError(f"{name}: needs at least one input")
    for i, x in enumerate(xs):
        if not isinstance(x, np.ndarray) or x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name}: input {i} must be a float32 or float64 NumPy array, got "
                            f"{getattr(x, 'dtype', type(x).__name__)}")
        if x.ndim != 4:
            raise ValueError(f"{name}: input {i} must be 4-D (N, C, H, W), got shape {x.shape}")
        if x.shape[0] != xs[0].shape[0] or x.shape[2:] != xs[0].shape[2:]:
            raise ValueError(f"{name}: all inputs must share N, H and W; input 0 has (N, C, H, W) = "
                             f"{xs[0].shape}, input {i} has {x.shape}")
        if x.dtype != xs[0].dtype:
            raise TypeError(f"{name}: input {i} has dtype {x.dtype}, input 0 has {xs[0].dtype}")


def check_labels(layer, labels, logits_shape):
    """``labels`` as an integer array of shape (N,) with values in [0, K), for logits of shape (N, K)."""
    name = type(layer).__name__
    labels = np.asarray(labels)
    N, K = logits_shape
    if labels.dtype.kind not in "iu":
        raise TypeError(f"{name}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (N,):
        raise ValueError(f"{name}: labels must have shape (N,) = ({N},) to match logits {tuple(logits_shape)}, "
                         f"got {labels.shape}")
    if N and (labels.min() < 0 or labels.max() >= K):
        raise ValueError(f"{name}: labels must lie in [0, {K}), got values from {labels.min()} to {labels.max()}")
    return labels
