"""The probe: what the engine evaluates and differentiates, and the steps its finite differences take.

:class:`BaseProbe` is the interface every front door's probe implements (a Module here, a NumPy forward/backward
pair or a PyTorch or JAX function in :mod:`.functions` and :mod:`.frameworks`): the engine, the float32 rows and
the executors use nothing else. :class:`Probe` is the module's: a float64 copy of the module, evaluated at
perturbed points with its state reset."""
from __future__ import annotations

import copy
import math

import numpy as np

from .report import fmt_index

EPS64 = float(np.finfo(np.float64).eps)
NOISE_FACTOR = 4.0          # rounding error of one evaluation of L: NOISE_FACTOR * eps64 * S (see Probe.size)


class Float32Draws:
    """Wraps a ``numpy.random.Generator`` so that ``random(..., dtype=float64)`` returns float32 draws: a
    float64 copy of a Dropout then draws the very mask its float32 twin draws."""

    def __init__(self, generator):
        self._generator = generator

    def random(self, size=None, dtype=np.float64, out=None):
        if np.dtype(dtype) == np.float64 and out is None:
            return self._generator.random(size, dtype=np.float32).astype(np.float64)
        return self._generator.random(size, dtype=dtype, out=out)

    def __getattr__(self, name):
        return getattr(self._generator, name)


class BaseProbe:
    """What the engine needs of a probe, whatever it checks: L = sum(g * f(inputs, params)) at perturbed points,
    the analytic gradients and the protocol checks.

    A subclass sets, before calling :meth:`start`:

    * ``inputs`` - the call's inputs; the checked ones (indices ``float_inputs``) are float64 arrays that the
      engine perturbs in place between evaluations;
    * ``params`` - ``(name, holder)`` pairs, ``holder.data`` a float64 array perturbed in place (``.size``);
    * ``notes`` (a list) and ``parallel`` (None);

    and defines ``forward(inputs=None)`` (the float64 output at the current values), ``_analytic()`` (sets
    ``input_grads``, one per checked input, ``param_grads`` and the protocol flags ``reentrant``,
    ``accumulates`` (None: not applicable), ``upstream_intact``, ``inputs_intact`` (None: not checked)) and
    ``float32_gradients(check_inputs, check_params)`` (or is a :class:`Probe`, whose module float32.py copies).
    """

    accumulates = True
    inputs_intact = None
    tie_convention = "any"                          # or "first": see gradcheck's tie_convention (set by the engine)

    def start(self, seed):
        """Draw the upstream gradient g, evaluate L and the analytic gradients, and bound L's rounding error."""
        out = self.forward()
        self.g = np.random.default_rng([seed, 0]).standard_normal(np.shape(out))  # non-uniform upstream grad
        bad = nonfinite(out)
        if bad is not None:
            self.notes.append(f"{bad[0]} in the forward output at {fmt_index(bad[1])}: every numeric "
                              f"derivative is undefined")
        self.L0 = self.loss()
        self._analytic()
        # S bounds the rounding error of one evaluation of L: the output's own magnitude, plus the magnitude of
        # the inputs and parameters weighted by their gradients, which is how far the output's rounding can
        # reach when the module cancels large terms (BatchNorm on 1e4 + N(0, 1) subtracts 1e4 from each input).
        terms = [np.abs(self.g * out)] + [np.abs(a * self.inputs[i]) for a, i in
                                          zip(self.input_grads, self.float_inputs)]
        terms += [np.abs(a * p.data) for a, (_, p) in zip(self.param_grads, self.params)]
        self.size = float(sum(np.nansum(np.where(np.isfinite(t), t, 0.0)) for t in terms))
        self.size += abs(self.L0) if math.isfinite(self.L0) else 0.0
        self.noise = NOISE_FACTOR * EPS64 * (self.size + 1e-300)          # |error of one evaluation of L|

    def loss(self):
        return float(np.dot(self.g.ravel(), self.forward().ravel()))

    def input_name(self, i):
        """The row name of input ``i``: "input" when it is the only checked one, else "input[i]"."""
        return f"input[{i}]" if len(self.float_inputs) > 1 else "input"

    def input_targets(self):
        for slot, i in enumerate(self.float_inputs):
            yield self.input_name(i), self.inputs[i], self.input_grads[slot]

    def clear_caches(self):
        """Drop whatever the last evaluation left behind (before the probe is pickled for an executor)."""


