"""Gradient verification for any Module, from one layer up to a whole DenseNet.

``gradcheck(module, x)`` compares the module's hand-written backward pass with central finite differences:

* on a float64 copy of the module and input, of the scalar L = sum(g * module(x)) with a seeded random,
  non-uniform upstream gradient g (a uniform g, such as the gradient of ``sum()``, makes BatchNorm's input
  gradient vanish and hides its bugs);
* for the input(s) *and* every parameter, each reported on its own row with the worst entry;
* with the module's randomness (Dropout masks) and buffers (BatchNorm running statistics) reset before every
  forward, so every probe evaluates the same function, and the module you passed in is never touched;
* with steps relative to each coordinate's magnitude, h_i = eps * max(|x_i|, mean |x|) (as SciPy's
  finite-difference routines choose them, with the tensor's mean magnitude in place of SciPy's 1), divided by
  the step actually taken (x_i + h_i rounds), and a rounding-noise floor
  that accounts for the rounding of every output and for cancellation inside the module;
* in three modes: ``"full"`` (every coordinate), ``"sampled"`` (``samples`` seeded coordinates per tensor plus
  ``sampled_directions`` random directions covering all the others) and ``"directional"`` (the derivative
  along ``directions`` seeded random directions per tensor: two forwards per direction, one backward in all).
  A failing direction falls back to per-coordinate probes to locate the wrong entries;
* non-finite values never pass: a NaN or inf in an analytic gradient, a numeric derivative or the output fails
  its row, with its own diagnosis ("NaN in analytic d(weight) at (2, 0, 1, 1)");
* telling kinks from bugs: a failing probe is first re-judged against a Richardson extrapolation (smooth
  functions with curvature); if the second differences at h and h/2 do not scale like a smooth function's
  (a kink), the analytic value is accepted when it lies in the hull of the derivatives sampled at nearby
  differentiable points: the one-sided slopes, and the slopes at two tie-breaking perturbations of the other
  coordinates (earlier coordinates raised and later ones lowered, and the mirror image), so ReLU's 0 at x = 0
  and PyTorch's first-maximum convention at tied, overlapping max-pool windows pass, while a value outside
  the hull (ReLU's 2*dy at 0) still fails;
* checking the protocol itself: backward twice on the same input must give the same input gradient
  (reentrancy), the second backward must *add* to ``.grad`` (accumulation), and backward must leave the
  upstream gradient it was handed unchanged (in a DenseNet the same gradient array feeds several consumers);
* with ``float32=True``, also running the module in float32 and comparing its analytic gradients with float64
  ones at the same (float32-rounded) point, at tolerances derived from float32's precision and the size of
  the computation, reported in rows of their own.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from .nn.module import Module

MODES = ("full", "sampled", "directional")
EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)
NOISE_FACTOR = 4.0          # rounding error of one evaluation of L: NOISE_FACTOR * eps64 * S (see _Probe.size)
FLOAT32_FACTOR = 8.0        # float32 rows: rtol32 = FLOAT32_FACTOR * eps32 * sqrt(computation size)


class GradcheckError(AssertionError):
    """Raised by ``gradcheck(..., raise_exception=True)`` on failure; ``.result`` holds the full report."""

    def __init__(self, result):
        super().__init__("\n" + result.table())
        self.result = result


@dataclass
class TensorReport:
    """One row of the report: how one tensor's gradient compared with finite differences (or, on a float32 row,
    how the float32 analytic gradient compared with the float64 one)."""
    name: str
    shape: tuple
    probes: int                     # coordinates or directions probed
    max_abs_err: float
    max_rel_err: float
    worst: object                   # index tuple, or "dir k" in directional mode
    analytic: float
    numeric: float
    rtol: float
    atol: float                     # the largest effective atol' = atol + noise floor used on the row
    status: str                     # "pass", "FAIL" or "kink" (mismatch only at non-differentiable points)
    kinks: int = 0                  # probes explained by a kink
    note: str = ""
    detects: float = math.nan       # smallest relative error |a - n| / |n| some probe of the row would catch
    worst_ratio: float = 0.0        # max over probes of |a - n| / (atol' + rtol |n|): the row passes when <= 1

    @property
    def passed(self):
        return self.status != "FAIL"


@dataclass
class GradcheckResult:
    """The outcome of :func:`gradcheck`. ``passed`` is True when no row failed and the protocol checks held."""
    module: str
    mode: str
    eps: float
    seed: int
    rows: list = field(default_factory=list)
    float32_rows: list = field(default_factory=list)
    reentrant: bool = True
    accumulates: bool = True
    upstream_intact: bool = True
    notes: list = field(default_factory=list)

    @property
    def passed(self):
        return (self.reentrant and self.accumulates and self.upstream_intact
                and all(r.passed for r in self.rows) and all(r.passed for r in self.float32_rows))

    @property
    def failures(self):
        return [r for r in self.rows + self.float32_rows if not r.passed]

    def table(self):
        lines = [f"gradcheck {self.module}: mode={self.mode}, float64, eps={self.eps:g} (relative step), "
                 f"seed={self.seed}"]
        lines += _format_rows(self.rows, ("analytic", "numeric"))
        if self.float32_rows:
            lines.append("float32 run: analytic float32 gradients vs the float64 ones at the same float32-rounded "
                         "point")
            lines += _format_rows(self.float32_rows, ("float32", "float64"))
        lines.append(f"reentrant (backward twice, same gradients): {'yes' if self.reentrant else 'NO'}; "
                     f"accumulates into .grad (+=): {'yes' if self.accumulates else 'NO'}; "
                     f"upstream gradient left unchanged: {'yes' if self.upstream_intact else 'NO'}")
        lines += self.notes
        lines += LEGEND
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)

    __str__ = table


LEGEND = (
    "legend: a = analytic (backward), n = numeric (central difference of L = sum(g * y), relative step",
    "  h = eps*max(|x|, mean |x|), grown if L's rounding would drown it). A probe passes when",
    "  |a - n| <= atol' + rtol*|n|, with atol' = atol + the rounding-noise floor of the",
    "  difference; the atol column is the row's largest atol', err/tol its worst |a - n| / (atol' + rtol*|n|)",
    "  (pass <=> <= 1), detects the smallest relative error a probe of the row would have caught. NaN or inf",
    "  anywhere fails. kink: L is not differentiable at the probe, and a lies in the hull of the derivatives at",
    "  nearby differentiable points.",
)


def _format_rows(rows, value_heads):
    head = ("tensor", "shape", "probes", "max abs err", "max rel err", "worst at") + value_heads + (
        "rtol", "atol", "err/tol", "detects", "status")
    body = []
    for r in rows:
        status = r.status if r.status != "kink" else "non-differentiable here"
        if r.kinks and r.status == "pass":
            status = f"pass ({r.kinks} kink probe{'s' if r.kinks > 1 else ''} skipped)"
        body.append((r.name, str(tuple(r.shape)), str(r.probes), f"{r.max_abs_err:.2e}", f"{r.max_rel_err:.2e}",
                     _fmt_index(r.worst), f"{r.analytic:.6g}", f"{r.numeric:.6g}", f"{r.rtol:.1e}",
                     f"{r.atol:.1e}", f"{r.worst_ratio:.2g}", f"{r.detects:.1e}",
                     status + (f" {r.note}" if r.note else "")))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    return lines


def _fmt_index(index):
    if not isinstance(index, tuple):
        return str(index)                   # "dir k" or "-"
    if len(index) == 1:
        return f"({int(index[0])},)"
    return "(" + ", ".join(str(int(i)) for i in index) + ")"


def gradcheck(module, x, *, mode="full", seed=0, eps=1e-6, rtol=1e-6, atol=1e-8, samples=16, directions=3,
              sampled_directions=1, locate_samples=64, exhaustive_limit=4096, clear_limit=20000, float32=False,
              raise_exception=False, check_inputs=True, check_params=True, executor=None):
    """Check ``module.backward`` against central finite differences in float64.

    Parameters
    ----------
    module : Module
        Any module following the layer protocol (``forward(*x)``, ``backward(dout)``, parameters with
        ``.data``/``.grad``); it is deep-copied and converted to float64, so the original (and its running
        statistics, random generators and ``.grad``) is left untouched.
    x : ndarray or tuple of ndarrays
        The input(s) of ``module(*x)``, any shapes. Integer inputs (class labels) are passed through but not
        checked.
    mode : {"full", "sampled", "directional"}
        Every coordinate; ``samples`` seeded random coordinates per tensor plus ``sampled_directions`` random
        directions; or ``directions`` seeded random directions per tensor, falling back to
        ``locate_samples`` coordinates to locate a failure. A direction that fails is a failure (it is
        located coordinate-wise for the report). A direction that crosses a non-differentiable point and
        passes within the hull of nearby derivatives is backed up by probing every coordinate of the tensor,
        when the tensor has at most ``exhaustive_limit`` entries and the module (its inputs and parameters) at
        most ``clear_limit`` values (so a whole DenseNet is not probed coordinate by coordinate).
    seed : int
        Seeds the upstream gradient, the sampled coordinates and the directions.
    eps : float
        Relative finite-difference step: coordinate i moves by h_i = eps * max(|x_i|, mean |x|) (1 in place
        of the mean for an all-zero tensor).
    rtol, atol : float
        A probe passes when |analytic - numeric| <= atol' + rtol * |numeric|, where atol' is ``atol`` plus
        the rounding-noise floor of the finite difference (shown in the report's atol column).
    samples, directions, sampled_directions, locate_samples : int
        Probe counts (``sampled_directions`` may be 0).
    exhaustive_limit, clear_limit : int
        See ``mode``.
    float32 : bool
        Also run a float32 copy of the module on the float32-rounded input and compare its analytic gradients
        with the float64 ones at that point (reported in separate rows).
    raise_exception : bool
        Raise :class:`GradcheckError` (with the report) instead of returning a failed result.
    check_inputs, check_params : bool
        Which gradients to check.
    executor : concurrent.futures.Executor, optional
        Evaluate the perturbed losses on this executor's workers (a process pool, loky, Dask's
        ``Client.get_executor()``; see :mod:`numpy_densenet.gradcheck_parallel`), in coarse tasks, each worker on
        one thread. The result is bit-identical to a serial run with ``numpy_densenet.set_num_threads(1)``.

    Returns
    -------
    GradcheckResult
        ``.passed``, and ``print(result)`` shows one row per tensor: max abs and rel error, the worst index
        with its analytic and numeric values, the effective tolerances, the smallest relative error the row
        could detect, and the status, then the protocol checks and a legend.
    """
    if not isinstance(module, Module):
        raise TypeError(f"gradcheck: module must be a numpy_densenet Module, got {type(module).__name__}")
    if mode not in MODES:
        raise ValueError(f"gradcheck: mode must be one of {MODES}, got {mode!r}")
    if not eps > 0:
        raise ValueError(f"gradcheck: eps must be positive, got {eps!r}")
    for name, v in (("samples", samples), ("directions", directions), ("locate_samples", locate_samples)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise ValueError(f"gradcheck: {name} must be a positive int, got {v!r}")
    for name, v in (("sampled_directions", sampled_directions), ("exhaustive_limit", exhaustive_limit),
                    ("clear_limit", clear_limit)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"gradcheck: {name} must be a non-negative int, got {v!r}")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if not v >= 0:
            raise ValueError(f"gradcheck: {name} must be non-negative, got {v!r}")

    probe = _Probe(module, x, seed)
    if executor is not None:
        from .gradcheck_parallel import ParallelLosses
        probe.parallel = ParallelLosses(executor, probe)
    result = GradcheckResult(type(module).__name__, mode, eps, seed)
    module_values = sum(a.size for a in probe.inputs) + sum(p.size for _, p in probe.params)
    if module_values > clear_limit:
        exhaustive_limit = 0            # too costly to probe a tensor coordinate by coordinate
    rng = np.random.default_rng([seed, 1])

    targets = []
    if check_inputs:
        targets += [(name, arr, grad) for name, arr, grad in probe.input_targets()]
    if check_params:
        targets += [(name, p.data, grad) for (name, p), grad in zip(probe.params, probe.param_grads)]
    coordinates = {}
    if mode != "directional":                       # every coordinate is known before any is judged
        for name, array, analytic in targets:
            n = array.size if mode == "full" else min(samples, array.size)
            flat = np.arange(array.size) if mode == "full" else rng.choice(array.size, n, replace=False)
            coordinates[name] = np.sort(flat)
        if probe.parallel is not None:              # send all the first probes now, in coarse tasks across tensors
            probe.parallel.prefetch([request for name, array, analytic in targets
                                     if _nonfinite(analytic) is None
                                     for request in _coordinate_requests(probe, name, array, analytic, eps,
                                                                         coordinates[name])])
    for name, array, analytic in targets:
        bad = _nonfinite(analytic)
        if bad is not None:
            row = _nonfinite_row(probe, name, array, analytic, bad, eps, rtol, atol)
        elif mode == "directional":
            row = _directional_row(probe, name, array, analytic, eps, rtol, atol, directions, locate_samples,
                                   exhaustive_limit, rng)
        else:
            n = coordinates[name].size
            row = _check_coordinates(probe, name, array, analytic, eps, rtol, atol, coordinates[name])
            if mode == "sampled" and sampled_directions and n < array.size:
                other = _directional_row(probe, name, array, analytic, eps, rtol, atol, sampled_directions,
                                         locate_samples, exhaustive_limit, rng, clear_kinks=False)
                row = _merge(row, other)
        result.rows.append(row)

    result.reentrant, result.accumulates = probe.reentrant, probe.accumulates
    result.upstream_intact = probe.upstream_intact
    result.notes += probe.notes
    if float32:
        result.float32_rows = _float32_rows(module, probe, check_inputs, check_params)
    if raise_exception and not result.passed:
        raise GradcheckError(result)
    return result


# ----------------------------------------------------------------------------------------------------------
# The probe: a float64 copy of the module, evaluated with its state reset
# ----------------------------------------------------------------------------------------------------------
class _Float32Draws:
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


class _Probe:
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
        self.parallel = None                        # gradcheck_parallel.ParallelLosses when given an executor
        # Everything forward may change is saved once and restored before each evaluation.
        self.generators = [(m, m.generator) for m in self.module.modules()
                           if isinstance(getattr(m, "generator", None), np.random.Generator)]
        self.generator_states = [copy.deepcopy(g.bit_generator.state) for _, g in self.generators]
        self.buffers = [(m, name, np.array(getattr(m, name), copy=True))
                        for m in self.module.modules() for name in m._buffers]

        out = self._forward()
        self.g = np.random.default_rng([seed, 0]).standard_normal(np.shape(out))  # non-uniform upstream grad
        bad = _nonfinite(out)
        if bad is not None:
            self.notes.append(f"{bad[0]} in the forward output at {_fmt_index(bad[1])}: every numeric "
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

    def _reset(self):
        for (_, g), state in zip(self.generators, self.generator_states):
            g.bit_generator.state = copy.deepcopy(state)
        for m, name, value in self.buffers:
            object.__setattr__(m, name, value.copy())

    def _forward(self, inputs=None):
        self._reset()
        # fresh copies: an in-place module (ReLU(inplace=True)) must not overwrite the probe point
        inputs = self.inputs if inputs is None else inputs
        out = self.module(*[a.copy() if a.dtype.kind == "f" else a for a in inputs])
        return np.asarray(out, dtype=np.float64)

    def loss(self):
        return float(np.dot(self.g.ravel(), self._forward().ravel()))

    def _backward(self, g=None, inputs=None):
        """One forward and backward; returns (input grads, param grads, upstream intact, returned view)."""
        self._forward(inputs)
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
        self.reentrant = all(_close(a, b) for a, b in zip(dx1, dx2))
        self.accumulates = all(_close(2 * a, b) for a, b in zip(pg1, pg2))
        self.upstream_intact = intact1 and intact2
        if not self.reentrant:
            self.notes.append("backward twice on the same input gave different input gradients: state leaks "
                              "between calls")
        if not self.accumulates:
            bad = [name for (name, _), a, b in zip(self.params, pg1, pg2) if not _close(2 * a, b)]
            self.notes.append("a second backward did not add to .grad (assigned instead of +=?): "
                              + ", ".join(bad))
        if not self.upstream_intact:
            self.notes.append("backward modified the upstream gradient it was given, in place"
                              + (" (it returned a view of it and wrote into that)" if aliases else "")
                              + ": other consumers of the same gradient would see the corruption")
        self.module.zero_grad()

    def input_targets(self):
        many = len(self.float_inputs) > 1
        for slot, i in enumerate(self.float_inputs):
            yield (f"input[{i}]" if many else "input"), self.inputs[i], self.input_grads[slot]


def _close(a, b):
    """Equal up to rounding, with NaN and inf required at the same places (so NaN is not 'state leaks')."""
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb) or not np.array_equal(a[~fa], b[~fb], equal_nan=True):
        return False
    a, b = a[fa], b[fb]
    return bool(np.allclose(a, b, rtol=1e-10, atol=1e-12 * (1.0 + np.abs(a).max(initial=0.0))))


def _nonfinite(a):
    """None if every entry is finite, else ("NaN" or "inf", index of the first, NaN count, inf count)."""
    a = np.asarray(a)
    finite = np.isfinite(a)
    if finite.all():
        return None
    nans, infs = int(np.isnan(a).sum()), int(np.isinf(a).sum())
    first = np.unravel_index(int(np.flatnonzero(~finite.ravel())[0]), a.shape)
    return ("NaN" if np.isnan(a[first]) else "inf"), tuple(int(i) for i in first), nans, infs


def _scales(array):
    """Each coordinate's magnitude for its step: |x_i|, or the tensor's mean magnitude when larger (1 for an
    all-zero tensor). SciPy's max(1, |x_i|) would step far past the values of a tensor around 1e-6."""
    magnitude = np.abs(array)
    typical = float(magnitude.mean()) if magnitude.size else 1.0
    return np.maximum(magnitude, typical if typical > 0 and math.isfinite(typical) else 1.0)


