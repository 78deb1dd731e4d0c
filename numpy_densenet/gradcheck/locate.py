"""Naming the wrong layer: ``gradcheck(model, x, locate=True)``.

When a whole model's check fails, one forward of a float64 copy of the model records what every submodule
receives: its inputs (NCHW, also for a fast layer called channel-major inside its block), and the state of its
random generators and buffers at that moment (a Dropout's mask, a BatchNorm's running statistics). Every
submodule is then checked alone on exactly that, bottom up:

* a module is checked only when none of its submodules failed (a module containing a failing one is not the
  innermost failure, and is not checked: a failure deep in a DenseNet costs the checks of small modules, not
  another check of the whole network);
* the failing modules none of whose submodules fails are the culprits: a wrong layer, or a module whose own
  code, joining its children, is wrong (a dense block's accumulation);
* a piece that cannot run alone (it raises when called on its recorded inputs) is left to its enclosing module;
  on the fast tier that is how a fused piece is answered for: by the innermost module around it that runs alone;
* if no submodule fails alone, the model's own code is the culprit (named "", as in ``named_modules()``).
"""
from __future__ import annotations

import copy

import numpy as np

from ..fast.layout import swap01
from ..nn.module import restore_buffers


def locate_culprits(result, model, x, check_alone):
    """Fill ``result.culprits`` and ``result.located`` for a model whose check failed.

    ``check_alone(module, inputs)`` checks one submodule (a standalone copy) and returns its GradcheckResult.
    """
    records = record_inputs(model, x)
    if not _visit("", model, records, check_alone, result):
        result.culprits.append("")
    order = [name for name, _ in model.named_modules()]
    result.culprits.sort(key=order.index)
    for name in result.culprits:
        if name in records and records[name]["calls"] > 1:
            result.notes.append(f"locate: '{name}' is called {records[name]['calls']} times in a forward; it was "
                                f"checked alone on the inputs of its first call")


def record_inputs(model, x):
    """One forward of a float64 copy of ``model`` on ``x``: {qualified name: {"inputs", "generators", "buffers",
    "calls"}} for every submodule called, as it was at its (first) call."""
    twin = copy.deepcopy(model).double()
    xs = x if isinstance(x, (tuple, list)) else (x,)
    xs = [np.array(a, dtype=np.float64) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in xs]
    records, active = {}, set()
    for name, m in twin.named_modules():
        for method in ("forward", "forward_cnhw"):
            if name and callable(getattr(m, method, None)):
                object.__setattr__(m, method, _recorder(records, active, name, m, getattr(m, method),
                                                        channel_major=method == "forward_cnhw"))
    with np.errstate(all="ignore"):
        twin(*xs)
    return records


def _recorder(records, active, name, module, call, channel_major):
    """``call`` (a bound forward or forward_cnhw), recording its first outermost call's inputs and state."""
    def recording(*args, **kwargs):
        if name in active:                      # forward calling forward_cnhw: one call
            return call(*args, **kwargs)
        active.add(name)
        try:
            if name in records:
                records[name]["calls"] += 1
            else:
                records[name] = _snapshot(module, args[:1] if channel_major else args, channel_major)
            return call(*args, **kwargs)
        finally:
            active.discard(name)
    return recording


def _snapshot(module, args, channel_major):
    """Copies of the inputs (channel-major ones as NCHW) and of the module's random and buffer state."""
    inputs = tuple(np.array(swap01(a) if channel_major else a, copy=True) if isinstance(a, np.ndarray) else a
                   for a in args)
    generators = {sub: copy.deepcopy(m.generator.bit_generator.state) for sub, m in module.named_modules()
                  if isinstance(getattr(m, "generator", None), np.random.Generator)}
    buffers = {name: np.array(b, copy=True) for name, b in module.named_buffers()}
    return dict(inputs=inputs, generators=generators, buffers=buffers, calls=1)


def standalone(module, record):
    """A copy of ``module`` (a submodule) in the state it had when the model's forward called it."""
    sub = copy.deepcopy(module)
    parts = dict(sub.named_modules())
    for part, state in record["generators"].items():
        parts[part].generator.bit_generator.state = copy.deepcopy(state)
    restore_buffers(sub, record["buffers"])
    return sub


def _visit(name, module, records, check_alone, result):
    """Check the subtree of ``module`` bottom up; True when a failure was found in it (its culprits recorded)."""
    found = False
    for child, sub in module.named_children():
        found |= _visit(f"{name}.{child}" if name else child, sub, records, check_alone, result)
    if found or not name or name not in records:        # the model itself has failed already
        return found
    inputs = records[name]["inputs"]
    try:
        checked = check_alone(standalone(module, records[name]), inputs)
    except Exception as e:  # noqa: BLE001 - a piece that cannot run alone: its enclosing module answers for it
        result.notes.append(f"locate: '{name}' cannot be checked alone ({type(e).__name__}: {e}); the module "
                            f"around it answers for it")
        return False
    result.located[name] = checked
    if not checked.passed:
        result.culprits.append(name)
        return True
    return False
