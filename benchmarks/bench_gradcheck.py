"""Time the gradient checker: the CLI's layer and model cases per mode, and whole DenseNets directional.

    python benchmarks/bench_gradcheck.py                          # densenet_bc depths 40 and 100
    python benchmarks/bench_gradcheck.py --depths 40 --directions 3
    python benchmarks/bench_gradcheck.py --cases --depths 40      # + CLI cases, every mode
    python benchmarks/bench_gradcheck.py --cases --depths 40 --baseline main   # also time main's checker

Each DenseNet run checks the input and every parameter tensor of densenet_bc(depth, 12) on a float64 copy of
the model, batch 2 at 32x32, with ``directions`` random directions per tensor (two forwards each, one backward
in all). ``--cases`` times ``gradcheck`` in each mode over the cases of ``numpy-densenet gradcheck`` (every
layer type) and ``numpy-densenet gradcheck --model`` (tiny DenseNets). ``--baseline REV`` loads
``numpy_densenet/gradcheck.py`` as it was at git revision REV and times it the same way, interleaved with the
current checker (A, B, A, B ... over ``--rounds`` rounds; the minimum per configuration is reported).
"""
import argparse
import importlib.util
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# -- settings (all overridable on the command line) ---------------------------------------------------------
depths = "40,100"
growth_rate = 12
batch = 2
size = 32
directions = 1
seed = 0


def load_baseline(rev):
    """numpy_densenet/gradcheck.py at git revision ``rev``, imported as numpy_densenet._gradcheck_<rev>."""
    source = subprocess.run(["git", "-C", ROOT, "show", f"{rev}:numpy_densenet/gradcheck.py"], check=True,
                            capture_output=True, text=True).stdout
    name = "numpy_densenet._gradcheck_baseline"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "numpy_densenet"
    sys.modules[name] = module
    exec(compile(source, f"<{rev}:numpy_densenet/gradcheck.py>", "exec"), module.__dict__)
    return module.gradcheck


def time_cases(gradcheck, modes, seed_):
    from numpy_densenet.gradcheck import layer_cases, model_cases
    out = {}
    for what, cases in (("layers", layer_cases), ("models", model_cases)):
        for mode in modes:
            rng = np.random.default_rng(seed_)
            start = time.perf_counter()
            passed = sum(gradcheck(c.module, c.x, mode=c.options.get("mode", mode), seed=seed_).passed
                         for c in cases(rng))
            out[(what, mode)] = (time.perf_counter() - start, passed, len(cases(np.random.default_rng(0))))
    return out


def time_densenet(gradcheck, depth, a):
    from numpy_densenet import densenet_bc
    model = densenet_bc(depth, a.growth_rate, seed=a.seed)
    x = np.random.default_rng(a.seed).standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
    start = time.perf_counter()
    result = gradcheck(model, x, mode="directional", directions=a.directions, seed=a.seed)
    return time.perf_counter() - start, result


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", default=depths)
    p.add_argument("--growth-rate", type=int, default=growth_rate)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--size", type=int, default=size)
    p.add_argument("--directions", type=int, default=directions)
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--cases", action="store_true", help="also time the CLI's layer and model cases per mode")
    p.add_argument("--modes", default="full,sampled,directional")
    p.add_argument("--baseline", default=None, help="git revision whose gradcheck.py to time alongside")
    p.add_argument("--rounds", type=int, default=1)
    a = p.parse_args()

    from numpy_densenet import gradcheck
    checkers = [("current", gradcheck)]
    if a.baseline:
        checkers.insert(0, (f"baseline {a.baseline}", load_baseline(a.baseline)))
    modes = [m for m in a.modes.split(",") if m]
    best = {}
    for _ in range(a.rounds):
        for label, check in checkers:
            if a.cases:
                for key, (seconds, passed, total) in time_cases(check, modes, a.seed).items():
                    k = (label, "CLI " + key[0], key[1])
                    best[k] = (min(seconds, best.get(k, (np.inf,))[0]), f"{passed}/{total} passed")
            for depth in (int(d) for d in a.depths.split(",") if d):
                seconds, result = time_densenet(check, depth, a)
                k = (label, f"densenet_bc({depth}, {a.growth_rate}) {a.directions} dir", "directional")
                worst = max(row.max_rel_err for row in result.rows)
                best[k] = (min(seconds, best.get(k, (np.inf,))[0]),
                           f"passed={result.passed}, {len(result.rows)} tensors, worst rel err {worst:.1e}")
    print("| checker | cases | mode | seconds (min over rounds) | outcome |")
    print("|---|---|---|---|---|")
    for (label, what, mode), (seconds, outcome) in best.items():
        print(f"| {label} | {what} | {mode} | {seconds:.2f} | {outcome} |", flush=True)


if __name__ == "__main__":
    main()