NOISE_TARGET = 1e-6         # steps grow until the noise floor is this small relative to the gradient's rms
MAX_RELATIVE_STEP = 1e-4


def _steps(array, eps, noise=0.0, analytic=None):
    """Per-coordinate steps: eps * scale, grown (up to 1e-4 * scale) until the rounding-noise floor
    noise / h is at most 1e-6 of the gradient's rms. Without that, a tensor much smaller than the output
    (an input around 1e-6 feeding outputs around 1) would be probed with steps whose effect on L drowns in
    L's own rounding."""
    scale = _scales(array)
    h = eps * scale
    if analytic is not None and noise > 0:
        a = analytic[np.isfinite(analytic)]
        rms = float(np.sqrt(np.mean(a * a))) if a.size else 0.0
        if rms > 0:
            h = np.minimum(np.maximum(h, noise / (NOISE_TARGET * rms)), max(MAX_RELATIVE_STEP, eps) * scale)
    return h


# ----------------------------------------------------------------------------------------------------------
# Judging one probe
# ----------------------------------------------------------------------------------------------------------
class _Verdict:
    __slots__ = ("ok", "kink", "err", "tol", "num", "smooth_fail")

    def __init__(self, ok, kink, err, tol, num, smooth_fail=False):
        self.ok, self.kink, self.err, self.tol, self.num, self.smooth_fail = ok, kink, err, tol, num, smooth_fail


