"""Arrays a layer keeps from one train step to the next, so that the step's large buffers are not handed back
to the operating system and mapped afresh every time.

A train step allocates hundreds of megabytes of feature maps (a dense block's buffer, the layers' bottleneck
outputs, the gradient buffers) and frees them all at the end of backward. Arrays that large are mapped by
malloc straight from the operating system and returned to it when freed, so every step pays again for tens of
thousands of page faults and for zeroing every page (on the machines of benchmarks/README.md about a tenth of
the step's CPU time). A :class:`ReusedArrays` keeps each named array after use and hands the same memory out for
the next step, when the shapes repeat.

It is safe by construction: an array is handed out again only when nothing but the keeper refers to it any
more (``sys.getrefcount``; a view of it, a layer's cache or a caller holding it all count), so a forward run
twice before backward, a caller keeping an output, or a cache from an earlier step never sees its values
change: they get a new array instead. Only arrays asked for while gradients are enabled are kept (inside
:class:`~numpy_densenet.nn.no_grad` the memory is freed as usual), and copies or pickles of a layer start
with none.
"""
from __future__ import annotations

import sys
import threading

import numpy as np

from ..nn.module import is_grad_enabled

_lock = threading.Lock()


def _references(arrays, name):
    """How many references ``arrays[name]`` has (the dict's and the call's own included)."""
    return sys.getrefcount(arrays[name])


_UNSHARED = _references({"a": np.empty(0)}, "a")         # the count when only the dict holds the array


class ReusedArrays:
    """Named arrays kept for reuse by one layer (see the module docstring).

    >>> kept = ReusedArrays()
    >>> a = kept.empty("buffer", (2, 3), np.float32)
    >>> kept.empty("buffer", (2, 3), np.float32) is a         # a is still held here: a new array
    False
    """

    def __init__(self):
        self._arrays = {}

    def empty(self, name, shape, dtype):
        """An uninitialised array of ``shape`` and ``dtype``: the one kept under ``name`` if it has that shape and
        dtype and nothing else refers to it, else a new one, kept under ``name`` (with gradients enabled)."""
        shape, dtype = tuple(shape), np.dtype(dtype)
        if not is_grad_enabled():
            return np.empty(shape, dtype)
        arrays = self._arrays
        with _lock:                                      # checked and taken before another thread can look
            if name in arrays and arrays[name].shape == shape and arrays[name].dtype == dtype \
                    and _references(arrays, name) == _UNSHARED:
                return arrays[name]
            arrays.pop(name, None)                       # let an old one go before the new one is made
            array = arrays[name] = np.empty(shape, dtype)
            return array

    def clear(self):
        """Let every kept array go."""
        self._arrays.clear()

    @property
    def nbytes(self):
        """The bytes of the arrays kept."""
        return sum(a.nbytes for a in self._arrays.values())

    def __deepcopy__(self, memo):
        return type(self)()

    def __reduce__(self):
        return type(self), ()


class KeepsArrays:
    """Mixin of a layer that keeps arrays from one train step to the next in ``self._kept`` (a
    :class:`ReusedArrays`): ``clear_cache`` lets them go along with the forward cache."""

    def clear_cache(self):
        super().clear_cache()
        self._kept.clear()


def _kept(module):
    """The ReusedArrays of ``module`` and of every layer inside it."""
    return [value for m in module.modules() for value in vars(m).values() if isinstance(value, ReusedArrays)]


def release_memory(module):
    """Let go of the arrays ``module`` and its layers keep between train steps (a fast DenseNet does this when
    put in eval mode: inference uses none of them)."""
    for kept in _kept(module):
        kept.clear()


def kept_nbytes(module):
    """The bytes of the arrays ``module`` and its layers keep between train steps."""
    return sum(kept.nbytes for kept in _kept(module))
