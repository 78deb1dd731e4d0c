"""Gradient verification for any Module, from one layer up to a whole DenseNet.

``gradcheck(module, x)`` compares the module's hand-written backward pass with central finite differences:

* on a float64 copy of the module and input (a float32 module is never checked in float32);
* of the scalar L = sum(g * module(x)) with a seeded random, non-uniform upstream gradient g (a uniform g,
  such as the gradient of ``sum()``, makes BatchNorm's input gradient vanish and hides its bugs);
* for the input(s) *and* every parameter, each reported on its own row with the worst entry;
* with the module's randomness (Dropout masks) and buffers (BatchNorm running statistics) reset before every
  forward, so every probe evaluates the same function, and the module you passed in is never touched;
* in three modes: ``"full"`` (every coordinate), ``"sampled"`` (``samples`` seeded coordinates per tensor) and
  ``"directional"`` (v^T J u along ``directions`` seeded random directions u per tensor: two forwards per
  direction, one backward in all). A failing direction falls back to per-coordinate probes to locate the
  wrong entries;
* telling kinks from bugs: a failing probe whose five-point quadratic fit (at -eps, -eps/2, 0, eps/2, eps)
  does not fit, and whose analytic value lies between the one-sided slopes, is reported as
  "non-differentiable here" (ReLU at 0, tied maxima) rather than as a wrong gradient;
* checking the protocol itself: backward twice on the same input must give the same input gradient
  (reentrancy), and the second backward must *add* to ``.grad`` rather than overwrite it (accumulation).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

from .nn.module import Module

MODES = ("full", "sampled", "directional")


class GradcheckError(AssertionError):
    """Raised by ``gradcheck(..., raise_exception=True)`` on failure; ``.result`` holds the full report."""

    def __init__(self, result):
        super().__init__("\n" + result.table())
        self.result = result


@dataclass
class TensorReport:
    """One row of the report: how one tensor's gradient compared with finite differences."""
    name: str
    shape: tuple
    probes: int                     # coordinates or directions probed
    max_abs_err: float
    max_rel_err: float
    worst: object                   # index tuple, or "dir k" in directional mode
    analytic: float
    numeric: float
    rtol: float
    atol: float
    status: str                     # "pass", "FAIL" or "kink" (mismatch only at non-differentiable points)
    kinks: int = 0                  # probes explained by a kink
    note: str = ""

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
    reentrant: bool = True
    accumulates: bool = True
    notes: list = field(default_factory=list)

    @property
    def passed(self):
        return self.reentrant and self.accumulates and all(r.passed for r in self.rows)

    @property
    def failures(self):
        return [r for r in self.rows if not r.passed]

    def table(self):
        head = ("tensor", "shape", "probes", "max abs err", "max rel err", "worst at", "analytic", "numeric",
                "rtol", "atol", "status")
        body = []
        for r in self.rows:
            status = r.status if r.status != "kink" else "non-differentiable here"
            if r.kinks and r.status == "pass":
                status = f"pass ({r.kinks} kink probe{'s' if r.kinks > 1 else ''} skipped)"
            body.append((r.name, str(tuple(r.shape)), str(r.probes), f"{r.max_abs_err:.2e}",
                         f"{r.max_rel_err:.2e}", _fmt_index(r.worst), f"{r.analytic:.6g}", f"{r.numeric:.6g}",
                         f"{r.rtol:.0e}", f"{r.atol:.1e}", status + (f" {r.note}" if r.note else "")))
        widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
        lines = [f"gradcheck {self.module}: mode={self.mode}, float64, eps={self.eps:g}, seed={self.seed}",
                 "  ".join(h.ljust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
        lines.append(f"reentrant (backward twice, same gradients): {'yes' if self.reentrant else 'NO'}; "
                     f"accumulates into .grad (+=): {'yes' if self.accumulates else 'NO'}")
        lines += self.notes
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)

    __str__ = table


def _fmt_index(index):
    if not isinstance(index, tuple):
        return str(index)                   # "dir k" or "-"
    if len(index) == 1:
        return f"({int(index[0])},)"
    return "(" + ", ".join(str(int(i)) for i in index) + ")"


def gradcheck(module, x, *, mode="full", seed=0, eps=1e-6, rtol=1e-6, atol=1e-8, samples=16, directions=3,
              locate_samples=64, exhaustive_limit=4096, raise_exception=False, check_inputs=True,
              check_params=True, executor=None):
    """Check ``module.backward`` against central finite differences in float64.

    Parameters
    ----------
    module : Module
        Any module following the layer protocol; it is deep-copied and converted to float64, so the
        original (and its running statistics, random generators and ``.grad``) is left untouched.
    x : ndarray or tuple of ndarrays
        The input(s) of ``module(*x)``. Integer inputs (class labels) are passed through but not checked.
    mode : {"full", "sampled", "directional"}
        Every coordinate; ``samples`` seeded random coordinates per tensor; or ``directions`` seeded random
        unit directions per tensor (v^T J u), falling back to ``locate_samples`` coordinates to locate a
        failure. A direction that failed while crossing a non-differentiable point is cleared only by
        probing every coordinate, done for tensors of at most ``exhaustive_limit`` entries (larger ones fail
        with a note to use ``mode="full"``).
    seed : int
        Seeds the upstream gradient, the sampled coordinates and the directions.
    eps : float
        Finite-difference step.
    rtol, atol : float
        A probe passes when |analytic - numeric| <= atol' + rtol * |numeric|, where atol' is ``atol`` plus
        the rounding-noise floor of the finite difference (shown in the report's atol column).
    raise_exception : bool
        Raise :class:`GradcheckError` (with the report) instead of returning a failed result.
    check_inputs, check_params : bool
        Which gradients to check.
    executor : concurrent.futures.Executor, optional
        Evaluate the perturbed losses on this executor's workers (a process pool, loky, Dask's
        ``Client.get_executor()``; see :mod:`numpy_densenet.gradcheck_parallel`), in coarse tasks, each worker on
        one thread. The result is bit-identical to a serial run with ``nn.set_num_threads(1)``.

    Returns
    -------
    GradcheckResult
        ``.passed``, and ``print(result)`` shows one row per tensor: max abs and rel error, the worst index
        with its analytic and numeric values, the tolerances and the status.
    """
    if not isinstance(module, Module):
        raise TypeError(f"gradcheck: module must be a numpy_densenet Module, got {type(module).__name__}")
    if mode not in MODES:
        raise ValueError(f"gradcheck: mode must be one of {MODES}, got {mode!r}")
    if not eps > 0:
        raise ValueError(f"gradcheck: eps must be positive, got {eps!r}")
    for name, v in (("samples", samples), ("directions", directions), ("locate_samples", locate_samples)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"gradcheck: {name} must be a positive int, got {v!r}")

    probe = _Probe(module, x, seed)
    if executor is not None:
        from .gradcheck_parallel import ParallelLosses
        probe.parallel = ParallelLosses(executor, probe)
    result = GradcheckResult(type(module).__name__, mode, eps, seed)
    rng = np.random.default_rng([seed, 1])

    targets = []
    if check_inputs:
        targets += [(name, arr, grad) for name, arr, grad in probe.input_targets()]
    if check_params:
        targets += [(name, p.data, grad) for (name, p), grad in zip(probe.params, probe.param_grads)]
    if mode != "directional":                       # every coordinate is known before any is judged
        coordinates = []
        for name, array, _ in targets:
            n = array.size if mode == "full" else min(samples, array.size)
            flat = np.arange(array.size) if mode == "full" else rng.choice(array.size, n, replace=False)
            coordinates.append(np.sort(flat))
        if probe.parallel is not None:              # send all the probes now, in coarse tasks across tensors
            probe.parallel.prefetch([(name, np.unravel_index(int(i), array.shape), d)
                                     for (name, array, _), flat in zip(targets, coordinates)
                                     for i in flat for d in (eps, -eps)])
    for k, (name, array, analytic) in enumerate(targets):
        if mode == "directional":
            row = _check_directional(probe, name, array, analytic, eps, rtol, atol, directions, rng)
            if row.status == "FAIL":
                # Locate the wrong entries coordinate by coordinate. When every failing direction crossed a
                # non-differentiable point, only an exhaustive search can clear the tensor.
                exhaustive = row.kinks and array.size <= exhaustive_limit
                indices = np.arange(array.size) if exhaustive else _locate_indices(analytic, locate_samples, rng)
                located = _check_coordinates(probe, name, array, analytic, eps, rtol, atol, indices)
                located.note = (f"(direction {row.worst}: analytic {row.analytic:.6g} vs numeric "
                                f"{row.numeric:.6g}; located over {located.probes} coordinates)")
                if located.status != "FAIL":
                    located.status = "FAIL"
                    if exhaustive:      # every coordinate is right or a kink: the direction crossed kinks
                        located.status = "kink"
                        located.note += " - the direction crosses a non-differentiable point"
                    elif row.kinks:
                        located.note += (" - the direction crosses a non-differentiable point and the tensor is "
                                         "too large to clear exhaustively: check it with mode='full'")
                    else:
                        located.note += " - no single wrong coordinate found"
                row = located
        else:
            row = _check_coordinates(probe, name, array, analytic, eps, rtol, atol, coordinates[k])
        result.rows.append(row)

    result.reentrant, result.accumulates = probe.reentrant, probe.accumulates
    result.notes += probe.notes
    if raise_exception and not result.passed:
        raise GradcheckError(result)
    return result


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
        self.generators = [m.generator for m in self.module.modules()
                           if isinstance(getattr(m, "generator", None), np.random.Generator)]
        self.generator_states = [copy.deepcopy(g.bit_generator.state) for g in self.generators]
        self.buffers = [(m, name, np.array(getattr(m, name), copy=True))
                        for m in self.module.modules() for name in m._buffers]

        out = self._forward()
        self.g = np.random.default_rng([seed, 0]).standard_normal(np.shape(out))  # non-uniform upstream grad
        self.scale = float(np.abs(self.g * out).sum()) + 1.0                    # for the rounding-noise floor
        self.L0 = self.loss()
        self._analytic()

    def _reset(self):
        for g, state in zip(self.generators, self.generator_states):
            g.bit_generator.state = copy.deepcopy(state)
        for m, name, value in self.buffers:
            object.__setattr__(m, name, value.copy())

    def _forward(self):
        self._reset()
        # fresh copies: an in-place module (ReLU(inplace=True)) must not overwrite the probe point
        out = self.module(*[a.copy() if a.dtype.kind == "f" else a for a in self.inputs])
        return np.asarray(out, dtype=np.float64)

    def loss(self):
        return float(np.dot(self.g.ravel(), self._forward().ravel()))

    def _backward(self):
        self._forward()
        grads = self.module.backward(self.g.copy() if self.g.shape else self.g[()])
        grads = grads if isinstance(grads, (tuple, list)) else (grads,)
        if len(grads) < len(self.float_inputs):
            raise ValueError(f"gradcheck: {type(self.module).__name__}.backward returned {len(grads)} "
                             f"gradient(s) for {len(self.float_inputs)} float input(s)")
        dxs = []
        for slot, i in enumerate(self.float_inputs):
            dx = grads[slot]
            if not isinstance(dx, np.ndarray) or dx.shape != self.inputs[i].shape:
                raise ValueError(f"gradcheck: gradient of input {i} has shape {np.shape(dx)}, expected "
                                 f"{self.inputs[i].shape}")
            dxs.append(np.array(dx, dtype=np.float64))
        return dxs, [p.grad.copy() for _, p in self.params]

    def _analytic(self):
        """Run backward twice: same input gradients (reentrancy), doubled .grad (accumulation)."""
        self.module.zero_grad()
        dx1, pg1 = self._backward()
        dx2, pg2 = self._backward()                     # no zero_grad: .grad must now hold twice pg1
        self.input_grads, self.param_grads = dx1, pg1
        self.reentrant = all(_close(a, b) for a, b in zip(dx1, dx2))
        self.accumulates = all(_close(2 * a, b) for a, b in zip(pg1, pg2))
        if not self.reentrant:
            self.notes.append("backward twice on the same input gave different input gradients: state leaks "
                              "between calls")
        if not self.accumulates:
            bad = [name for (name, _), a, b in zip(self.params, pg1, pg2) if not _close(2 * a, b)]
            self.notes.append("a second backward did not add to .grad (assigned instead of +=?): "
                              + ", ".join(bad))
        self.module.zero_grad()

    def input_targets(self):
        many = len(self.float_inputs) > 1
        for slot, i in enumerate(self.float_inputs):
            yield (f"input[{i}]" if many else "input"), self.inputs[i], self.input_grads[slot]

    def noise_floor(self, eps):
        """Rounding error of a central difference of L, which sums |g * y| ~ scale."""
        return 4 * np.finfo(np.float64).eps * self.scale / eps


def _close(a, b):
    return np.allclose(a, b, rtol=1e-10, atol=1e-12 * (1.0 + np.abs(a).max(initial=0.0)))


def _locate_indices(analytic, k, rng):
    """Coordinates to probe after a failed direction: the largest analytic entries plus random ones."""
    n = analytic.size
    if n <= k:
        return np.arange(n)
    largest = np.argsort(np.abs(analytic).ravel())[n - k // 2:]
    others = rng.choice(n, k - k // 2, replace=False)
    return np.unique(np.concatenate([largest, others]))


def _kink(probe, perturb, eps, values, analytic, tol):
    """Is a mismatch at this probe explained by a non-differentiable point between -eps and +eps?

    ``values`` holds L at -eps, 0, +eps; two more evaluations at -eps/2 and +eps/2 give five points. A smooth
    function is fitted by a quadratic to rounding error; a kink is not. Returns ``(nonsmooth, one_sided)``:
    whether the fit fails, and whether the analytic value lies between the one-sided slopes (is a one-sided
    derivative), so that a wrong gradient at a kink is still caught.
    """
    lm, l0, lp = values
    lmh, lph = perturb(-eps / 2), perturb(eps / 2)
    t = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])
    y = np.array([lm, lmh, l0, lph, lp]) - l0
    coef = np.polyfit(t, y, 2)
    residual = np.abs(np.polyval(coef, t) - y).max()
    nonsmooth = residual > 1e3 * np.finfo(np.float64).eps * probe.scale
    left, right = (l0 - lm) / eps, (lp - l0) / eps
    one_sided = min(left, right) - tol <= analytic <= max(left, right) + tol
    return nonsmooth, one_sided


def _check_coordinates(probe, name, array, analytic, eps, rtol, atol, flat_indices):
    """Probe single coordinates: perturb array[idx] by +-eps; compare with analytic[idx]."""
    def probes():
        for flat in flat_indices:
            idx = np.unravel_index(int(flat), array.shape)
            original = array[idx]

            def perturb(delta, idx=idx, original=original):
                array[idx] = original + delta
                value = probe.loss()
                array[idx] = original
                return value

            perturb.request = (name, idx)           # what an executor's worker perturbs
            yield idx, perturb, float(analytic[idx])

    row, _, _ = _judge(probe, name, array.shape, len(flat_indices), probes(), eps, rtol, atol)
    return row


def _check_directional(probe, name, array, analytic, eps, rtol, atol, directions, rng):
    """Probe random unit directions u: perturb the array by +-eps*u; compare with <analytic, u> = v^T J u."""
    original = array.copy()

    def probes():
        for k in range(directions):
            u = rng.standard_normal(array.shape)
            u /= np.linalg.norm(u) or 1.0

            def perturb(delta, u=u):
                np.add(original, delta * u, out=array)
                value = probe.loss()
                array[...] = original
                return value

            perturb.request = (name, u)
            yield f"dir {k}", perturb, float(np.vdot(analytic, u))

    row, fails, smooth_fails = _judge(probe, name, array.shape, directions, probes(), eps, rtol, atol)
    if fails and not smooth_fails:
        row.kinks += fails      # every failing direction crossed a kink (several at once defeat the one-sided test)
    elif fails:
        row.kinks = 0
    return row


def _judge(probe, name, shape, count, probes, eps, rtol, atol):
    """Central differences for each (where, perturb, analytic) probe; kinks told apart from wrong gradients.

    Returns the report row, the number of failing probes, and how many of those failed at smooth points
    (certainly wrong gradients).
    """
    atol_eff = atol + probe.noise_floor(eps)
    errs, rels, fails, kinks, smooth_fails = [], [], 0, 0, 0
    worst = (-np.inf, "-", 0.0, 0.0)
    if probe.parallel is not None:                  # L(+eps), L(-eps) of every probe, on the executor's workers
        probes = list(probes)
        values = iter(probe.parallel.losses([(*p.request, d) for _, p, _ in probes for d in (eps, -eps)]))
    for where, perturb, ana in probes:
        lp, lm = (next(values), next(values)) if probe.parallel is not None else (perturb(eps), perturb(-eps))
        num = (lp - lm) / (2 * eps)
        err = abs(ana - num)
        tol = atol_eff + rtol * abs(num)
        if err > tol:
            nonsmooth, one_sided = _kink(probe, perturb, eps, (lm, probe.L0, lp), ana, tol)
            if nonsmooth and one_sided:
                kinks += 1
                continue
            fails += 1
            smooth_fails += not nonsmooth
        if err - tol > worst[0]:
            worst = (err - tol, where, ana, num)
        errs.append(err)
        rels.append(err / max(abs(ana), abs(num)) if max(abs(ana), abs(num)) > atol_eff else 0.0)
    status = "FAIL" if fails else ("kink" if kinks and not errs else "pass")
    _, where, ana, num = worst
    row = TensorReport(name, shape, count, max(errs, default=0.0), max(rels, default=0.0), where, ana, num, rtol,
                       atol_eff, status, kinks)
    return row, fails, smooth_fails