def _judge_probe(probe, line, ana, rtol, atol, hull_points=(), refinements=3):
    """Compare ``ana`` with the derivative of t -> L(line(t)) at t = 0.

    ``line(t)`` evaluates L at the probe point moved by t steps (t in {-1, -1/2, 1/2, 1}) and returns
    ``(L, actual offset in units of the nominal step h)``; ``line.h`` is the nominal step (for noise). Extra
    ``hull_points`` are callables returning (left, right) one-sided slopes at tie-breaking perturbations.

    A failing probe is re-judged, in order: against the Richardson extrapolation of the differences at h and
    h/2 (a smooth function with curvature); as a kink (second differences at h and h/2 in the ratio 2 of a
    kink rather than the 4 of a smooth function), where the analytic value must lie in the hull of the nearby
    slopes; and, when the truncation error |D(h) - D(h/2)| is what separates the values (the function
    varies on a scale shorter than the step, as BatchNorm does on 1e4 + 1e-6 N(0, 1)), with the step divided
    by 8, up to ``refinements`` times. A value outside the kink hull is also re-judged at the smaller steps
    before it fails: at a step comparable to the scale of a steep smooth function, its second differences can
    look like a kink's.
    """
    h, noise, l0 = line.h, probe.noise, probe.L0
    for level in range(refinements + 1):
        f = 0.125 ** level
        lp, op = line(f)
        lm, om = line(-f)
        num = (lp - lm) / ((op - om) * h)
        err = abs(ana - num)
        floor = noise / (f * h)
        tol = atol + floor + rtol * abs(num)
        if err <= tol:
            return _Verdict(True, False, err, tol, num)
        if not (math.isfinite(num) and math.isfinite(ana)):
            return _Verdict(False, False, err, tol, num, smooth_fail=True)
        lph, oph = line(f / 2)
        lmh, omh = line(-f / 2)
        num2 = (lph - lmh) / ((oph - omh) * h)
        richardson = (4.0 * num2 - num) / 3.0
        tol_r = atol + 3.0 * floor + rtol * abs(richardson)
        if abs(ana - richardson) <= tol_r:      # smooth with curvature: the truncation error explained it
            return _Verdict(True, False, abs(ana - richardson), tol_r, richardson)
        # Second differences at h and h/2: a smooth function's scale by 4 (h^2), a kink at the probe's by 2.
        sd1, sd2 = lp - 2.0 * l0 + lm, lph - 2.0 * l0 + lmh
        if abs(sd1 - 4.0 * sd2) > max(0.5 * abs(sd1), 2.0 * noise):
            slopes = [(l0 - lm) / (-om * h), (lp - l0) / (op * h), (l0 - lmh) / (-omh * h),
                      (lph - l0) / (oph * h)]
            hull_floor = 4.0 * floor

            def within():
                lo, hi = min(slopes), max(slopes)
                hull_tol = atol + hull_floor + rtol * max(abs(lo), abs(hi))
                return lo - hull_tol <= ana <= hi + hull_tol

            inside = within()
            if not inside:                               # the tie-breaking points, only when needed
                for point in hull_points:
                    more, point_floor = point()
                    slopes += more
                    hull_floor = max(hull_floor, point_floor)
                inside = within()
            if inside or level == refinements:
                return _Verdict(inside, True, err, tol, num)
            continue            # a kink stays a kink at a smaller step; a steep smooth function does not
        if not abs(num - num2) > 0.05 * err:
            break                                         # smooth, no truncation to speak of: a wrong gradient
    return _Verdict(False, False, err, tol, num, smooth_fail=True)


