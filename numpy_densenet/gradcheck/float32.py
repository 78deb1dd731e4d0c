"""float32 rows: the module run in float32 against float64 at the same float32-rounded point."""
from __future__ import annotations

import copy
import math

import numpy as np

from .judge import Row, nanmax
from .probe import Float32Draws, nonfinite, scales
from .report import TensorReport, fmt_index

EPS32 = float(np.finfo(np.float32).eps)
FLOAT32_FACTOR = 8.0        # float32 rows of a module with children: rtol32 = eps32 (2 + FLOAT32_FACTOR sqrt(K))
FLOAT32_LAYER_FACTOR = 0.3  # ... of a single layer: set from benchmarks/bench_float32.py (see docs/gradcheck.md)
ROUNDINGS = 2.0             # the result's own rounding, and one more (exp, log, a division): even for a tiny K


def float32_rows(module, probe, check_inputs, check_params):
    """Run a float32 copy of the module and a float64 copy at the same float32-rounded point (parameters,
    inputs and upstream gradient rounded to float32, Dropout masks drawn in float32 for both); compare the
    analytic gradients entry by entry.

    Tolerance per tensor: |a32 - a64| <= atol32 + rtol32 * |a64|, rtol32 = eps32 (2 + F sqrt(K)) with K the
    number of values the computation touches (inputs, output, parameters), atol32 = rtol32 * max(kappa * max|a64|,
    S / (entries * mean|value|)); F = 8 for a module with children or a function (``module`` None), 0.3 for a
    single layer (measured: FLOAT32_LAYER_FACTOR).

    kappa = S / sum|g y| is the cancellation factor of the float64 noise estimate (large when the module
    subtracts large values, as a convolution then a BatchNorm on 1e4 + N(0, 1) does: the convolution's output
    is rounded at 1e4 before the BatchNorm subtracts its mean). Only a module with children (or a function) gets
    it: a single layer's inputs and parameters are exact in float32 and it has no rounded intermediate the checker
    could blame, so its gradients must keep float32's precision whatever its inputs (kappa = 1, S = sum|g y|, and
    the measured factor). A BatchNorm whose mean loses its rounding (half a unit in the last place of 1e4) fails
    there. A module with children also carries its children's forward rounding into the gradients (a ReLU mask
    flipped by a rounded BatchNorm output, a convolution's output rounded before a BatchNorm subtracts its mean),
    which the checker cannot attribute: hence the wider factor.

    Output entries of a module that float32 cannot resolve (a BatchNorm -> ReLU output within float32's rounding
    of its kink, whose mask then differs between the runs) get a zero upstream gradient in both runs, when they
    are at most 1 % of the output.

    ``module`` None: a function's probe runs its own float32 and float64 copies
    (``probe.float32_gradients``, in :mod:`.functions`).
    """
    if module is None:
        grads32, grads64 = probe.float32_gradients(check_inputs, check_params)
    else:
        grads32, grads64 = module_gradients(module, probe, check_inputs, check_params)
    k = probe.g.size + sum(probe.inputs[i].size for i in probe.float_inputs) + sum(p.size for _, p in probe.params)
    leaf = module is not None and next(iter(module.children()), None) is None
    rtol32 = EPS32 * (ROUNDINGS + (FLOAT32_LAYER_FACTOR if leaf else FLOAT32_FACTOR) * math.sqrt(k))
    plain = float(np.nansum(np.abs(probe.g * probe.forward())))
    size = plain + abs(probe.L0) if leaf and math.isfinite(probe.L0) else probe.size
    kappa = max(1.0, probe.size / plain) if plain > 0 and not leaf else 1.0
    values = ([probe.inputs[i] for i in probe.float_inputs] if check_inputs else []) + (
        [p.data for _, p in probe.params] if check_params else [])
    return [_row(name, a32, a64, value, rtol32, kappa, size)
            for (name, a32), (_, a64), value in zip(grads32, grads64, values)]


def module_gradients(module, probe, check_inputs, check_params):
    """[(name, gradient)] of a float32 copy of ``module`` and of a float64 copy at the same float32-rounded point
    (its Dropout masks drawn in float32), with a zero upstream gradient at the outputs float32 cannot resolve."""
    m32 = copy.deepcopy(module).float()
    ref = copy.deepcopy(m32).double()            # float32-rounded parameters, held in float64
    _draw_in_float32(ref)
    x32 = [a.astype(np.float32) if a.dtype.kind == "f" else a for a in probe.inputs]
    x64 = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in x32]
    g32 = _resolvable(_forward(m32, x32), _forward(ref, x64), probe.g.astype(np.float32))
    grads32 = _backward(m32, x32, g32, check_inputs, check_params)
    grads64 = _backward(ref, x64, g32.astype(np.float64), check_inputs, check_params)
    return grads32, grads64


def _draw_in_float32(m):
    """Wrap every Dropout generator of ``m`` so that it draws its masks in float32, as its float32 twin does."""
    for sub in m.modules():
        gen = getattr(sub, "generator", None)
        if isinstance(gen, np.random.Generator):
            object.__setattr__(sub, "generator", Float32Draws(gen))


def _forward(m, xs):
    m.zero_grad()
    return np.asarray(m(*[a.copy() if a.dtype.kind == "f" else a for a in xs]), dtype=np.float64)


def _resolvable(y32, y64, g):
    """``g`` (float32, the output's shape) with zeros where the float32 output has lost more than half of its
    float64 value and more than 64 eps32 of the output's scale (a value at a kink that float32 puts on the
    other side), when such entries are at most 1 % of the output."""
    scale = float(np.abs(y64[np.isfinite(y64)]).max(initial=0.0))
    err = np.abs(y32 - y64)
    lost = (err > 0.5 * np.abs(y64)) & (err > 64 * EPS32 * scale)
    if not g.shape or not 0 < lost.sum() <= 0.01 * lost.size:
        return g
    return np.where(lost, np.float32(0), g)


def _backward(m, xs, g, check_inputs, check_params):
    """The backward of module ``m`` after :func:`_forward`: [(name, gradient)] of the float inputs and the
    parameters."""
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
