"""The checker for functions: :func:`check_backward` for a NumPy forward/backward pair, and :class:`FunctionProbe`,
the probe of any function of arrays that the PyTorch and JAX front doors (:mod:`.frameworks`) build on.

A function is checked like a module: L = sum(g * f(inputs)) with a seeded random upstream gradient g, its
analytic vector-Jacobian product against our finite differences, in float64, in any mode, with float32 rows and
on executors. The protocol checks that mean something for a function:

* two forward/backward runs give the same gradients (no state leaks between calls);
* the upstream gradient handed to backward is left unchanged;
* the inputs are left unchanged by forward and by backward (a cache holding the input, written into).

There is no ``.grad`` to accumulate into (``result.accumulates`` is None).
"""
from __future__ import annotations

import numpy as np

from .engine import check_probe, finish, options_for
from .probe import BaseProbe, close

__all__ = ["check_backward", "FunctionProbe"]


def check_backward(forward, backward, *inputs, **options):
    """Check a NumPy forward/backward pair (CS231n style) against central finite differences in float64.

    Parameters
    ----------
    forward : callable
        ``forward(*inputs) -> (out, cache)``; ``out`` an array or a tuple of arrays.
    backward : callable
        ``backward(dout, cache) -> gradient(s)``; ``dout`` an array (a tuple matching ``out`` when forward
        returns several). One array for one input; otherwise a tuple with one gradient per input, in input
        order (None for an input without a gradient, such as integer labels), or one per float array input
        (CS231n's ``conv_backward`` returns dx, dw, db for x, w, b, conv_param).
    *inputs : arrays and other values, or one dict
        Float arrays are checked (in float64: float32 ones are converted); anything else (integer labels,
        ``None``, a dict of hyperparameters, a number) is passed through unchecked. One dict of them is passed
        by keyword, and its keys name the rows (else "input[i]", by position).
    **options
        :func:`~numpy_densenet.gradcheck.gradcheck`'s: ``mode``, ``seed``, ``eps``, ``rtol``, ``atol``,
        ``samples``, ``directions``, ``float32``, ``raise_exception``, ``executor`` (the functions must then be
        picklable: defined at module level), ``tie_convention`` (``"any"``, the default: any valid subgradient
        passes at a tie; ``"first"``: also PyTorch's choice, every tie broken towards the first element in index
        order), and the rest.

    Returns
    -------
    GradcheckResult
        One row per checked input, the protocol checks, and a legend; ``print`` it.

    The global NumPy random state (``np.random.seed``/``np.random.rand``) is restored before every forward,
    so a forward drawing a dropout mask from it evaluates the same function at every probe (and after the
    check, so the caller's draws go on as if nothing had run).
    """
    __tracebackhide__ = True
    options, raise_exception = options_for("check_backward", options)
    state = np.random.get_state()
    try:
        probe = PairProbe(forward, backward, inputs, options["seed"])
        result = check_probe(probe, f"{name_of(forward)}/{name_of(backward)}", **options)
    finally:
        np.random.set_state(state)                  # the caller's random state, as if nothing had run
    return finish(result, raise_exception)


def name_of(fn):
    """How the report names ``fn``: its qualified name, ``MyFunction.apply``, or a module's class name."""
    owner = getattr(fn, "__self__", None)
    if isinstance(owner, type):
        return f"{owner.__name__}.{getattr(fn, '__name__', '')}"
    return getattr(fn, "__qualname__", None) or type(fn).__name__