class _Row:
    """Accumulates probe verdicts into a TensorReport."""

    def __init__(self, name, shape, rtol):
        self.name, self.shape, self.rtol = name, shape, rtol
        self.count = self.fails = self.kinks = self.smooth_fails = self.kink_fails = 0
        self.errs, self.rels, self.atols, self.detects = [], [], [0.0], []
        self.worst = (-np.inf, "-", 0.0, 0.0)
        self.ratio = 0.0
        self.notes = []

    def add(self, where, ana, v, rtol):
        self.count += 1
        atol_eff = v.tol - rtol * abs(v.num) if math.isfinite(v.num) else v.tol
        self.atols.append(atol_eff)
        if math.isfinite(v.num) and abs(v.num) > 0:
            self.detects.append(v.tol / abs(v.num))
        if v.ok and v.kink:
            self.kinks += 1
            return
        if not v.ok:
            self.fails += 1
            self.smooth_fails += v.smooth_fail
            self.kink_fails += v.kink
            if not (math.isfinite(v.num) and math.isfinite(ana)) and not self.notes:
                kind = "NaN" if math.isnan(v.num) or math.isnan(ana) else "inf"
                side = "numeric derivative" if not math.isfinite(v.num) else "analytic value"
                self.notes.append(f"({kind} {side} at {_fmt_index(where)})")
        ratio = v.err / v.tol if v.tol > 0 else (0.0 if v.err == 0 else math.inf)
        self.ratio = max(self.ratio, ratio if not math.isnan(ratio) else math.inf)
        excess = v.err - v.tol
        if not excess <= self.worst[0]:        # NaN ranks worst
            self.worst = (excess if not math.isnan(excess) else math.inf, where, ana, v.num)
        self.errs.append(v.err)
        big = max(abs(ana), abs(v.num))
        self.rels.append(v.err / big if big > atol_eff else 0.0)

    def report(self, probes=None):
        status = "FAIL" if self.fails else ("kink" if self.kinks and not self.errs else "pass")
        _, where, ana, num = self.worst
        return TensorReport(self.name, self.shape, self.count if probes is None else probes,
                            _nanmax(self.errs), _nanmax(self.rels), where, ana, num, self.rtol, max(self.atols),
                            status, self.kinks, " ".join(self.notes), min(self.detects, default=math.nan),
                            self.ratio)


