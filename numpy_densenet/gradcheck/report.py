"""The checker's report: one row per tensor (:class:`TensorReport`), the whole result (:class:`GradcheckResult`)
and its text table with a legend."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["GradcheckError", "TensorReport", "GradcheckResult", "LEGEND", "format_rows", "fmt_index"]


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
    """The outcome of :func:`gradcheck` (and of ``check_backward``, ``check_torch``, ``check_jax``). ``passed`` is
    True when no row failed and the protocol checks held.

    ``accumulates`` is None where there is no ``.grad`` to accumulate into (a function), ``inputs_intact`` None
    where it is not checked (a module, whose every forward gets fresh copies). With ``locate``, ``culprits`` holds
    the qualified names (as in ``named_modules()``, "" for the model itself) of the innermost submodules whose own
    backward fails, and ``located`` the result of every submodule checked alone, by name."""
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
    inputs_intact: bool = None
    culprits: list = field(default_factory=list)
    located: dict = field(default_factory=dict)

    @property
    def passed(self):
        return (self.reentrant and self.accumulates is not False and self.upstream_intact
                and self.inputs_intact is not False
                and all(r.passed for r in self.rows) and all(r.passed for r in self.float32_rows))

    @property
    def failures(self):
        return [r for r in self.rows + self.float32_rows if not r.passed]

    def table(self):
        lines = self.culprit_lines()
        lines += [f"gradcheck {self.module}: mode={self.mode}, float64, eps={self.eps:g} (relative step), "
                  f"seed={self.seed}"]
        lines += self.body()
        lines += LEGEND
        lines.append("PASSED" if self.passed else "FAILED")
        return "\n".join(lines)

    def body(self):
        """The rows, float32 rows, protocol checks and notes."""
        lines = format_rows(self.rows, ("analytic", "numeric"))
        if self.float32_rows:
            lines.append("float32 run: analytic float32 gradients vs the float64 ones at the same float32-rounded "
                         "point")
            lines += format_rows(self.float32_rows, ("float32", "float64"))
        checks = [f"reentrant (backward twice, same gradients): {yes(self.reentrant)}"]
        if self.accumulates is not None:
            checks.append(f"accumulates into .grad (+=): {yes(self.accumulates)}")
        checks.append(f"upstream gradient left unchanged: {yes(self.upstream_intact)}")
        if self.inputs_intact is not None:
            checks.append(f"inputs left unchanged by forward and backward: {yes(self.inputs_intact)}")
        return lines + ["; ".join(checks)] + self.notes

    def culprit_lines(self):
        """With ``locate``: the culprits first, each with its own rows, as checked alone."""
        if not self.located and not self.culprits:
            return []
        lines = [f"located: the wrong backward is in {', '.join(repr(n) for n in self.culprits) or 'no submodule'} "
                 f"({len(self.located)} submodules checked alone, each on the inputs it received in the model's "
                 f"forward; innermost failures only)"]
        for name in self.culprits:
            if name not in self.located:
                lines.append(f"== '{name}' (the model itself, {self.module}): every submodule passes alone, so the "
                             f"code joining them is wrong; its rows are below")
                continue
            sub = self.located[name]
            lines.append(f"== '{name}' ({sub.module}), mode={sub.mode}:")
            lines += ["   " + line for line in sub.body()]
        return lines

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


def yes(flag):
    return "yes" if flag else "NO"


def format_rows(rows, value_heads):
    head = ("tensor", "shape", "probes", "max abs err", "max rel err", "worst at") + value_heads + (
        "rtol", "atol", "err/tol", "detects", "status")
    body = []
    for r in rows:
        status = r.status if r.status != "kink" else "non-differentiable here"
        if r.kinks and r.status == "pass":
            status = f"pass ({r.kinks} kink probe{'s' if r.kinks > 1 else ''} skipped)"
        body.append((r.name, str(tuple(r.shape)), str(r.probes), f"{r.max_abs_err:.2e}", f"{r.max_rel_err:.2e}",
                     fmt_index(r.worst), f"{r.analytic:.6g}", f"{r.numeric:.6g}", f"{r.rtol:.1e}",
                     f"{r.atol:.1e}", f"{r.worst_ratio:.2g}", f"{r.detects:.1e}",
                     status + (f" {r.note}" if r.note else "")))
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    return lines


def fmt_index(index):
    if not isinstance(index, tuple):
        return str(index)                   # "dir k" or "-"
    if len(index) == 1:
        return f"({int(index[0])},)"
    return "(" + ", ".join(str(int(i)) for i in index) + ")"