class FunctionProbe(BaseProbe):
    """The probe of a function of arrays (and of parameters ``params``, ``(name, holder)`` pairs, for a
    framework's module). ``door`` names the front door in errors.

    Subclasses define ``run(args, params) -> (outputs, handle)``: the function at ``args`` (a list: the float
    array inputs, indices ``array_inputs``, as fresh arrays of one dtype, the others as given) with parameter
    values ``params`` (arrays of that dtype); ``outputs`` a list of arrays, ``handle`` what the VJP needs. And
    ``vjp(handle, douts) -> (input gradients, parameter gradients)``: one per float array input (None: it has
    no gradient and is not checked) and one per parameter. ``float_inputs`` are the checked ones.
    """

    accumulates = None

    def __init__(self, door, inputs, seed, params=()):
        self.door = door
        values, self.keywords = split_inputs(door, inputs)
        self.inputs, self.float_inputs, passed = [], [], []
        for i, v in enumerate(values):
            if isinstance(v, np.ndarray) and v.dtype.kind == "c":
                raise TypeError(f"{door}: {self.label(i)} is {v.dtype}: complex inputs are not supported (check the "
                                f"real and imaginary parts as two real inputs)")
            if isinstance(v, np.ndarray) and v.dtype.kind == "f":
                self.float_inputs.append(i)
                v = np.array(v, dtype=np.float64)
            elif not (v is None or isinstance(v, np.ndarray) and v.dtype.kind in "iub"):
                passed.append(f"{self.label(i)} ({type(v).__name__})")
            self.inputs.append(v)
        if not self.float_inputs:
            raise ValueError(f"{door}: no float array among the inputs, nothing to check (got "
                             f"{', '.join(type(v).__name__ for v in values) or 'no input'})")
        self.array_inputs = list(self.float_inputs)         # checked unless the gradient is None
        self.params = list(params)
        self.notes, self.parallel = [], None
        if passed:
            self.notes.append("passed through unchecked: " + ", ".join(passed))
        self.out_shapes = None
        self.start(seed)

    # -- names ------------------------------------------------------------------------------------------------
    def label(self, i):
        """How errors name input ``i``."""
        return f"input {self.keywords[i]!r}" if self.keywords else f"input {i}"

    def input_name(self, i):
        return self.keywords[i] if self.keywords else super().input_name(i)

    # -- evaluation ---------------------------------------------------------------------------------------------
    def call_args(self, inputs=None, dtype=np.float64):
        """Fresh copies of the checked inputs (in ``dtype``), the other inputs as they are."""
        inputs = self.inputs if inputs is None else inputs
        return [np.array(a, dtype=dtype) if i in self.array_inputs else a for i, a in enumerate(inputs)]

    def param_values(self, dtype=np.float64):
        return [np.array(p.data, dtype=dtype) for _, p in self.params]

    def forward(self, inputs=None):
        outputs, _ = self.run(self.call_args(inputs), self.param_values())
        return self.flat(outputs)

    def flat(self, outputs):
        """The outputs as one float64 array: the output itself when there is one, else all of them raveled."""
        shapes = [np.shape(o) for o in outputs]
        if self.out_shapes is None:
            self.out_shapes = shapes
        elif shapes != self.out_shapes:
            raise ValueError(f"{self.door}: the function's output shapes changed between calls: {self.out_shapes} "
                             f"then {shapes}")
        if len(outputs) == 1:
            return np.asarray(outputs[0], dtype=np.float64)
        return np.concatenate([np.asarray(o, dtype=np.float64).ravel() for o in outputs])

    def douts(self, g, dtype=np.float64):
        """The upstream gradient g split like the outputs: a list of fresh arrays (a NumPy scalar for a 0-d one)."""
        g = np.asarray(g, dtype=dtype)
        if len(self.out_shapes) == 1:
            return [g.copy() if g.shape else g[()]]
        out, start = [], 0
        for shape in self.out_shapes:
            n = int(np.prod(shape))
            piece = g[start:start + n].reshape(shape).copy()
            out.append(piece if piece.shape else piece[()])
            start += n
        return out

    # -- analytic gradients and the protocol --------------------------------------------------------------------
    def gradients(self, args, params, g, dtype=np.float64):
        """One forward and backward at ``args``: (input gradients, one per float array input, None where there is
        none; parameter gradients; upstream intact; what was changed in place)."""
        originals = [np.array(a, copy=True) if i in self.array_inputs else None for i, a in enumerate(args)]
        outputs, handle = self.run(args, params)
        self.flat(outputs)
        changed = [f"forward changed {self.label(i)}" for i in self.array_inputs
                   if not np.array_equal(args[i], originals[i], equal_nan=True)]
        douts = self.douts(g, dtype)
        kept = [np.array(d, copy=True) for d in douts]
        dxs, dps = self.vjp(handle, douts)
        intact = all(np.array_equal(d, k, equal_nan=True) for d, k in zip(douts, kept))
        changed += [f"backward changed {self.label(i)}" for i in self.array_inputs
                    if not np.array_equal(args[i], originals[i], equal_nan=True)]
        dxs = [self.checked_gradient(i, d, dtype) for i, d in zip(self.array_inputs, dxs)]
        dps = [self.checked_gradient(name, d, dtype, p.data.shape) for (name, p), d in zip(self.params, dps)]
        return dxs, dps, intact, changed

    def checked_gradient(self, i, d, dtype, shape=None):
        """``d``, the gradient of input ``i`` (or parameter ``i``, of ``shape``), checked: an array of the input's
        shape and dtype; None stays None (not checked)."""
        if d is None:
            return None
        what = f"parameter {i!r}" if shape is not None else self.label(i)
        shape = self.inputs[i].shape if shape is None else shape
        if not isinstance(d, np.ndarray) and not (np.isscalar(d) and shape == ()):
            raise TypeError(f"{self.door}: the gradient of {what} is a {type(d).__name__}, expected an array of "
                            f"shape {shape}")
        d = np.asarray(d)
        if d.shape != shape:
            raise ValueError(f"{self.door}: the gradient of {what} has shape {d.shape}, expected {shape} (the "
                             f"input's)")
        if d.dtype != dtype and dtype == np.float64:
            raise TypeError(f"{self.door}: the gradient of {what} is {d.dtype}, expected {np.dtype(dtype)} like "
                            f"the input (the check runs in float64)")
        return d

    def _analytic(self):
        args, params = self.call_args(), self.param_values()
        dx1, pg1, intact1, changed1 = self.gradients(args, params, self.g)
        args, params = self.call_args(), self.param_values()
        dx2, pg2, intact2, changed2 = self.gradients(args, params, self.g)
        dropped = [i for i, d in zip(self.array_inputs, dx1) if d is None]
        if dropped:
            self.notes.append("no gradient returned (None), not checked: "
                              + ", ".join(self.label(i) for i in dropped))
        keep = [k for k, d in enumerate(dx1) if d is not None]
        self.float_inputs = [self.array_inputs[k] for k in keep]
        if not self.float_inputs and not self.params:
            raise ValueError(f"{self.door}: no gradient returned for any input, nothing to check")
        self.input_grads = [np.array(dx1[k], dtype=np.float64) for k in keep]
        self.param_grads = [np.array(d, dtype=np.float64) for d in pg1]
        pairs = [(dx1[k], dx2[k]) for k in keep] + list(zip(pg1, pg2))
        self.reentrant = all(close(np.asarray(a, np.float64), np.asarray(b, np.float64)) for a, b in pairs)
        self.upstream_intact = intact1 and intact2
        changed = list(dict.fromkeys(changed1 + changed2))
        self.inputs_intact = not changed
        if not self.reentrant:
            self.notes.append("two forward/backward runs on the same inputs gave different gradients: state leaks "
                              "between calls")
        if not self.upstream_intact:
            self.notes.append("backward modified the upstream gradient it was given, in place: other consumers "
                              "of the same gradient would see the corruption")
        if changed:
            self.notes.append("inputs modified in place (a caller's arrays, or a cache holding them, written "
                              "into): " + "; ".join(changed))

    def float32_gradients(self, check_inputs, check_params):
        """[(name, gradient)] of a float32 run and of a float64 run at the same float32-rounded point."""
        names = [self.input_name(i) for i in self.float_inputs] if check_inputs else []
        names += [name for name, _ in self.params] if check_params else []
        runs = []
        for dtype in (np.float32, np.float64):
            args = self.call_args([np.asarray(a, dtype=np.float32) if i in self.array_inputs else a
                                   for i, a in enumerate(self.inputs)], dtype)
            params = [p.astype(np.float32).astype(dtype) for p in self.param_values()]
            g = self.g.astype(np.float32).astype(dtype)
            dxs, dps, _, _ = self.gradients(args, params, g, dtype)
            dxs = [d for i, d in zip(self.array_inputs, dxs) if i in self.float_inputs]
            grads = (dxs if check_inputs else []) + (dps if check_params else [])
            runs.append(list(zip(names, grads)))
        return runs