def _nanmax(values):
    if not values:
        return 0.0
    return math.nan if any(math.isnan(v) for v in values) else max(values)


# ----------------------------------------------------------------------------------------------------------
# Coordinates and directions
# ----------------------------------------------------------------------------------------------------------
def _coordinate_line(probe, array, flat, step, first=None):
    """``line(t)``: L with array[idx] = x + t * step, and the offset actually taken in steps. ``first``: the
    values of L at t = +1 and -1 when an executor computed them (the same arithmetic, x[i] + delta)."""
    idx = np.unravel_index(int(flat), array.shape)
    original = float(array[idx])

    def line(t):
        if first is not None and t in (1.0, -1.0):
            return first[0 if t > 0 else 1], ((original + t * step) - original) / step
        array[idx] = original + t * step
        offset = (array[idx] - original) / step
        value = probe.loss()
        array[idx] = original
        return value, offset

    line.h = step
    return idx, line


def _coordinate_requests(probe, name, array, analytic, eps, flat_indices):
    """The executor requests (name, index, +-step) of the first two evaluations of each coordinate probe, in
    the order :func:`_check_coordinates` needs them."""
    steps = _steps(array, eps, probe.noise, analytic).ravel()
    return [(name, np.unravel_index(int(flat), array.shape), t * float(steps[flat]))
            for flat in flat_indices for t in (1.0, -1.0)]


def _tie_break_points(probe, array, flat, step, steps):
    """Two hull points for coordinate ``flat``: the other coordinates of the same tensor moved by one step of
    their own, earlier ones up and later ones down (so that ties break towards the first element, as
    PyTorch's max pooling does, and values at a kink fall to one side) and the mirror image; at each, the
    one-sided slopes along the coordinate with half a step."""
    idx = np.unravel_index(int(flat), array.shape)
    original = array.copy()
    order = np.arange(array.size).reshape(array.shape)
    push = np.where(order < flat, 1.0, -1.0) * steps.reshape(array.shape)
    push[idx] = 0.0

    def point(sign):
        def slopes():
            np.add(original, sign * push, out=array)
            base = float(array[idx])
            values = []
            for t in (-0.5, 0.0, 0.5):
                array[idx] = base + t * step
                values.append((probe.loss(), (array[idx] - base)))
            array[...] = original
            (lm, om), (l0, _), (lp, op) = values
            return [(l0 - lm) / -om, (lp - l0) / op], 4.0 * probe.noise / step
        return slopes

    return point(1.0), point(-1.0)


def _check_coordinates(probe, name, array, analytic, eps, rtol, atol, flat_indices):
    """Probe single coordinates: perturb array[idx] by +-h (relative step); compare with analytic[idx]."""
    row = _Row(name, array.shape, rtol)
    steps = _steps(array, eps, probe.noise, analytic).ravel()
    firsts = None
    if probe.parallel is not None:                  # L(+h), L(-h) of every probe, on the executor's workers
        values = probe.parallel.losses(_coordinate_requests(probe, name, array, analytic, eps, flat_indices))
        firsts = [values[2 * k:2 * k + 2] for k in range(len(flat_indices))]
    for k, flat in enumerate(flat_indices):
        idx, line = _coordinate_line(probe, array, flat, float(steps[flat]),
                                     firsts[k] if firsts is not None else None)
        ana = float(analytic[idx])
        v = _judge_probe(probe, line, ana, rtol, atol,
                         hull_points=_LazyPoints(probe, array, flat, float(steps[flat]), steps))
        row.add(idx, ana, v, rtol)
    return row.report()


class _LazyPoints:
    """The tie-breaking hull points, built only when a probe reaches the hull test."""

    def __init__(self, *args):
        self.args = args

    def __iter__(self):
        return iter(_tie_break_points(*self.args))


def _direction_line(probe, array, original, d, eps):
    """``line(t)``: L at original + t * eps * d (``line.first``: L at t = +1 and -1 from an executor)."""
    def line(t):
        first = line.first
        if first is not None and t in (1.0, -1.0):
            return first[0 if t > 0 else 1], t
        np.add(original, (t * eps) * d, out=array)
        value = probe.loss()
        array[...] = original
        return value, t              # rounding of the move is folded into the analytic value

    line.h, line.first = eps, None
    return line


