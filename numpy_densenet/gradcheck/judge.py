"""Judging one probe (a central difference against the analytic value, with Richardson extrapolation and the
kink hull), and collecting the verdicts of a tensor into a report row."""
from __future__ import annotations

import math

import numpy as np

from .report import TensorReport, fmt_index


class Verdict:
    __slots__ = ("ok", "kink", "err", "tol", "num", "smooth_fail")

    def __init__(self, ok, kink, err, tol, num, smooth_fail=False):
        self.ok, self.kink, self.err, self.tol, self.num, self.smooth_fail = ok, kink, err, tol, num, smooth_fail


def judge_probe(probe, line, ana, rtol, atol, hull_points=(), refinements=3):
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
            return Verdict(True, False, err, tol, num)
        if not (math.isfinite(num) and math.isfinite(ana)):
            return Verdict(False, False, err, tol, num, smooth_fail=True)
        lph, oph = line(f / 2)
        lmh, omh = line(-f / 2)
        num2 = (lph - lmh) / ((oph - omh) * h)
        richardson = (4.0 * num2 - num) / 3.0
        tol_r = atol + 3.0 * floor + rtol * abs(richardson)
        if abs(ana - richardson) <= tol_r:      # smooth with curvature: the truncation error explained it
            return Verdict(True, False, abs(ana - richardson), tol_r, richardson)
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
                return Verdict(inside, True, err, tol, num)
            continue            # a kink stays a kink at a smaller step; a steep smooth function does not
        if not abs(num - num2) > 0.05 * err:
            break                                         # smooth, no truncation to speak of: a wrong gradient
    return Verdict(False, False, err, tol, num, smooth_fail=True)


class Row:
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
                self.notes.append(f"({kind} {side} at {fmt_index(where)})")
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
                            nanmax(self.errs), nanmax(self.rels), where, ana, num, self.rtol, max(self.atols),
                            status, self.kinks, " ".join(self.notes), min(self.detects, default=math.nan),
                            self.ratio)


def nanmax(values):
    if not values:
        return 0.0
    return math.nan if any(math.isnan(v) for v in values) else max(values)