def split_inputs(door, inputs):
    """(values, keyword names or None): one dict of inputs is passed by keyword."""
    if len(inputs) == 1 and isinstance(inputs[0], dict):
        names = list(inputs[0])
        if not all(isinstance(k, str) for k in names):
            raise TypeError(f"{door}: a dict of inputs must have str keys (the argument names), got {names!r}")
        return list(inputs[0].values()), names
    return list(inputs), None


class PairProbe(FunctionProbe):
    """A NumPy forward/backward pair: ``forward(*inputs) -> (out, cache)``, ``backward(dout, cache)``."""

    def __init__(self, forward, backward, inputs, seed):
        for name, fn in (("forward", forward), ("backward", backward)):
            if not callable(fn):
                raise TypeError(f"check_backward: {name} must be callable, got {type(fn).__name__}")
        self.forward_fn, self.backward_fn = forward, backward
        self.random_state = np.random.get_state()
        super().__init__("check_backward", inputs, seed)

    def run(self, args, params):
        np.random.set_state(self.random_state)
        result = self.forward_fn(**dict(zip(self.keywords, args))) if self.keywords else self.forward_fn(*args)
        if not (isinstance(result, tuple) and len(result) == 2):
            got = f"a tuple of {len(result)}" if isinstance(result, tuple) else f"a {type(result).__name__}"
            raise TypeError(f"check_backward: forward must return (out, cache), got {got}")
        out, cache = result
        outputs = list(out) if isinstance(out, (tuple, list)) else [out]
        for k, o in enumerate(outputs):
            if not (isinstance(o, np.ndarray) and o.dtype.kind == "f" or isinstance(o, (float, np.floating))):
                what = type(o).__name__ if not isinstance(o, np.ndarray) else f"a {o.dtype} array"
                raise TypeError(f"check_backward: forward's out{f'[{k}]' if len(outputs) > 1 else ''} is {what}, "
                                f"expected a float array (or a tuple of them)")
        return outputs, cache

    def vjp(self, cache, douts):
        grads = self.backward_fn(douts[0] if len(douts) == 1 else tuple(douts), cache)
        n, floats = len(self.inputs), self.array_inputs
        if not isinstance(grads, (tuple, list)) or n == 1 and len(grads) != 1:   # one input: its gradient
            if len(floats) != 1 and n != 1:
                raise TypeError(f"check_backward: backward returned one {type(grads).__name__} for {n} inputs: "
                                f"expected a tuple with one gradient per input")
            grads = (grads,)
        if len(grads) == n:
            return [grads[i] for i in floats], []
        if len(grads) == len(floats):
            return list(grads), []
        raise ValueError(f"check_backward: backward returned {len(grads)} gradients for {n} input"
                         f"{'s' if n > 1 else ''}: expected one "
                         f"per input (None for an input without a gradient)"
                         + (f", or one per float array input ({len(floats)})" if len(floats) != n else ""))