def _directional_probes(probe, array, analytic, eps, count, rng):
    """Probe random directions d = s * u, u ~ N(0, 1/n), s_i = h_i / eps (the coordinate's relative step
    scale): the move has the length of one coordinate step, spread over the tensor (longer moves cross more
    kinks inside a model). Compares (L(x + eps d) - L(x - eps d)) / (2 eps) with <analytic, actual move> /
    (2 eps)."""
    original = array.copy()
    scale = _steps(original, eps, probe.noise, analytic) / eps
    for k in range(count):
        d = rng.standard_normal(array.shape) * (scale / math.sqrt(array.size))   # |u| ~ 1 over the tensor

        line = _direction_line(probe, array, original, d, eps)
        # the analytic directional derivative along the move actually taken at t = +-1
        np.add(original, eps * d, out=array)
        up = array - original
        np.subtract(original, eps * d, out=array)
        down = original - array
        array[...] = original
        ana = float(np.vdot(analytic, up + down)) / (2.0 * eps)
        yield f"dir {k}", line, ana, d


def _direction_hull_points(probe, array, d, steps, eps):
    """Hull points for a direction d: the slopes along d at four tie-breaking perturbations of the whole
    tensor (earlier coordinates raised and later ones lowered, by up to a step; the mirror image; everything
    a step down; everything a step up), measured with moves small enough not to undo the tie-breaking."""
    original = array.copy()
    n = array.size
    order = (np.arange(n, dtype=np.float64).reshape(array.shape) + 0.5) / n
    rank = steps * (1.0 - 2.0 * order)
    u = d * eps / steps
    tau = 1.0 / (4.0 * n * max(float(np.abs(u).max()), 1e-300))
    move = tau * eps * d

    def point(push):
        def slopes():
            values = []
            for sign in (-1.0, 0.0, 1.0):
                np.add(original, push, out=array)
                np.add(array, sign * move, out=array)
                values.append(probe.loss())
            array[...] = original
            lm, l0, lp = values
            return [(l0 - lm) / (tau * eps), (lp - l0) / (tau * eps)], 2.0 * probe.noise / (tau * eps)
        return slopes

    return [point(rank), point(-rank), point(-steps), point(steps)]


class _LazyDirectionPoints:
    def __init__(self, *args):
        self.args = args

    def __iter__(self):
        return iter(_direction_hull_points(*self.args))


def _check_directions(probe, name, array, analytic, eps, rtol, atol, directions, rng):
    row = _Row(name, array.shape, rtol)
    steps = _steps(array, eps, probe.noise, analytic)
    probes = list(_directional_probes(probe, array, analytic, eps, directions, rng))
    parallel = probe.parallel
    if parallel is not None and not parallel._pending:    # (sampled mode's own prefetch is left alone)
        values = parallel.losses([(name, d, t * eps) for _, _, _, d in probes for t in (1.0, -1.0)])
        for k, (_, line, _, _) in enumerate(probes):
            line.first = values[2 * k:2 * k + 2]
    for where, line, ana, d in probes:
        v = _judge_probe(probe, line, ana, rtol, atol, hull_points=_LazyDirectionPoints(probe, array, d, steps, eps))
        row.add(where, ana, v, rtol)
    report = row.report()
    return report, row


def _directional_row(probe, name, array, analytic, eps, rtol, atol, directions, locate_samples,
                     exhaustive_limit, rng, clear_kinks=True):
    report, row = _check_directions(probe, name, array, analytic, eps, rtol, atol, directions, rng)
    if report.status != "FAIL":
        if not (clear_kinks and report.kinks and array.size <= exhaustive_limit):
            return report
        # A direction across kinks is accepted anywhere in a hull that widens with every kink it crosses, so
        # a single wrong entry can hide in it: a small tensor is then checked coordinate by coordinate.
        located = _check_coordinates(probe, name, array, analytic, eps, rtol, atol, np.arange(array.size))
        if located.status != "FAIL":
            report.note = f"(directions cross kinks; every coordinate checked: {located.kinks} kinks)"
            return report
        located.note = (f"(directions cross kinks and pass within the hull of nearby derivatives; located "
                        f"over all {located.probes} coordinates)")
        return located
    # Locate the wrong entries coordinate by coordinate (every coordinate when the failing directions crossed
    # non-differentiable points and the tensor is small enough). The direction's failure stands either way: it
    # was a smooth mismatch, or its value lies outside the hull of the derivatives at nearby points, which no
    # per-coordinate test can see (a gradient counted twice at a tie gives each tied entry a valid value).
    crossed_kinks = row.smooth_fails == 0
    exhaustive = crossed_kinks and array.size <= exhaustive_limit
    indices = np.arange(array.size) if exhaustive else _locate_indices(analytic, locate_samples, rng)
    located = _check_coordinates(probe, name, array, analytic, eps, rtol, atol, indices)
    located.note = (f"(direction {report.worst}: analytic {report.analytic:.6g} vs numeric "
                    f"{report.numeric:.6g}; located over {located.probes} coordinates)")
    located.detects = min(report.detects, located.detects) if not math.isnan(located.detects) else report.detects
    if located.status != "FAIL":
        located.status = "FAIL"
        if crossed_kinks:
            located.note += (" - no single coordinate is wrong, but along the direction the analytic value lies "
                             "outside the hull of the derivatives at nearby points (e.g. counted twice at a tie)")
        else:
            located.note += " - no single wrong coordinate found"
        located.worst, located.analytic, located.numeric = report.worst, report.analytic, report.numeric
        located.max_abs_err, located.max_rel_err = report.max_abs_err, report.max_rel_err
        located.worst_ratio = report.worst_ratio
    return located


def _merge(coords, dirs):
    """Sampled mode: the coordinate row plus its directions, as one row."""
    if dirs.status == "FAIL" and coords.status != "FAIL":
        dirs.probes += coords.probes
        return dirs
    coords.probes += dirs.probes if dirs.status != "FAIL" or "located over" not in dirs.note else 0
    coords.kinks += dirs.kinks if dirs.status != "FAIL" else 0
    if coords.status == "kink" and dirs.status == "pass" and dirs.max_abs_err:
        coords.status = "pass"
    for attr in ("detects",):
        if not math.isnan(getattr(dirs, attr)):
            setattr(coords, attr, min(getattr(coords, attr), getattr(dirs, attr))
                    if not math.isnan(getattr(coords, attr)) else getattr(dirs, attr))
    coords.atol = max(coords.atol, dirs.atol)
    return coords


