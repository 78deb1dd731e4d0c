"""Probes of one tensor: along single coordinates and along random directions, with the tie-breaking points of
the kink hull, and locating the wrong coordinates after a failed direction."""
from __future__ import annotations

import itertools
import math

import numpy as np

from .judge import Row, Verdict, judge_probe
from .probe import probe_steps
from .report import TensorReport, fmt_index


def coordinate_line(probe, array, flat, step, first=None):
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


def coordinate_requests(probe, name, array, analytic, eps, flat_indices):
    """The executor requests (name, index, +-step) of the first two evaluations of each coordinate probe, in
    the order :func:`check_coordinates` needs them."""
    steps = probe_steps(array, eps, probe.noise, analytic).ravel()
    return [(name, np.unravel_index(int(flat), array.shape), t * float(steps[flat]))
            for flat in flat_indices for t in (1.0, -1.0)]


def tied(array):
    """Boolean mask, array's shape: the entries whose value some other entry of the tensor shares (exact ties)."""
    flat = array.ravel()
    order = np.argsort(flat, kind="stable")
    equal = flat[order][1:] == flat[order][:-1]
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[1:][equal]] = mask[order[:-1][equal]] = True
    return mask.reshape(array.shape)


MAX_TIE_GROUPS = 8          # hull points move at most this many groups of tied entries, the largest first


def tie_groups(array):
    """Boolean masks, array's shape, of the groups of entries sharing one value (at least two entries each): the
    largest MAX_TIE_GROUPS groups, largest first (then by first occurrence)."""
    values, first, inverse, counts = np.unique(array.ravel(), return_index=True, return_inverse=True,
                                               return_counts=True)
    order = sorted((g for g in range(values.size) if counts[g] > 1), key=lambda g: (-counts[g], first[g]))
    return [(inverse == g).reshape(array.shape) for g in order[:MAX_TIE_GROUPS]]


def axis_patterns(shape):
    """Sign patterns that depend on one axis of ``shape`` (one per index along it), non-constant: every one for an
    axis of at most 3 entries, else three seeded ones and their negatives. Each is broadcastable to ``shape``."""
    patterns = []
    for axis, n in enumerate(shape):
        if n < 2:
            continue
        if n <= 3:
            signs = [np.array(bits) for bits in itertools.product((-1.0, 1.0), repeat=n) if len(set(bits)) > 1]
        else:
            drawn = np.random.default_rng([n, axis]).choice((-1.0, 1.0), (3, n))
            signs = [s for d in drawn for s in (d, -d) if len(set(s)) > 1]
        patterns += [s.reshape([n if a == axis else 1 for a in range(len(shape))]) for s in signs]
    return patterns


def _slopes_at(probe, array, idx, step, push, sweep):
    """A hull point: the one-sided slopes along coordinate ``idx`` (moves of +-``sweep`` steps) at
    ``array + push``; ``array`` is restored."""
    def slopes():
        original = array.copy()
        np.add(original, push, out=array)
        base = float(array[idx])
        values = []
        for t in (-sweep, 0.0, sweep):
            array[idx] = base + t * step
            values.append((probe.loss(), (array[idx] - base)))
        array[...] = original
        (lm, om), (l0, _), (lp, op) = values
        return [(l0 - lm) / -om, (lp - l0) / op], 2.0 * probe.noise / (sweep * step)
    return slopes


def _tie_break_points(probe, array, flat, step, steps):
    """Hull points for coordinate ``flat``: the other coordinates of the same tensor moved by one step of their
    own, earlier ones up and later ones down (so that ties break towards the first element, as PyTorch's max
    pooling does, and values at a kink fall to one side) and the mirror image; at each, the one-sided slopes
    along the coordinate with half a step. When the tensor has exact ties, two more per group of tied entries
    (:func:`tie_groups`): the group (this entry too, if in it) a step down, and a step up, the others left alone.
    A layer that ignores a uniform shift (a BatchNorm before a ReLU) undoes the first two on tied values at its
    kink, but not these."""
    idx = np.unravel_index(int(flat), array.shape)
    order = np.arange(array.size).reshape(array.shape)
    steps = steps.reshape(array.shape)
    push = np.where(order < flat, 1.0, -1.0) * steps
    push[idx] = 0.0
    points = [_slopes_at(probe, array, idx, step, push, 0.5), _slopes_at(probe, array, idx, step, -push, 0.5)]
    points += [_slopes_at(probe, array, idx, step, sign * np.where(group, steps, 0.0), 0.25)
               for group in tie_groups(array) for sign in (-1.0, 1.0)]
    return points


