"""The layer protocol shared by every module: Parameter, Module, Sequential.

The protocol, in four lines:

* ``y = module(x)`` runs ``forward`` and caches exactly what ``backward`` needs;
* ``dx = module.backward(dy)`` takes the upstream gradient, returns the input gradient and frees the cache;
* ``backward`` *adds* into each parameter's ``.grad`` (``+=``, never ``=``): in a DenseNet a feature map has
  many consumers and its gradient is the sum of theirs, and the same holds for shared parameters;
* child modules are attributes, named like PyTorch's, so names compose: ``block.layer.conv.weight``.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Iterator

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_GRAD_ENABLED = [True]
NO_GRAD = "forward ran inside no_grad()"          # what a layer caches when nothing is kept for backward


class no_grad:
    """Context manager: forward passes inside keep nothing for backward (inference: less memory).

    >>> with no_grad():
    ...     logits = model(x)
    """

    def __enter__(self):
        self._previous = _GRAD_ENABLED[0]
        _GRAD_ENABLED[0] = False
        return self

    def __exit__(self, *exc):
        _GRAD_ENABLED[0] = self._previous
        return False


def is_grad_enabled():
    """False inside :class:`no_grad`."""
    return _GRAD_ENABLED[0]


def saved(cache):
    """What a layer's forward stores for backward: ``cache``, or a marker inside :class:`no_grad`."""
    return cache if _GRAD_ENABLED[0] else NO_GRAD


def check_float_dtype(dtype, argument="dtype"):
    """Return ``np.dtype(dtype)`` if it is float32 or float64, else raise a TypeError naming ``argument``."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"{argument} must be float32 or float64, got {dtype!r}") from None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"{argument} must be float32 or float64, got {dt}")
    return dt


class Parameter:
    """A trainable array and the gradient accumulated into it.

    Attributes
    ----------
    data : ndarray
        The value.
    grad : ndarray
        Same shape and dtype as ``data``; ``backward`` adds into it, ``zero_grad`` sets it to 0.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = np.ascontiguousarray(data)
        self.grad = np.zeros_like(self.data)

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    def __repr__(self):
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype})"