class Probe(BaseProbe):
    """Holds the float64 copy of the module and evaluates L = sum(g * module(x)) with state reset."""

    def __init__(self, module, x, seed):
        self.module = copy.deepcopy(module).double()
        inputs = x if isinstance(x, (tuple, list)) else (x,)
        self.inputs = []
        for i, a in enumerate(inputs):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"gradcheck: input {i} must be a NumPy array, got {type(a).__name__}")
            self.inputs.append(np.array(a, dtype=np.float64) if a.dtype.kind == "f" else a.copy())
        self.float_inputs = [i for i, a in enumerate(self.inputs) if a.dtype.kind == "f"]
        self.params = list(self.module.named_parameters())
        self.notes = []
        self.parallel = None                        # parallel.ParallelLosses when given an executor
        # Everything forward may change is saved once and restored before each evaluation.
        self.generators = [(m, m.generator) for m in self.module.modules()
                           if isinstance(getattr(m, "generator", None), np.random.Generator)]
        self.generator_states = [copy.deepcopy(g.bit_generator.state) for _, g in self.generators]
        self.buffers = [(m, name, np.array(getattr(m, name), copy=True))
                        for m in self.module.modules() for name, _ in m.named_buffers(recurse=False)]

        self.start(seed)

    def _reset(self):
        for (_, g), state in zip(self.generators, self.generator_states):
            g.bit_generator.state = copy.deepcopy(state)
        for m, name, value in self.buffers:
            object.__setattr__(m, name, value.copy())

    def forward(self, inputs=None):
        self._reset()
        # fresh copies: an in-place module (ReLU(inplace=True)) must not overwrite the probe point
        inputs = self.inputs if inputs is None else inputs
        out = self.module(*[a.copy() if a.dtype.kind == "f" else a for a in inputs])
        return np.asarray(out, dtype=np.float64)

    def _backward(self, g=None, inputs=None):
        """One forward and backward; returns (input grads, param grads, upstream intact, returned view)."""
        self.forward(inputs)
        g = self.g if g is None else g
        upstream = g.copy() if g.shape else g[()]
        grads = self.module.backward(upstream)
        grads = grads if isinstance(grads, (tuple, list)) else (grads,)
        if len(grads) < len(self.float_inputs):
            raise ValueError(f"gradcheck: {type(self.module).__name__}.backward returned {len(grads)} "
                             f"gradient(s) for {len(self.float_inputs)} float input(s)")
        intact = not g.shape or np.array_equal(upstream, g, equal_nan=True)
        aliases = g.shape and any(isinstance(d, np.ndarray) and np.shares_memory(d, upstream) for d in grads)
        dxs = []
        for slot, i in enumerate(self.float_inputs):
            dx = grads[slot]
            if not isinstance(dx, np.ndarray) or dx.shape != self.inputs[i].shape:
                raise ValueError(f"gradcheck: gradient of input {i} has shape {np.shape(dx)}, expected "
                                 f"{self.inputs[i].shape}")
            dxs.append(np.array(dx, dtype=np.float64))
        return dxs, [np.array(p.grad, dtype=np.float64) for _, p in self.params], intact, aliases

    def _analytic(self):
        """Run backward twice: same input gradients (reentrancy), doubled .grad (accumulation), and the
        upstream gradient left as it was handed over."""
        self.module.zero_grad()
        dx1, pg1, intact1, aliases = self._backward()
        dx2, pg2, intact2, _ = self._backward()          # no zero_grad: .grad must now hold twice pg1
        self.input_grads, self.param_grads = dx1, pg1
        self.reentrant = all(close(a, b) for a, b in zip(dx1, dx2))
        self.accumulates = all(close(2 * a, b) for a, b in zip(pg1, pg2))
        self.upstream_intact = intact1 and intact2
        if not self.reentrant:
            self.notes.append("backward twice on the same input gave different input gradients: state leaks "
                              "between calls")
        if not self.accumulates:
            bad = [name for (name, _), a, b in zip(self.params, pg1, pg2) if not close(2 * a, b)]
            self.notes.append("a second backward did not add to .grad (assigned instead of +=?): "
                              + ", ".join(bad))
        if not self.upstream_intact:
            self.notes.append("backward modified the upstream gradient it was given, in place"
                              + (" (it returned a view of it and wrote into that)" if aliases else "")
                              + ": other consumers of the same gradient would see the corruption")
        self.module.zero_grad()

    def clear_caches(self):
        for m in self.module.modules():
            m.clear_cache()


def close(a, b):
    """Equal up to rounding, with NaN and inf required at the same places (so NaN is not 'state leaks')."""
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb) or not np.array_equal(a[~fa], b[~fb], equal_nan=True):
        return False
    a, b = a[fa], b[fb]
    return bool(np.allclose(a, b, rtol=1e-10, atol=1e-12 * (1.0 + np.abs(a).max(initial=0.0))))


def nonfinite(a):
    """None if every entry is finite, else ("NaN" or "inf", index of the first, NaN count, inf count)."""
    a = np.asarray(a)
    finite = np.isfinite(a)
    if finite.all():
        return None
    nans, infs = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    first = np.unravel_index(int(np.flatnonzero(~finite.ravel())[0]), a.shape)
    return ("NaN" if np.isnan(a[first]) else "inf"), tuple(int(i) for i in first), nans, infs


def scales(array):
    """Each coordinate's magnitude for its step: |x_i|, or the tensor's mean magnitude when larger (1 for an
    all-zero tensor). SciPy's max(1, |x_i|) would step far past the values of a tensor around 1e-6."""
    magnitude = np.abs(array)
    typical = float(magnitude.mean()) if magnitude.size else 1.0
    return np.maximum(magnitude, typical if typical > 0 and math.isfinite(typical) else 1.0)


NOISE_TARGET = 1e-6         # steps grow until the noise floor is this small relative to the gradient's rms
MAX_RELATIVE_STEP = 1e-4


def probe_steps(array, eps, noise=0.0, analytic=None):
    """Per-coordinate steps: eps * scale, grown (up to 1e-4 * scale) until the rounding-noise floor
    noise / h is at most 1e-6 of the gradient's rms. Without that, a tensor much smaller than the output
    (an input around 1e-6 feeding outputs around 1) would be probed with steps whose effect on L drowns in
    L's own rounding."""
    scale = scales(array)
    h = eps * scale
    if analytic is not None and noise > 0:
        a = analytic[np.isfinite(analytic)]
        rms = float(np.sqrt(np.mean(a * a))) if a.size else 0.0
        if rms > 0:
            h = np.minimum(np.maximum(h, noise / (NOISE_TARGET * rms)), max(MAX_RELATIVE_STEP, eps) * scale)
    return h