def _nonfinite_row(probe, name, array, analytic, bad, eps, rtol, atol):
    """A tensor whose analytic gradient holds NaN or inf: fails, naming the first bad entry; the numeric
    derivative there is computed for the report."""
    kind, idx, nans, infs = bad
    flat = int(np.ravel_multi_index(idx, array.shape))
    _, line = _coordinate_line(probe, array, flat, float(_steps(array, eps).ravel()[flat]))  # analytic is bad
    (lp, op), (lm, om) = line(1.0), line(-1.0)
    num = (lp - lm) / ((op - om) * line.h)
    counts = ", ".join(f"{c} {k}" for c, k in ((nans, "NaN"), (infs, "inf")) if c)
    return TensorReport(name, array.shape, 1, math.inf if kind == "inf" else math.nan, math.nan, idx,
                        float(analytic[idx]), num, rtol, atol + probe.noise / line.h, "FAIL",
                        note=f"({kind} in analytic d({name}) at {_fmt_index(idx)}; {counts} of {array.size})",
                        worst_ratio=math.inf)


def _locate_indices(analytic, k, rng):
    """Coordinates to probe after a failed direction: the largest analytic entries plus random ones."""
    n = analytic.size
    if n <= k:
        return np.arange(n)
    largest = np.argsort(np.abs(analytic).ravel())[n - k // 2:]
    others = rng.choice(n, k - k // 2, replace=False)
    return np.unique(np.concatenate([largest, others]))


# ----------------------------------------------------------------------------------------------------------
# float32
# ----------------------------------------------------------------------------------------------------------
def _float32_rows(module, probe, check_inputs, check_params):
    """Run a float32 copy of the module and a float64 copy at the same float32-rounded point (parameters,
    inputs and upstream gradient rounded to float32, Dropout masks drawn in float32 for both); compare the
    analytic gradients entry by entry.

    Tolerance per tensor: |a32 - a64| <= atol32 + rtol32 * |a64|, rtol32 = 8 eps32 sqrt(K) with K the number
    of values the computation touches (inputs, output, parameters), atol32 = rtol32 * max(kappa * max|a64|,
    S / (entries * mean|value|)), kappa = S / sum|g y| the cancellation factor of the float64 noise estimate
    (large when the module subtracts large values, as BatchNorm on 1e4 + N(0, 1) does).
    """
    m32 = copy.deepcopy(module).float()
    ref = copy.deepcopy(m32).double()            # float32-rounded parameters, held in float64
    x32 = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in probe.inputs]
    x64 = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in x32]
    g32 = probe.g.astype(np.float32)
    rows = []
    grads = {}
    for label, m, xs, g in (("32", m32, x32, g32), ("64", ref, x64, g32.astype(np.float64))):
        for sub in m.modules():
            gen = getattr(sub, "generator", None)
            if isinstance(gen, np.random.Generator):
                if label == "64":
                    object.__setattr__(sub, "generator", _Float32Draws(gen))
        m.zero_grad()
        m(*[a.copy() if a.dtype.kind == "f" else a for a in xs])
        out = m.backward(g.copy() if g.shape else g[()])
        out = out if isinstance(out, (tuple, list)) else (out,)
        floats = [i for i, a in enumerate(xs) if a.dtype.kind == "f"]
        many = len(floats) > 1
        named = []
        if check_inputs:
            named += [((f"input[{i}]" if many else "input"), np.asarray(out[slot]))
                      for slot, i in enumerate(floats)]
        if check_params:
            named += [(name, p.grad) for name, p in m.named_parameters()]
        grads[label] = named
    out_size = probe.g.size
    k = out_size + sum(a.size for a in probe.inputs if a.dtype.kind == "f") + sum(p.size for _, p in probe.params)
    rtol32 = FLOAT32_FACTOR * EPS32 * math.sqrt(k)
    plain = float(np.nansum(np.abs(probe.g * probe._forward())))
    kappa = max(1.0, probe.size / plain) if plain > 0 else 1.0
    values = ([probe.inputs[i] for i in probe.float_inputs] if check_inputs else []) + (
        [p.data for _, p in probe.params] if check_params else [])
    for (name, a32), (_, a64), value in zip(grads["32"], grads["64"], values):
        a32d = np.asarray(a32, dtype=np.float64)
        a64 = np.asarray(a64, dtype=np.float64)
        row = _Row(name + " (float32)", a64.shape, rtol32)
        scale = float(np.abs(a64[np.isfinite(a64)]).max(initial=0.0))
        # Absolute scale: the tensor's own largest gradient (times the cancellation factor), or, when that
        # is ~0 (a conv bias before BatchNorm), what L's size spread evenly over the tensor's entries would
        # give: S / (entries * mean |value|), in the gradient's units.
        spread = probe.size / (a64.size * float(np.mean(_scales(value)))) if a64.size else 0.0
        atol32 = rtol32 * max(kappa * scale, spread) + 1e-30
        if np.asarray(a32).dtype != np.float32:
            row.notes.append(f"(dtype out {np.asarray(a32).dtype}, expected float32)")
            row.fails += 1
        err = np.abs(a32d - a64)
        tol = atol32 + rtol32 * np.abs(a64)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(tol > 0, err / tol, np.inf)
        ratio = np.where(np.isnan(ratio), np.inf, ratio)
        bad = ~(err <= tol)
        worst = np.unravel_index(int(np.argmax(ratio)), a64.shape) if a64.size else ()
        nonfinite = _nonfinite(a32d)
        if nonfinite is not None:
            row.notes.append(f"({nonfinite[0]} in float32 analytic d({name}) at {_fmt_index(nonfinite[1])})")
            worst = nonfinite[1]
        fails = int(bad.sum()) + row.fails
        big = np.maximum(np.abs(a32d), np.abs(a64))
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(big > atol32, err / big, 0.0)
        report = TensorReport(row.name, a64.shape, a64.size, _nanmax([float(err.max(initial=0.0))])
                              if not np.isnan(err).any() else math.nan,
                              float(np.nanmax(rel, initial=0.0)) if not np.isnan(err).any() else math.nan,
                              tuple(int(i) for i in worst), float(a32d[worst]) if a64.size else 0.0,
                              float(a64[worst]) if a64.size else 0.0, rtol32, atol32,
                              "FAIL" if fails else "pass", note=" ".join(row.notes),
                              detects=float(np.min(tol / np.where(np.abs(a64) > 0, np.abs(a64), np.inf),
                                                   initial=np.inf)),
                              worst_ratio=float(ratio.max(initial=0.0)))
        rows.append(report)
    return rows