class Module:
    """Base class of every layer and model.

    Subclasses implement ``forward(*inputs)`` and ``backward(dout)``. Assigning a :class:`Parameter` or a
    :class:`Module` to an attribute registers it; buffers (running statistics) are registered with
    :meth:`register_buffer`. Names follow PyTorch so that ``state_dict`` keys match torchvision's.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # -- registration ---------------------------------------------------------------------------------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        if isinstance(value, Parameter):
            self._modules.pop(name, None)
            self._buffers.pop(name, None)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._parameters.pop(name, None)
            self._buffers.pop(name, None)
            self._modules[name] = value
        elif name not in self._buffers:     # a buffer stays registered when reassigned (e.g. `self.buf += x`)
            self._parameters.pop(name, None)
            self._modules.pop(name, None)
        object.__setattr__(self, name, value)

    def register_buffer(self, name, array):
        """Register a non-trainable array (e.g. ``running_mean``) that ``state_dict`` saves."""
        self._buffers[name] = name
        object.__setattr__(self, name, array)

    def __delattr__(self, name):
        for registry in (self._parameters, self._modules, self._buffers):
            registry.pop(name, None)
        object.__delattr__(self, name)

    # -- calling --------------------------------------------------------------------------------------
    def __call__(self, *inputs):
        return self.forward(*inputs)

    def forward(self, *inputs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def backward(self, dout):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not define backward")

    # -- traversal ------------------------------------------------------------------------------------
    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        yield from self._modules.items()

    def children(self):
        for _, m in self.named_children():
            yield m

    def named_modules(self, prefix=""):
        """Yield ``(name, module)`` for this module and every descendant, depth first."""
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        for _, m in self.named_modules():
            yield m

    def named_parameters(self, prefix="", recurse=True) -> Iterator[tuple[str, Parameter]]:
        """Yield ``(name, Parameter)`` with PyTorch's dotted names, e.g. ``features.conv0.weight``
        (``recurse=False``: this module's own parameters only)."""
        for mod_name, mod in (self.named_modules(prefix) if recurse else [(prefix, self)]):
            for name, p in mod._parameters.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        for _, p in self.named_parameters():
            yield p

    def named_buffers(self, prefix="", recurse=True):
        """Yield ``(name, array)`` for every buffer (running statistics), with dotted names
        (``recurse=False``: this module's own buffers only)."""
        for mod_name, mod in (self.named_modules(prefix) if recurse else [(prefix, self)]):
            for name in mod._buffers:
                yield (f"{mod_name}.{name}" if mod_name else name), getattr(mod, name)

    def num_parameters(self):
        """Total number of trainable scalars."""
        return int(sum(p.size for p in self.parameters()))

    # -- modes and gradients --------------------------------------------------------------------------
    def train(self, mode=True):
        """Set training mode (batch statistics, dropout on) for this module and its children."""
        for m in self.modules():
            object.__setattr__(m, "training", bool(mode))
        return self

    def eval(self):
        """Set evaluation mode (running statistics, dropout off)."""
        return self.train(False)

    def zero_grad(self):
        """Set every parameter's ``.grad`` to zero, in place."""
        for p in self.parameters():
            p.grad[...] = 0

    def to(self, dtype):
        """Convert every parameter and floating buffer to ``dtype`` (float32 or float64), in place.

        Gradients are converted too. Integer buffers (``num_batches_tracked``) are left alone.
        """
        dt = check_float_dtype(dtype)
        for m in self.modules():
            for p in m._parameters.values():
                p.data = p.data.astype(dt)
                p.grad = p.grad.astype(dt)
            for name in m._buffers:
                b = getattr(m, name)
                if isinstance(b, np.ndarray) and b.dtype.kind == "f":
                    object.__setattr__(m, name, b.astype(dt))
            m.clear_cache()
        return self

    def double(self):
        return self.to(np.float64)

    def float(self):
        return self.to(np.float32)

    def clear_cache(self):
        """Drop whatever forward cached (overridden by layers that cache)."""
        if "_cache" in self.__dict__:
            object.__setattr__(self, "_cache", None)

    # -- state dict -----------------------------------------------------------------------------------
    def state_dict(self):
        """An ordered dict of name -> array copy: parameters and buffers, with PyTorch's key names."""
        out = OrderedDict()
        for mod_name, mod in self.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            for name, p in mod._parameters.items():
                out[prefix + name] = p.data.copy()
            for name in mod._buffers:
                out[prefix + name] = np.array(getattr(mod, name), copy=True)
        return out

    def _state_slots(self):
        """name -> (module, attribute, is_parameter), in state_dict order."""
        slots = OrderedDict()
        for mod_name, mod in self.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            for name in mod._parameters:
                slots[prefix + name] = (mod, name, True)
            for name in mod._buffers:
                slots[prefix + name] = (mod, name, False)
        return slots

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from ``state_dict`` into parameters and buffers (values cast to their dtype).

        Everything is checked before anything changes: with ``strict=True`` every missing key, unexpected
        key and shape mismatch is reported in one ``ValueError``; with ``strict=False`` missing and
        unexpected keys are returned (shape mismatches still raise). Values must be real numbers of the
        right kind (a float parameter or buffer takes floats, rounded to its precision; an integer buffer takes
        integers; never complex, boolean, text or objects, and integers are not cast to floats) and finite,
        and a ``running_var`` must be >= 0. A missing ``num_batches_tracked`` is set to 0, as
        PyTorch does for old checkpoints. Returns ``(missing_keys, unexpected_keys)``.
        """
        if not hasattr(state_dict, "items"):
            raise TypeError(f"load_state_dict: state_dict must be a mapping of name -> array, got "
                            f"{type(state_dict).__name__}")
        slots = self._state_slots()
        given = OrderedDict((str(k), v) for k, v in state_dict.items())
        for key in slots:           # state dicts from before PyTorch 0.4.1 (torchvision's published weights)
            if key.rsplit(".", 1)[-1] == "num_batches_tracked" and key not in given:   # have no counter:
                given[key] = np.array(0, dtype=np.int64)                # PyTorch starts it at 0, so do we
        missing = [k for k in slots if k not in given]
        unexpected = [k for k in given if k not in slots]
        mismatched, bad_values, converted = [], [], OrderedDict()
        for key, value in given.items():
            if key not in slots:
                continue
            mod, name, is_param = slots[key]
            current = getattr(mod, name).data if is_param else getattr(mod, name)
            target = np.asarray(current).dtype
            shape = np.shape(value)
            if tuple(shape) != tuple(np.shape(current)):
                mismatched.append(f"{key}: checkpoint has shape {tuple(shape)}, "
                                  f"model expects {tuple(np.shape(current))}")
                continue
            problem, array = _convert(value, target, is_variance=name == "running_var")
            if problem:
                bad_values.append(f"{key}: {problem}")
            else:
                converted[key] = array
        problems = []
        if mismatched:
            problems.append("size mismatch for " + _some(mismatched, "; "))
        if bad_values:
            problems.append("bad values for " + _some(bad_values, "; "))
        if strict and missing:
            problems.append("missing keys: " + _some(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + _some(unexpected))
        if problems:
            raise ValueError(f"Error(s) in loading state_dict for {type(self).__name__}: "
                             + " | ".join(problems))
        for key, array in converted.items():            # nothing has changed until here
            mod, name, is_param = slots[key]
            if is_param:
                getattr(mod, name).data[...] = array
            else:
                object.__setattr__(mod, name, array.reshape(np.shape(getattr(mod, name))))
        return missing, unexpected

    # -- printing -------------------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        if self._modules:
            for name, child in self._modules.items():
                child_repr = repr(child).replace("\n", "\n  ")
                lines.append(f"  ({name}): {child_repr}")
            return "\n".join(lines) + "\n)"
        return lines[0] + ")"


def restore_buffers(module, buffers):
    """Put back buffers saved from ``module.named_buffers()`` (a dict name -> array copy), unchecked: for
    tools that run a forward and leave the model as it was, even one whose statistics are already NaN."""
    slots = module._state_slots()
    for key, value in buffers.items():
        mod, name, _ = slots[key]
        object.__setattr__(mod, name, np.array(value, copy=True))


def _convert(value, dtype, is_variance=False):
    """(problem, array): ``value`` as a new array of ``dtype``, or a description of why it cannot be."""
    try:
        array = np.asarray(value)
    except Exception as exc:                                     # ragged lists and the like
        return f"not an array ({exc})", None
    if array.dtype.kind not in "fiu" or (array.dtype.kind == "f") != (dtype.kind == "f"):
        return f"dtype {array.dtype} cannot be loaded into a {dtype} tensor (values are not cast)", None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        return f"{int(np.size(array) - np.isfinite(array).sum())} non-finite value(s) (NaN or inf)", None
    if is_variance and array.size and (array < 0).any():
        return f"a running variance must be >= 0, got minimum {array.min()}", None
    return None, np.array(array, dtype=dtype, copy=True)


def _some(items, sep=", ", shown=12):
    """The first ``shown`` items joined, and how many more there are."""
    more = f"{sep}... and {len(items) - shown} more ({len(items)} in all)" if len(items) > shown else ""
    return sep.join(items[:shown]) + more


class Sequential(Module):
    """Modules applied in order; children are named ``"0"``, ``"1"``, ... or by the keys of an OrderedDict.

    ``backward`` runs the children's ``backward`` in reverse order.
    """

    def __init__(self, *modules):
        super().__init__()
        named = modules[0].items() if len(modules) == 1 and isinstance(modules[0], dict) else \
            ((str(i), m) for i, m in enumerate(modules))
        for name, m in named:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential: every child must be a Module, got {type(m).__name__} ({m!r}) "
                                f"as child {name!r}")
            setattr(self, name, m)

    def __iter__(self):
        return iter(self._modules.values())

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def backward(self, dout):
        for m in reversed(list(self._modules.values())):
            dout = m.backward(dout)
        return dout
