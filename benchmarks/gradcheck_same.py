"""Does ``gradcheck(module, x)`` still give the same results, bit for bit? A refactoring guard.

    python benchmarks/gradcheck_same.py --src /tmp/base --save /tmp/before.json   # the code before a change
    python benchmarks/gradcheck_same.py --compare /tmp/before.json                 # this checkout, compared

Runs ``gradcheck`` on a fixed set of cases and records, for each, every field of the result that existed before
issue 20 (rows and float32 rows with every float's repr, the protocol flags, notes) and the report's text:

* every layer case and tiny model case of ``numpy-densenet gradcheck`` in each mode (float32 rows in full mode);
* planted bugs (transposed gradient, missing BatchNorm term, ``=`` for ``+=``, an upstream gradient scaled in
  place, a NaN, a wrong value at ReLU's kink) in each mode;
* the mutation study's random correct cases (ties, zeros, magnitudes 1e-6 to 1e6) in each mode;
* two cases on a 2-worker process pool.

Exit status 1 when a result differs from the saved one (the first differences are printed).
"""
import argparse
import copy
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import use_src  # noqa: E402,F401  (honours --src before numpy_densenet is imported)

import numpy_densenet  # noqa: E402
from numpy_densenet import fast, nn  # noqa: E402
from numpy_densenet.gradcheck import gradcheck, layer_cases, model_cases  # noqa: E402

MODES = ("full", "sampled", "directional")


class LinearTransposedDx(nn.Linear):
    def backward(self, dout):
        super().backward(dout)
        return (dout @ self.weight.data)[:, ::-1].copy()


class BatchNormNoMeanTerm(nn.BatchNorm2d):
    def backward(self, dout):
        dx = super().backward(dout)
        return dx + dout.mean(axis=(0, 2, 3), keepdims=True) * 0.5


class LinearAssignsGrad(nn.Linear):
    def backward(self, dout):
        self.weight.grad[...] = 0          # = instead of +=
        return super().backward(dout)


class ConvAssigns(nn.Conv2d):
    def backward(self, dout):
        self.weight.grad[...] = 0
        return super().backward(dout)


class ReLUScalesUpstream(nn.ReLU):
    def backward(self, dout):
        dout *= 1.0 + 1e-3
        return super().backward(dout)


class ReLUNaN(nn.ReLU):
    def backward(self, dout):
        dx = super().backward(dout)
        dx.reshape(-1)[3] = np.nan
        return dx


class ReLUDoubleAtZero(nn.ReLU):
    def backward(self, dout):
        y = self._cache
        return super().backward(dout) + np.where(y == 0, dout, 0.0)      # dy at the kink, where 0 is right


def planted(rng):
    x = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    relu_x = x(2, 3, 4, 4)
    relu_x.reshape(-1)[::5] = 0.0
    return [
        ("Linear transposed dx", LinearTransposedDx(4, 4, generator=rng), x(3, 4)),
        ("BatchNorm2d missing term", BatchNormNoMeanTerm(3), x(4, 3, 3, 3)),
        ("Linear keeps half its grad", LinearAssignsGrad(5, 3, generator=rng), x(2, 5)),
        ("Conv2d assigns grad", ConvAssigns(2, 3, 3, padding=1, generator=rng), x(2, 2, 4, 4)),
        ("ReLU scales upstream", ReLUScalesUpstream(), x(2, 3, 4, 4)),
        ("ReLU NaN", ReLUNaN(), x(2, 3, 3, 3)),
        ("ReLU double at zero", ReLUDoubleAtZero(), relu_x),
        ("fast Sequential with a float32 model", fast.Sequential(fast.Conv2d(2, 3, 3, padding=1, generator=rng),
                                                                fast.BatchNormReLU2d(3)), x(2, 2, 4, 4)),
    ]


def canonical(result):
    """Every field a result had before issue 20, with floats as their repr (exact), and the report's text."""
    def row(r):
        return {k: repr(getattr(r, k)) for k in ("name", "shape", "probes", "max_abs_err", "max_rel_err", "worst",
                                                 "analytic", "numeric", "rtol", "atol", "status", "kinks", "note",
                                                 "detects", "worst_ratio")}
    return dict(module=result.module, mode=result.mode, eps=repr(result.eps), seed=result.seed,
                rows=[row(r) for r in result.rows], float32_rows=[row(r) for r in result.float32_rows],
                reentrant=result.reentrant, accumulates=result.accumulates, upstream_intact=result.upstream_intact,
                notes=list(result.notes), passed=result.passed, table=result.table())


def random_correct_cases(trials):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_mutation
    rng = np.random.default_rng([0, 99])
    return [(f"random {t} {kind}", m, x) for t in range(trials)
            for kind, m, x in [bench_mutation.random_case(numpy_densenet, rng)]]


def run(trials, workers):
    numpy_densenet.set_num_threads(1)
    out = {}

    def record(label, module, x, **kwargs):
        out[label] = canonical(gradcheck(copy.deepcopy(module), x, **kwargs))
        print(f"{label}: {'passed' if out[label]['passed'] else 'FAILED'}", flush=True)

    rng = np.random.default_rng(0)
    for label, module, x in layer_cases(rng) + planted(rng):
        for mode in MODES:
            record(f"{label} / {mode}", module, x, mode=mode, float32=mode == "full")
    for label, module, x in model_cases(np.random.default_rng(1)):
        for mode in ("sampled", "directional"):
            record(f"{label} / {mode}", module, x, mode=mode, float32=mode == "sampled")
    for label, module, x in random_correct_cases(trials):
        for mode in MODES:
            record(f"{label} / {mode}", module, x, mode=mode, seed=3)
    if workers:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            label, module, x = model_cases(np.random.default_rng(2))[0]
            for mode in ("sampled", "directional"):
                record(f"executor {label} / {mode}", module, x, mode=mode, executor=pool)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", help="import numpy_densenet from this folder (a snapshot)")
    p.add_argument("--save", help="write the results to this JSON file")
    p.add_argument("--compare", help="compare with the results saved in this JSON file")
    p.add_argument("--trials", type=int, default=40, help="random correct cases (default 40)")
    p.add_argument("--workers", type=int, default=2, help="process-pool workers (0: no executor case)")
    a = p.parse_args()
    print(f"numpy_densenet from {os.path.dirname(numpy_densenet.__file__)}", flush=True)
    results = run(a.trials, a.workers)
    if a.save:
        with open(a.save, "w") as f:
            json.dump(results, f, indent=1)
    if a.compare:
        with open(a.compare) as f:
            before = json.load(f)
        differ = [k for k in before if results.get(k) != before[k]]
        missing = [k for k in before if k not in results]
        for k in differ[:5]:
            for field in before[k]:
                if results.get(k, {}).get(field) != before[k][field]:
                    print(f"DIFFERS: {k}: {field}:\n  before {before[k][field]}\n  now    "
                          f"{results.get(k, {}).get(field)}")
        print(f"{len(before) - len(differ)} of {len(before)} results identical, bit for bit"
              + (f"; {len(differ)} differ ({len(missing)} missing)" if differ else ""))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
