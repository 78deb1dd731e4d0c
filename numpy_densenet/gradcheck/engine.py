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

import inspect
import math

import numpy as np

from ..nn.module import Module
from .float32 import float32_rows
from .locate import locate_culprits
from .parallel import ParallelLosses
from .probe import Probe, nonfinite
from .probing import check_coordinates, coordinate_requests, directional_row, merge_rows, nonfinite_row
from .report import GradcheckError, GradcheckResult

MODES = ("full", "sampled", "directional")
TIE_CONVENTIONS = ("any", "first")


def gradcheck(module, x, *, mode="full", seed=0, eps=1e-6, rtol=1e-6, atol=1e-8, samples=16, directions=3,
              sampled_directions=1, locate_samples=64, exhaustive_limit=4096, clear_limit=20000, float32=False,
              raise_exception=False, check_inputs=True, check_params=True, executor=None, tie_convention="any",
              locate=False):
    """Check ``module.backward`` against central finite differences in float64.

    Parameters
    ----------
    module : Module
        Any module following the layer protocol (``forward(*x)``, ``backward(dout)``, parameters with
        ``.data``/``.grad``); it is deep-copied and converted to float64, so the original (and its running
        statistics, random generators and ``.grad``) is left untouched. (Other code: :func:`check_backward`
        for a NumPy forward/backward pair, ``check_torch`` and ``check_jax`` for PyTorch and JAX functions.)
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
        Probe counts (``sampled_directions`` may be 0; ``locate_samples`` 0: a failing direction is reported as
        it is, not located coordinate by coordinate).
    exhaustive_limit, clear_limit : int
        See ``mode``.
    float32 : bool
        Also run a float32 copy of the module on the float32-rounded input and compare its analytic gradients
        with the float64 ones at that point (reported in separate rows).
    raise_exception : bool
        Raise :class:`GradcheckError` (with the report) instead of returning a failed result.
    check_inputs, check_params : bool
        Which gradients to check.
    tie_convention : {"any", "first"}
        At tied values of a checked tensor, ``"any"`` accepts any valid subgradient (the gradient sent to any of
        tied maxima, or shared between them); ``"first"`` also requires PyTorch's choice: the value where every
        tie breaks towards the first element in index order (the first maximum of a max-pooling window). Applied
        to coordinate probes (modes full and sampled, and directional mode's coordinate pass); behind a layer
        that couples the entries (a BatchNorm before a ReLU) ties are not broken by index, so keep "any" there.
    executor : concurrent.futures.Executor, optional
        Evaluate the perturbed losses on this executor's workers (a process pool, loky, Dask's
        ``Client.get_executor()``; see :mod:`numpy_densenet.gradcheck.parallel`), in coarse tasks, each worker on
        one thread. The result is bit-identical to a serial run with ``numpy_densenet.set_num_threads(1)``.
    locate : bool or {"full", "sampled", "directional"}
        When the check fails, name the wrong backward: every submodule is checked alone (in directional mode,
        or the mode given), bottom up, on the very inputs it received in one recorded forward of the model, and
        ``result.culprits`` lists the qualified names (``named_modules()``) of the innermost ones that fail,
        printed first in the report with their own rows. The whole model's failing directions are then not
        located coordinate by coordinate (the culprits' rows are, at a submodule's cost). Nothing extra runs
        when the check passes.

    Returns
    -------
    GradcheckResult
        ``.passed``, and ``print(result)`` shows one row per tensor: max abs and rel error, the worst index
        with its analytic and numeric values, the effective tolerances, the smallest relative error the row
        could detect, and the status, then the protocol checks and a legend.
    """
    options = dict(locals())                     # the options, as the front doors take them too
    for name in ("module", "x", "raise_exception", "locate"):
        del options[name]
    __tracebackhide__ = True                     # pytest shows the report, not the engine's frames
    if not isinstance(module, Module):
        raise TypeError(f"gradcheck: module must be a numpy_densenet Module, got {type(module).__name__} (for a "
                        f"NumPy forward/backward pair use check_backward; for PyTorch, check_torch)")
    check_options("gradcheck", options)
    check_something_to_check(module, x, check_inputs, check_params)
    where = locate_mode(locate)
    whole = dict(options, locate_samples=0) if where else options     # the culprits' rows locate the entries
    result = check_probe(Probe(module, x, seed), type(module).__name__, module, **whole)
    if where and not result.passed:
        def check_alone(sub, inputs):
            return gradcheck(sub, inputs, **dict(options, mode=where, check_inputs=True))
        locate_culprits(result, module, x, check_alone)
    return finish(result, raise_exception)