def first_tie_verdict(probe, array, flat, step, steps, ana, rtol, atol):
    """``tie_convention="first"`` at a tied coordinate: None if ``ana`` lies between the one-sided slopes at the
    point that breaks every tie towards the first element (earlier coordinates a step up, later ones a step
    down: PyTorch's choice among tied maxima), else the failing Verdict."""
    slopes, floor = _tie_break_points(probe, array, flat, step, steps)[0]()
    lo, hi = min(slopes), max(slopes)
    tol = atol + floor + rtol * max(abs(lo), abs(hi))
    if lo - tol <= ana <= hi + tol:
        return None
    nearest = lo if ana < lo else hi
    return Verdict(False, True, abs(ana - nearest), tol, nearest)


def check_coordinates(probe, name, array, analytic, eps, rtol, atol, flat_indices):
    """Probe single coordinates: perturb array[idx] by +-h (relative step); compare with analytic[idx]."""
    row = Row(name, array.shape, rtol)
    steps = probe_steps(array, eps, probe.noise, analytic).ravel()
    firsts = None
    if probe.parallel is not None:                  # L(+h), L(-h) of every probe, on the executor's workers
        values = probe.parallel.losses(coordinate_requests(probe, name, array, analytic, eps, flat_indices))
        firsts = [values[2 * k:2 * k + 2] for k in range(len(flat_indices))]
    ties = tied(array) if probe.tie_convention == "first" else None
    for k, flat in enumerate(flat_indices):
        idx, line = coordinate_line(probe, array, flat, float(steps[flat]),
                                     firsts[k] if firsts is not None else None)
        ana = float(analytic[idx])
        v = judge_probe(probe, line, ana, rtol, atol,
                         hull_points=_LazyPoints(probe, array, flat, float(steps[flat]), steps))
        if ties is not None and v.ok and ties[idx]:             # a valid subgradient; PyTorch's choice?
            wrong = first_tie_verdict(probe, array, flat, float(steps[flat]), steps, ana, rtol, atol)
            if wrong is not None:
                v = wrong
                if not row.notes:
                    row.notes.append("(tie_convention='first': at tied entries the analytic value is not the one "
                                     "where ties go to the first element; 'numeric' shows that one)")
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
    scale = probe_steps(original, eps, probe.noise, analytic) / eps
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
    a step down; everything a step up), and, for each group of tied entries (:func:`tie_groups`), the group a step
    down and a step up (the others left alone: a layer that ignores a uniform shift cannot undo these) and the
    group moved by sign patterns along one axis (:func:`axis_patterns`: a BatchNorm's channels with weights of
    either sign need their tied zeros moved each its own way), measured with moves small enough not to undo the
    tie-breaking."""
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

    points = [point(rank), point(-rank), point(-steps), point(steps)]
    signs = [-1.0, 1.0] + axis_patterns(array.shape)
    return points + [point(sign * np.where(group, steps, 0.0)) for group in tie_groups(array) for sign in signs]


class _LazyDirectionPoints:
    def __init__(self, *args):
        self.args = args

    def __iter__(self):
        return iter(_direction_hull_points(*self.args))


def _check_directions(probe, name, array, analytic, eps, rtol, atol, directions, rng):
    row = Row(name, array.shape, rtol)
    steps = probe_steps(array, eps, probe.noise, analytic)
    probes = list(_directional_probes(probe, array, analytic, eps, directions, rng))
    parallel = probe.parallel
    if parallel is not None and not parallel.pending:    # (sampled mode's own prefetch is left alone)
        values = parallel.losses([(name, d, t * eps) for _, _, _, d in probes for t in (1.0, -1.0)])
        for k, (_, line, _, _) in enumerate(probes):
            line.first = values[2 * k:2 * k + 2]
    for where, line, ana, d in probes:
        v = judge_probe(probe, line, ana, rtol, atol, hull_points=_LazyDirectionPoints(probe, array, d, steps, eps))
        row.add(where, ana, v, rtol)
    report = row.report()
    return report, row


def directional_row(probe, name, array, analytic, eps, rtol, atol, directions, locate_samples,
                     exhaustive_limit, rng, clear_kinks=True):
    report, row = _check_directions(probe, name, array, analytic, eps, rtol, atol, directions, rng)
    if report.status != "FAIL":
        if not (clear_kinks and report.kinks and array.size <= exhaustive_limit):
            return report
        # A direction across kinks is accepted anywhere in a hull that widens with every kink it crosses, so
        # a single wrong entry can hide in it: a small tensor is then checked coordinate by coordinate.
        located = check_coordinates(probe, name, array, analytic, eps, rtol, atol, np.arange(array.size))
        if located.status != "FAIL":
            report.note = f"(directions cross kinks; every coordinate checked: {located.kinks} kinks)"
            return report
        located.note = (f"(directions cross kinks and pass within the hull of nearby derivatives; located "
                        f"over all {located.probes} coordinates)" + (f" {located.note}" if located.note else ""))
        return located
    if not locate_samples:              # gradcheck(..., locate=True): the culprits' own rows locate it
        report.note = "(a failing direction, not located coordinate by coordinate)"
        return report
    # Locate the wrong entries coordinate by coordinate (every coordinate when the failing directions crossed
    # non-differentiable points and the tensor is small enough). The direction's failure stands either way: it
    # was a smooth mismatch, or its value lies outside the hull of the derivatives at nearby points, which no
    # per-coordinate test can see (a gradient counted twice at a tie gives each tied entry a valid value).
    crossed_kinks = row.smooth_fails == 0
    exhaustive = crossed_kinks and array.size <= exhaustive_limit
    indices = np.arange(array.size) if exhaustive else _locate_indices(analytic, locate_samples, rng)
    located = check_coordinates(probe, name, array, analytic, eps, rtol, atol, indices)
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


def merge_rows(coords, dirs):
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


def nonfinite_row(probe, name, array, analytic, bad, eps, rtol, atol):
    """A tensor whose analytic gradient holds NaN or inf: fails, naming the first bad entry; the numeric
    derivative there is computed for the report."""
    kind, idx, nans, infs = bad
    flat = int(np.ravel_multi_index(idx, array.shape))
    _, line = coordinate_line(probe, array, flat, float(probe_steps(array, eps).ravel()[flat]))  # analytic is bad
    (lp, op), (lm, om) = line(1.0), line(-1.0)
    num = (lp - lm) / ((op - om) * line.h)
    counts = ", ".join(f"{c} {k}" for c, k in ((nans, "NaN"), (infs, "inf")) if c)
    return TensorReport(name, array.shape, 1, math.inf if kind == "inf" else math.nan, math.nan, idx,
                        float(analytic[idx]), num, rtol, atol + probe.noise / line.h, "FAIL",
                        note=f"({kind} in analytic d({name}) at {fmt_index(idx)}; {counts} of {array.size})",
                        worst_ratio=math.inf)


def _locate_indices(analytic, k, rng):
    """Coordinates to probe after a failed direction: the largest analytic entries plus random ones."""
    n = analytic.size
    if n <= k:
        return np.arange(n)
    largest = np.argsort(np.abs(analytic).ravel())[n - k // 2:]
    others = rng.choice(n, k - k // 2, replace=False)
    return np.unique(np.concatenate([largest, others]))
