"""The checker for PyTorch and JAX code: :func:`check_torch` and :func:`check_jax`.

The analytic vector-Jacobian products come from the framework's own autodiff (``torch.autograd.grad``,
``jax.vjp``) and the numbers from our finite differences, on CPU in float64, with the engine, modes, report,
float32 rows and executors of :func:`~numpy_densenet.gradcheck.gradcheck`. torch and jax are imported only when
these are called (neither is a dependency).
"""
from __future__ import annotations

import copy

import numpy as np

from .engine import check_probe, finish, options_for
from .functions import FunctionProbe, name_of

__all__ = ["check_torch", "check_jax"]


def check_torch(fn, *inputs, **options):
    """Check a PyTorch function's gradients (torch's autograd) against our finite differences, in float64 on CPU.

    Parameters
    ----------
    fn : callable
        Any function of tensors: a custom ``torch.autograd.Function``'s ``apply``, an ``nn.Module`` (deep-copied
        to float64 on CPU: yours is left untouched; its parameters get rows under their ``named_parameters()``
        names), or a composition. It returns a float tensor or a tuple of them, computed in the inputs' dtype.
    *inputs : tensors, arrays and other values, or one dict
        Float tensors and arrays are checked (as float64 tensors that require grad); anything else (integer
        labels, ``None``, numbers) is passed through unchecked. One dict of them is passed by keyword.
    **options
        :func:`~numpy_densenet.gradcheck.gradcheck`'s (``mode``, ``seed``, ``eps``, ``rtol``, ``atol``,
        ``float32``, ``raise_exception``, ``executor``, ...).

    Returns
    -------
    GradcheckResult
        One row per checked input and parameter, and the protocol checks: the same gradients twice, the upstream
        gradient (``grad_output``) left unchanged, the inputs left unchanged.

    torch's random state, NumPy's global one and the module's buffers are restored before every forward, so a
    Dropout draws the same mask and a BatchNorm in train mode sees the same running statistics at every probe.
    """
    __tracebackhide__ = True
    import torch
    options, raise_exception = options_for("check_torch", options)
    states = torch.get_rng_state(), np.random.get_state()
    try:
        result = check_probe(TorchProbe(fn, inputs, options["seed"]), name_of(fn), **options)
    finally:
        torch.set_rng_state(states[0])              # the caller's random states, as if nothing had run
        np.random.set_state(states[1])
    return finish(result, raise_exception)


def check_jax(fn, *inputs, **options):
    """Check a JAX function's gradients (``jax.vjp``) against our finite differences, in float64 on CPU.

    Parameters
    ----------
    fn : callable
        A function of arrays returning a float array or a tuple of them.
    *inputs : arrays and other values, or one dict
        Float arrays (NumPy's or JAX's) are checked; anything else is passed through unchecked (closed over,
        not differentiated). One dict of them is passed by keyword.
    **options
        :func:`~numpy_densenet.gradcheck.gradcheck`'s.

    Returns
    -------
    GradcheckResult

    Runs under ``jax.enable_x64`` (so float64 stays float64), and the float32 rows (``float32=True``) run ``fn``
    on float32 arrays.
    """
    __tracebackhide__ = True
    options, raise_exception = options_for("check_jax", options)
    probe = JaxProbe(fn, inputs, options["seed"])
    return finish(check_probe(probe, name_of(fn), **options), raise_exception)


