"""float32 rows: the module run in float32 against float64 at the same float32-rounded point."""
from __future__ import annotations

import copy
import math

import numpy as np

from .judge import Row, nanmax
from .probe import Float32Draws, nonfinite, scales
from .report import TensorReport, fmt_index

EPS32 = float(np.finfo(np.float32).eps)
FLOAT32_FACTOR = 8.0        # float32 rows: rtol32 = FLOAT32_FACTOR * eps32 * sqrt(computation size)


def float32_rows(module, probe, check_inputs, check_params):
    """Run a float32 copy of the module and a float64 copy at the same float32-rounded point (parameters,
    inputs and upstream gradient rounded to float32, Dropout masks drawn in float32 for both); compare the
    analytic gradients entry by entry.

    Tolerance per tensor: |a32 - a64| <= atol32 + rtol32 * |a64|, rtol32 = 8 eps32 sqrt(K) with K the number
    of values the computation touches (inputs, output, parameters), atol32 = rtol32 * max(kappa * max|a64|,
    S / (entries * mean|value|)), kappa = S / sum|g y| the cancellation factor of the float64 noise estimate
    (large when the module subtracts large values, as BatchNorm on 1e4 + N(0, 1) does).

    ``module`` None: a function's probe runs its own float32 and float64 copies
    (``probe.float32_gradients``, in :mod:`.functions`).
    """
    if module is None:
        grads32, grads64 = probe.float32_gradients(check_inputs, check_params)
    else:
        grads32, grads64 = module_gradients(module, probe, check_inputs, check_params)
    k = probe.g.size + sum(probe.inputs[i].size for i in probe.float_inputs) + sum(p.size for _, p in probe.params)
    rtol32 = FLOAT32_FACTOR * EPS32 * math.sqrt(k)
    plain = float(np.nansum(np.abs(probe.g * probe.forward())))
    kappa = max(1.0, probe.size / plain) if plain > 0 else 1.0
    values = ([probe.inputs[i] for i in probe.float_inputs] if check_inputs else []) + (
        [p.data for _, p in probe.params] if check_params else [])
    return [_row(name, a32, a64, value, rtol32, kappa, probe.size)
            for (name, a32), (_, a64), value in zip(grads32, grads64, values)]


def module_gradients(module, probe, check_inputs, check_params):
    """[(name, gradient)] of a float32 copy of ``module`` and of a float64 copy at the same float32-rounded point."""
    m32 = copy.deepcopy(module).float()
    ref = copy.deepcopy(m32).double()            # float32-rounded parameters, held in float64
    x32 = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in probe.inputs]
    x64 = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in x32]
    g32 = probe.g.astype(np.float32)
    grads32 = _analytic(m32, x32, g32, check_inputs, check_params)
    grads64 = _analytic(ref, x64, g32.astype(np.float64), check_inputs, check_params, float32_draws=True)
    return grads32, grads64


def _analytic(m, xs, g, check_inputs, check_params, float32_draws=False):
    """One forward and backward of module ``m`` (its Dropout masks drawn in float32 with ``float32_draws``):
    [(name, gradient)] of the float inputs and the parameters."""
    if float32_draws:
        for sub in m.modules():
            gen = getattr(sub, "generator", None)
            if isinstance(gen, np.random.Generator):
                object.__setattr__(sub, "generator", Float32Draws(gen))
    m.zero_grad()
    m(*[a.copy() if a.dtype.kind == "f" else a for a in xs])
    out = m.backward(g.copy() if g.shape else g[()])
    out = out if isinstance(out, (tuple, list)) else (out,)
    floats = [i for i, a in enumerate(xs) if a.dtype.kind == "f"]
    many = len(floats) > 1
    named = []
    if check_inputs:
        named += [((f"input[{i}]" if many else "input"), np.asarray(out[slot])) for slot, i in enumerate(floats)]
    if check_params:
        named += [(name, p.grad) for name, p in m.named_parameters()]
    return named


def _row(name, a32, a64, value, rtol32, kappa, size):
    """The float32 row of one tensor: gradient ``a32`` against ``a64``; ``value`` the tensor (for its scale)."""
    a32d = np.asarray(a32, dtype=np.float64)
    a64 = np.asarray(a64, dtype=np.float64)
    row = Row(name + " (float32)", a64.shape, rtol32)
    scale = float(np.abs(a64[np.isfinite(a64)]).max(initial=0.0))
    # Absolute scale: the tensor's own largest gradient (times the cancellation factor), or, when that is ~0
    # (a conv bias before BatchNorm), what L's size spread evenly over the tensor's entries would give:
    # S / (entries * mean |value|), in the gradient's units.
    spread = size / (a64.size * float(np.mean(scales(value)))) if a64.size else 0.0
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
    bad_value = nonfinite(a32d)
    if bad_value is not None:
        row.notes.append(f"({bad_value[0]} in float32 analytic d({name}) at {fmt_index(bad_value[1])})")
        worst = bad_value[1]
    fails = int(bad.sum()) + row.fails
    big = np.maximum(np.abs(a32d), np.abs(a64))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(big > atol32, err / big, 0.0)
    has_nan = np.isnan(err).any()
    return TensorReport(row.name, a64.shape, a64.size, nanmax([float(err.max(initial=0.0))]) if not has_nan
                        else math.nan, float(np.nanmax(rel, initial=0.0)) if not has_nan else math.nan,
                        tuple(int(i) for i in worst), float(a32d[worst]) if a64.size else 0.0,
                        float(a64[worst]) if a64.size else 0.0, rtol32, atol32, "FAIL" if fails else "pass",
                        note=" ".join(row.notes),
                        detects=float(np.min(tol / np.where(np.abs(a64) > 0, np.abs(a64), np.inf), initial=np.inf)),
                        worst_ratio=float(ratio.max(initial=0.0)))
