"""Input validation shared by the layers: clear errors instead of tracebacks from deep inside NumPy."""
from __future__ import annotations

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