# -- the cases `numpy-densenet gradcheck` checks ---------------------------------------------------------------
def layer_cases(rng):
    """(label, module, input) for every layer type at a few small default shapes, the plain tier's and a few of
    the fast tier's (``numpy-densenet gradcheck`` checks these)."""
    from . import fast, nn
    x = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    return [
        ("Conv2d 3x3 pad 1", nn.Conv2d(3, 4, 3, padding=1, generator=rng), x(2, 3, 5, 5)),
        ("fast Conv2d 3x3 pad 1, 6 -> 3 (the shift algorithm, flat shifts)",
         fast.Conv2d(6, 3, 3, padding=1, generator=rng), x(2, 6, 5, 4)),
        ("fast Conv2d 1x1 (one GEMM on the channel-major input)", fast.Conv2d(5, 3, 1, generator=rng),
         x(2, 5, 4, 3)),
        ("Conv2d 1x1 (pointwise GEMM)", nn.Conv2d(5, 3, 1, bias=False, generator=rng), x(2, 5, 4, 3)),
        ("Conv2d 7x7 stride 2 pad 3", nn.Conv2d(2, 3, 7, stride=2, padding=3, generator=rng), x(2, 2, 9, 8)),
        ("Conv2d (2,3) stride (1,2) dilation 2", nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 2),
                                                           dilation=2, generator=rng), x(2, 2, 6, 7)),
        ("BatchNorm2d (train)", nn.BatchNorm2d(3), x(4, 3, 3, 3)),
        ("BatchNorm2d (eval)", _with_stats(nn.BatchNorm2d(3), rng).eval(), x(4, 3, 3, 3)),
        ("BatchNormReLU2d (train; a dense layer's BN -> ReLU)", fast.BatchNormReLU2d(3), x(4, 3, 3, 3)),
        ("ReLU", nn.ReLU(), x(2, 3, 4, 4)),
        ("MaxPool2d 3 stride 2 pad 1", nn.MaxPool2d(3, stride=2, padding=1), x(2, 3, 7, 6)),
        ("AvgPool2d 2 stride 2", nn.AvgPool2d(2), x(2, 3, 6, 5)),
        ("AvgPool2d 3 pad 1 count_include_pad=False", nn.AvgPool2d(3, 2, 1, count_include_pad=False),
         x(2, 2, 6, 7)),
        ("AdaptiveAvgPool2d(1)", nn.AdaptiveAvgPool2d(1), x(2, 3, 5, 4)),
        ("AdaptiveAvgPool2d((2, 3))", nn.AdaptiveAvgPool2d((2, 3)), x(2, 2, 5, 7)),
        ("Concat (3 inputs)", nn.Concat(), (x(2, 2, 3, 3), x(2, 1, 3, 3), x(2, 3, 3, 3))),
        ("Linear", nn.Linear(6, 4, generator=rng), x(3, 6)),
        ("Dropout(0.3), mask held fixed", nn.Dropout(0.3, seed=0), x(3, 7)),
        ("Flatten", nn.Flatten(), x(2, 3, 2, 2)),
        ("CrossEntropyLoss (label smoothing 0.1)", nn.CrossEntropyLoss(label_smoothing=0.1),
         (x(5, 4), rng.integers(0, 4, 5))),
    ]


def _with_stats(bn, rng):
    bn.running_mean[...] = rng.standard_normal(bn.num_features)
    bn.running_var[...] = rng.uniform(0.5, 2.0, bn.num_features)
    return bn


def model_cases(rng):
    """(label, model, input) for tiny DenseNets: both tiers, both stems, plain and -BC, compression, dropout
    (``numpy-densenet gradcheck --model`` checks these)."""
    from .model import DenseNet
    return [
        ("DenseNet-BC, CIFAR stem, compression 0.5",
         DenseNet(4, (2, 2), 8, bn_size=2, num_classes=5, stem="cifar", seed=1), rng.standard_normal((3, 3, 8, 8))),
        ("DenseNet plain, CIFAR stem, no compression",
         DenseNet(3, (2, 2), 6, bn_size=None, num_classes=4, compression=1.0, stem="cifar", seed=2),
         rng.standard_normal((2, 3, 6, 6))),
        ("DenseNet-BC, ImageNet stem, 45x51-like odd input",
         DenseNet(4, (2, 1), 6, bn_size=2, num_classes=3, stem="imagenet", seed=3), rng.standard_normal((2, 3, 17, 19))),
        ("DenseNet-BC, every BN-ReLU output stored (memory_efficient=False)",
         DenseNet(4, (2, 2), 8, bn_size=2, num_classes=5, stem="cifar", seed=5, memory_efficient=False),
         rng.standard_normal((3, 3, 8, 8))),
        ("DenseNet-BC, the plain tier (Concat forward, split backward), ImageNet stem",
         DenseNet(4, (2, 1), 6, bn_size=2, num_classes=3, stem="imagenet", seed=6, fast=False),
         rng.standard_normal((2, 3, 13, 11))),
        ("DenseNet-BC with dropout 0.2 (mask held fixed), grey input",
         DenseNet(4, (2, 2), 6, bn_size=2, drop_rate=0.2, num_classes=3, stem="cifar", in_channels=1, seed=4),
         rng.standard_normal((3, 1, 6, 6))),
    ]