class Held:
    """A framework parameter as the engine sees it: its value, a float64 array perturbed in place."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data

    @property
    def size(self):
        return self.data.size


def converted(inputs, to_numpy):
    """``inputs`` (a tuple, or one dict) with each value passed through ``to_numpy``."""
    if len(inputs) == 1 and isinstance(inputs[0], dict):
        return ({k: to_numpy(v) for k, v in inputs[0].items()},)
    return tuple(to_numpy(v) for v in inputs)


class TorchProbe(FunctionProbe):
    """``fn`` on float64 tensors; its VJP from ``torch.autograd.grad``."""

    def __init__(self, fn, inputs, seed):
        import torch
        if not callable(fn):
            raise TypeError(f"check_torch: fn must be callable (a function, a Function's apply, an nn.Module), got "
                            f"{type(fn).__name__}")
        self.module = None
        if isinstance(fn, torch.nn.Module):
            fn = self.module = copy.deepcopy(fn).to(device="cpu", dtype=torch.float64)
        self.fn, self.fn32 = fn, None
        named = [(n, p) for n, p in fn.named_parameters() if p.requires_grad] if self.module is not None else []
        params = [(n, Held(p.detach().numpy().astype(np.float64))) for n, p in named]
        self.buffers = [b.detach().clone() for b in fn.buffers()] if self.module is not None else []
        self.torch_state, self.numpy_state = torch.get_rng_state(), np.random.get_state()

        def to_numpy(v):
            if torch.is_tensor(v) and (v.is_floating_point() or v.is_complex()):
                return v.detach().cpu().resolve_conj().numpy().copy()
            return v
        super().__init__("check_torch", converted(inputs, to_numpy), seed, params)

    def module_in(self, dtype):
        """``fn`` for arrays of ``dtype``: the float64 copy, or a float32 copy of a module."""
        if dtype == np.float64 or self.module is None:
            return self.fn
        if self.fn32 is None:
            import torch
            self.fn32 = copy.deepcopy(self.module).to(torch.float32)
        return self.fn32

    def run(self, args, params):
        import torch
        torch.set_rng_state(self.torch_state)
        np.random.set_state(self.numpy_state)
        dtype = args[self.array_inputs[0]].dtype
        fn = self.module_in(dtype)
        if self.module is not None:
            with torch.no_grad():
                for b, saved in zip(fn.buffers(), self.buffers):
                    b.copy_(saved)
                for (_, p), value in zip(self.trained(fn), params):
                    p.copy_(torch.from_numpy(value))
        tensors = [torch.from_numpy(a).requires_grad_(True) if i in self.array_inputs else a
                   for i, a in enumerate(args)]
        with torch.enable_grad():
            out = fn(**dict(zip(self.keywords, tensors))) if self.keywords else fn(*tensors)
        outs = self.checked_outputs(out, torch.float32 if dtype == np.float32 else torch.float64)
        leaves = [tensors[i] for i in self.array_inputs] + [p for _, p in self.trained(fn)]
        return [o.detach().numpy().copy() for o in outs], (outs, leaves)

    def trained(self, fn):
        return [(n, p) for n, p in fn.named_parameters() if p.requires_grad] if self.module is not None else []

    def checked_outputs(self, out, dtype):
        """The float outputs, checked (integer ones, such as the indices of ``max(dim)``, carry no gradient)."""
        import torch
        outs = list(out) if isinstance(out, (tuple, list)) else [out]
        whole = [o for o in outs if torch.is_tensor(o) and not (o.is_floating_point() or o.is_complex())]
        if whole and len(whole) < len(outs):
            outs = [o for o in outs if not any(o is w for w in whole)]
            if "integer outputs left out (no gradient)" not in self.notes:
                self.notes.append("integer outputs left out (no gradient)")
        for k, o in enumerate(outs):
            what = f"output {k}" if len(outs) > 1 else "its output"
            if not torch.is_tensor(o):
                raise TypeError(f"check_torch: fn returned {type(o).__name__} as {what}, expected a tensor (or a "
                                f"tuple of tensors)")
            if not o.is_floating_point() or o.dtype != dtype:
                raise TypeError(f"check_torch: fn returned a {o.dtype} tensor as {what} for {dtype} inputs: expected "
                                f"{dtype} (real floats, computed in the inputs' dtype)")
        if not any(o.requires_grad for o in outs):
            raise TypeError("check_torch: fn's output does not require grad, so torch cannot differentiate it: fn "
                            "detached it or computed it outside autograd (through NumPy? wrap that code in a "
                            "torch.autograd.Function)")
        return outs

    def vjp(self, handle, douts):
        import torch
        outs, leaves = handle
        pairs = [(o, torch.from_numpy(d) if isinstance(d, np.ndarray) else torch.tensor(d, dtype=o.dtype))
                 for o, d in zip(outs, douts) if o.requires_grad]
        grads = torch.autograd.grad([o for o, _ in pairs], leaves, grad_outputs=[d for _, d in pairs],
                                    allow_unused=True)
        grads = [np.zeros(tuple(leaf.shape), dtype=np.dtype(str(leaf.dtype).replace("torch.", "")))
                 if d is None else d.detach().numpy().copy() for leaf, d in zip(leaves, grads)]
        n = len(self.array_inputs)
        return grads[:n], grads[n:]


def enable_x64(jax):
    """A context in which JAX keeps float64 (``jax.enable_x64``; ``jax.experimental.enable_x64`` before 0.6)."""
    enable = getattr(jax, "enable_x64", None)
    if enable is not None:
        return enable(True)
    from jax.experimental import enable_x64 as experimental
    return experimental()


class JaxProbe(FunctionProbe):
    """``fn`` on JAX arrays; its VJP from ``jax.vjp`` (the other inputs closed over)."""

    def __init__(self, fn, inputs, seed):
        import jax
        if not callable(fn):
            raise TypeError(f"check_jax: fn must be callable, got {type(fn).__name__}")
        self.fn = fn

        def to_numpy(v):
            return np.array(v) if isinstance(v, jax.Array) else v
        super().__init__("check_jax", converted(inputs, to_numpy), seed)

    def run(self, args, params):
        import jax
        dtype = args[self.array_inputs[0]].dtype

        def f(*floats):
            full = list(args)
            for i, value in zip(self.array_inputs, floats):
                full[i] = value
            return self.fn(**dict(zip(self.keywords, full))) if self.keywords else self.fn(*full)

        with enable_x64(jax):
            out, pullback = jax.vjp(f, *[jax.numpy.asarray(args[i]) for i in self.array_inputs])
        multi = isinstance(out, (tuple, list))
        outs = [np.asarray(o) for o in (out if multi else [out])]
        for k, o in enumerate(outs):
            if o.dtype != dtype:
                raise TypeError(f"check_jax: fn returned a {o.dtype} array as "
                                f"{f'output {k}' if multi else 'its output'} for {dtype} inputs: expected {dtype} "
                                f"(real floats, computed in the inputs' dtype)")
        return [o.copy() for o in outs], (pullback, multi)

    def vjp(self, handle, douts):
        import jax
        pullback, multi = handle
        with enable_x64(jax):
            cotangents = [jax.numpy.asarray(d) for d in douts]
            grads = pullback(tuple(cotangents) if multi else cotangents[0])
        return [np.array(d) for d in grads], []
