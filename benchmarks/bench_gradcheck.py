"""Time the whole-DenseNet gradient check in directional mode.

    python benchmarks/bench_gradcheck.py                  # densenet_bc depths 40 and 100
    python benchmarks/bench_gradcheck.py --depths 40 --directions 3

Each run checks the input and every parameter tensor of densenet_bc(depth, 12) on a float64 copy of the model,
batch 2 at 32x32, with ``directions`` random directions per tensor (two forwards each, one backward in all).
"""
import argparse
import time

import numpy as np

# -- settings (all overridable on the command line) ---------------------------------------------------------
depths = "40,100"
growth_rate = 12
batch = 2
size = 32
directions = 1
seed = 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depths", default=depths)
    p.add_argument("--growth-rate", type=int, default=growth_rate)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--size", type=int, default=size)
    p.add_argument("--directions", type=int, default=directions)
    p.add_argument("--seed", type=int, default=seed)
    a = p.parse_args()

    from numpy_densenet import densenet_bc, gradcheck
    for depth in (int(d) for d in a.depths.split(",") if d):
        model = densenet_bc(depth, a.growth_rate, seed=a.seed)
        x = np.random.default_rng(a.seed).standard_normal((a.batch, 3, a.size, a.size)).astype(np.float32)
        start = time.perf_counter()
        result = gradcheck(model, x, mode="directional", directions=a.directions, seed=a.seed)
        seconds = time.perf_counter() - start
        worst = max(row.max_rel_err for row in result.rows)
        print(f"densenet_bc({depth}, {a.growth_rate}), batch {a.batch}, {a.size}x{a.size}, float64 copy, "
              f"{a.directions} direction(s) per tensor, {len(result.rows)} tensors: {seconds:.1f} s, "
              f"passed={result.passed}, worst relative error {worst:.1e}", flush=True)


if __name__ == "__main__":
    main()
