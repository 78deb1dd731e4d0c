"""Hypothesis strategies for the inputs that break naive gradient checkers, for your own test suites.

::

    from hypothesis import given
    from numpy_densenet.gradcheck import check_backward, strategies

    @given(x=strategies.hard_arrays((2, 3, 4, 4)))
    def test_my_relu(x):
        check_backward(relu_forward, relu_backward, x, raise_exception=True)

Each strategy draws a float64 array (``dtype=np.float32`` for float32) of the shape given, or of a drawn shape
(:func:`shapes`) when none is:

* :func:`ties` - a third of the entries copied exactly from others: tied maxima in max pooling, ``max``, sorting;
  a central difference across a tie sees the average of two one-sided slopes, a valid gradient sees one;
* :func:`kink_zeros` - a third of the entries exactly 0: the kink of ReLU, ``abs``, hinge losses, where a
  central difference sees half the slope;
* :func:`large_offsets` - 1e4 + N(0, 1): BatchNorm and softmax subtract the large common part, and a step
  relative to 1e4, or L's rounding, swamps the small differences that matter;
* :func:`tiny` - N(0, 1) scaled to 1e-8 .. 1e-5: a fixed step of 1e-6 is as large as the values themselves;
* :func:`hard_arrays` - one of these, or plain N(0, 1), drawn; :func:`float32` - the same in float32.

Values come from a NumPy generator seeded by a drawn integer (fast for any size; hypothesis shrinks the shape).
hypothesis is not a dependency of numpy_densenet: this module needs it (``pip install hypothesis``), the rest of
the package does not import it.
"""
from __future__ import annotations

import numpy as np

try:
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp
except ImportError:                                                          # pragma: no cover - optional
    raise ImportError("numpy_densenet.gradcheck.strategies needs hypothesis: pip install hypothesis") from None

__all__ = ["shapes", "ties", "kink_zeros", "large_offsets", "tiny", "hard_arrays", "float32", "KINDS"]

KINDS = ("ties", "kink_zeros", "large_offsets", "tiny", "normal")


def shapes(min_dims=1, max_dims=4, min_side=1, max_side=5):
    """Array shapes: ``min_dims`` to ``max_dims`` axes of ``min_side`` to ``max_side`` entries each."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def make(kind, shape, seed, dtype=np.float64):
    """The array of ``kind`` (one of :data:`KINDS`), ``shape`` and ``dtype`` that ``seed`` gives.

    A pattern is made in float64 and then rounded, so ties and zeros stay exact in float32.
    """
    if kind not in KINDS:
        raise ValueError(f"strategies: kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    flat = x.reshape(-1)
    k = max(1, flat.size // 3)
    if kind == "ties" and flat.size > 1:
        order = rng.permutation(flat.size)
        flat[order[:k]] = flat[rng.choice(order[k:], k)]          # copies of entries left as they were
    elif kind == "kink_zeros":
        flat[rng.choice(flat.size, k, replace=False)] = 0.0
    elif kind == "large_offsets":
        x = 1e4 + x
    elif kind == "tiny":
        x = x * 10.0 ** rng.uniform(-8, -5)
    return x.astype(dtype)


@st.composite
def _arrays(draw, kinds, shape, dtype):
    shape = draw(shapes()) if shape is None else tuple(shape)
    kind = draw(st.sampled_from(kinds))
    return make(kind, shape, draw(st.integers(0, 2**32 - 1)), dtype)


def ties(shape=None, dtype=np.float64):
    """Arrays in which a third of the entries are exact copies of others."""
    return _arrays(("ties",), shape, dtype)


def kink_zeros(shape=None, dtype=np.float64):
    """Arrays in which a third of the entries are exactly 0."""
    return _arrays(("kink_zeros",), shape, dtype)


def large_offsets(shape=None, dtype=np.float64):
    """1e4 + N(0, 1)."""
    return _arrays(("large_offsets",), shape, dtype)


def tiny(shape=None, dtype=np.float64):
    """N(0, 1) scaled by a drawn 1e-8 .. 1e-5."""
    return _arrays(("tiny",), shape, dtype)


def hard_arrays(shape=None, dtype=np.float64, kinds=KINDS):
    """Any of ``kinds`` (default: every one, and plain N(0, 1))."""
    return _arrays(tuple(kinds), shape, dtype)


def float32(shape=None, kinds=KINDS):
    """:func:`hard_arrays` in float32 (check them with ``float32=True`` to see the float32 backward too)."""
    return _arrays(tuple(kinds), shape, np.float32)