def check_probe(probe, label, module=None, *, mode, seed, eps, rtol, atol, samples, directions, sampled_directions,
                locate_samples, exhaustive_limit, clear_limit, float32, check_inputs, check_params, executor,
                tie_convention):
    """The decision logic every front door shares: one row per checked tensor in the given mode, the protocol
    checks and the float32 rows of ``probe`` (a :class:`~.probe.BaseProbe`; ``module`` for the float32 copies
    of a :class:`~.probe.Probe`) -> GradcheckResult, not raised. The options are gradcheck's, checked."""
    probe.tie_convention = tie_convention
    if executor is not None:
        probe.parallel = ParallelLosses(executor, probe)
    result = GradcheckResult(label, mode, eps, seed)
    module_values = (sum(a.size for a in probe.inputs if isinstance(a, np.ndarray))
                     + sum(p.size for _, p in probe.params))
    if module_values > clear_limit:
        exhaustive_limit = 0            # too costly to probe a tensor coordinate by coordinate
    rng = np.random.default_rng([seed, 1])
    targets = check_targets(probe, check_inputs, check_params)
    coordinates = pick_coordinates(probe, targets, mode, samples, eps, rng)
    for name, array, analytic in targets:
        bad = nonfinite(analytic)
        if bad is not None:
            row = nonfinite_row(probe, name, array, analytic, bad, eps, rtol, atol)
        elif mode == "directional":
            row = directional_row(probe, name, array, analytic, eps, rtol, atol, directions, locate_samples,
                                  exhaustive_limit, rng)
        else:
            n = coordinates[name].size
            row = check_coordinates(probe, name, array, analytic, eps, rtol, atol, coordinates[name])
            if mode == "sampled" and sampled_directions and n < array.size:
                other = directional_row(probe, name, array, analytic, eps, rtol, atol, sampled_directions,
                                        locate_samples, exhaustive_limit, rng, clear_kinks=False)
                row = merge_rows(row, other)
        result.rows.append(row)
    result.reentrant, result.accumulates = probe.reentrant, probe.accumulates
    result.upstream_intact, result.inputs_intact = probe.upstream_intact, probe.inputs_intact
    result.notes += probe.notes
    if float32:
        result.float32_rows = float32_rows(module, probe, check_inputs, check_params)
    return result


def finish(result, raise_exception):
    """``result``, or :class:`GradcheckError` carrying it when it failed and ``raise_exception`` asks."""
    __tracebackhide__ = True
    if raise_exception and not result.passed:
        raise GradcheckError(result)
    return result


def options_for(door, given):
    """gradcheck's keyword options as a front door (``check_backward``, ``check_torch``) takes them: ``given``
    checked by name and value, the others at gradcheck's defaults (its signature is the one place for them).
    Returns (options, raise_exception)."""
    defaults = {name: p.default for name, p in inspect.signature(gradcheck).parameters.items()
                if p.kind is p.KEYWORD_ONLY and name != "locate"}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise TypeError(f"{door}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                        f"the options are {', '.join(defaults)}")
    options = {**defaults, **given}
    raise_exception = options.pop("raise_exception")
    check_options(door, options)
    return options, raise_exception


def locate_mode(locate):
    """The mode submodules are checked in (None: do not locate)."""
    if locate is False or locate is None:
        return None
    if locate is True:
        return "directional"
    if locate in MODES:
        return locate
    raise ValueError(f"gradcheck: locate must be True, False or one of {MODES}, got {locate!r}")


def check_options(door, options):
    """A clear error for a bad option of :func:`gradcheck` (or of the front door ``door``), naming it."""
    mode, eps = options["mode"], options["eps"]
    if mode not in MODES:
        raise ValueError(f"{door}: mode must be one of {MODES}, got {mode!r}")
    if not eps > 0:
        raise ValueError(f"{door}: eps must be positive, got {eps!r}")
    for name in ("samples", "directions", "locate_samples", "sampled_directions", "exhaustive_limit", "clear_limit"):
        v, low = options[name], (1 if name in ("samples", "directions") else 0)
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise ValueError(f"{door}: {name} must be a {'positive' if low else 'non-negative'} int, got {v!r}")
    if options["tie_convention"] not in TIE_CONVENTIONS:
        raise ValueError(f"{door}: tie_convention must be one of {TIE_CONVENTIONS}, got {options['tie_convention']!r}")
    for name in ("rtol", "atol"):
        if not options[name] >= 0:
            raise ValueError(f"{door}: {name} must be non-negative, got {options[name]!r}")


def check_something_to_check(module, x, check_inputs, check_params):
    """A clear ValueError instead of a vacuous pass: both checks off, an empty float input, or nothing left."""
    inputs = [np.asarray(a) for a in (x if isinstance(x, tuple) else (x,))]
    empty = [i for i, a in enumerate(inputs) if a.dtype.kind == "f" and a.size == 0]
    if empty:
        raise ValueError(f"gradcheck: input {empty[0]} is empty (shape {inputs[empty[0]].shape}): there is no "
                         f"gradient to check; give at least one value")
    values = (sum(a.size for a in inputs if a.dtype.kind == "f") if check_inputs else 0) + \
        (sum(p.data.size for p in module.parameters()) if check_params else 0)
    if values == 0:
        raise ValueError("gradcheck: nothing to check: " + ("check_inputs and check_params are both False" if not
                         (check_inputs or check_params) else f"check_inputs={check_inputs} and check_params="
                         f"{check_params} leave no float input or parameter of {type(module).__name__}"))


def check_targets(probe, check_inputs, check_params):
    """(name, array, analytic gradient) of every tensor to check: the float inputs, then the parameters."""
    targets = []
    if check_inputs:
        targets += [(name, arr, grad) for name, arr, grad in probe.input_targets()]
    if check_params:
        targets += [(name, p.data, grad) for (name, p), grad in zip(probe.params, probe.param_grads)]
    return targets


def pick_coordinates(probe, targets, mode, samples, eps, rng):
    """Modes full and sampled: the sorted flat indices to probe in each tensor (all, or ``samples`` seeded ones),
    known before any is judged, so that an executor gets every first probe at once, in coarse tasks across
    tensors. An empty dict in directional mode."""
    if mode == "directional":
        return {}
    coordinates = {}
    for name, array, analytic in targets:
        n = array.size if mode == "full" else min(samples, array.size)
        flat = np.arange(array.size) if mode == "full" else rng.choice(array.size, n, replace=False)
        coordinates[name] = np.sort(flat)
    if probe.parallel is not None:
        probe.parallel.prefetch([request for name, array, analytic in targets if nonfinite(analytic) is None
                                 for request in coordinate_requests(probe, name, array, analytic, eps,
                                                                    coordinates[name])])
    return coordinates
