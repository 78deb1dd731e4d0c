"""Time ``gradcheck(model, x, locate=True)`` on a DenseNet with one wrong layer, against one whole-model check.

    python benchmarks/bench_locate.py                                    # densenet_bc(40, 12), directional
    python benchmarks/bench_locate.py --depth 40 --tier plain --rounds 2
    python benchmarks/bench_locate.py --unlocated                        # also the failing check without locate

Each round runs, in this order, in one process on one thread (``numpy_densenet.set_num_threads(1)``, OpenBLAS on
one thread): the whole-model check of the correct model (what checking it once costs), then the same model with
one planted bug, a convolution in the second dense block whose input gradient is 0.1 % too large, checked with
``locate=True`` (and with ``--unlocated``, without: its failing directions are then located coordinate by
coordinate in every failing tensor). The located failure's first part, the failing whole-model check whose
failing directions are not located coordinate by coordinate, is also timed alone: the rest is the locating.
Wall and CPU seconds (user + system of this process) are printed per run, with the load average, and the
culprits found.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import use_src  # noqa: E402,F401  (honours --src before numpy_densenet is imported)

import numpy_densenet  # noqa: E402
from numpy_densenet import densenet_bc, fast, gradcheck, nn  # noqa: E402


class WrongFastConv(fast.Conv2d):
    """The planted bug (fast tier): the input gradient 0.1 % too large."""

    def backward_cnhw(self, dout, *args, **kwargs):
        return super().backward_cnhw(dout, *args, **kwargs) * 1.001


class WrongConv(nn.Conv2d):
    """The planted bug (plain tier)."""

    def backward(self, dout):
        return super().backward(dout) * 1.001


def planted(model, tier):
    """``model`` with its second block's middle layer's first convolution made wrong; returns its name."""
    block = model.features.denseblock2
    layer = block.layers()[len(block.layers()) // 2]
    layer.conv1.__class__ = WrongFastConv if tier == "fast" else WrongConv
    return next(name for name, m in model.named_modules() if m is layer.conv1)


def timed(label, fn):
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"{label}: wall {wall:.1f} s, CPU {cpu:.1f} s, load average {load:.1f} -> {os.getloadavg()[0]:.1f}; "
          f"passed={result.passed}" + (f", culprits {result.culprits}" if result.culprits else ""), flush=True)
    return dict(label=label, wall=wall, cpu=cpu, load=[load, os.getloadavg()[0]], passed=result.passed,
                culprits=result.culprits, located=len(result.located))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--src", help="import numpy_densenet from this folder (a snapshot)")
    p.add_argument("--depth", type=int, default=40)
    p.add_argument("--growth-rate", type=int, default=12)
    p.add_argument("--tier", choices=("fast", "plain"), default="fast")
    p.add_argument("--mode", default="directional")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--unlocated", action="store_true", help="also time the failing check without locate")
    p.add_argument("--json", help="write the runs to this file")
    a = p.parse_args()
    numpy_densenet.set_num_threads(1)
    x = np.random.default_rng(0).standard_normal((a.batch, 3, a.size, a.size))
    runs = []
    for r in range(a.rounds):
        model = densenet_bc(a.depth, a.growth_rate, num_classes=10, seed=0, fast=a.tier == "fast")
        runs.append(timed(f"round {r}: whole-model check, correct model", lambda: gradcheck(model, x, mode=a.mode)))
        name = planted(model, a.tier)
        print(f"planted: {name}", flush=True)
        runs.append(timed(f"round {r}: located failure (locate=True)",
                          lambda: gradcheck(model, x, mode=a.mode, locate=True)))
        runs.append(timed(f"round {r}: its first part alone, the failing whole-model check (locate_samples=0)",
                          lambda: gradcheck(model, x, mode=a.mode, locate_samples=0)))
        if a.unlocated:
            runs.append(timed(f"round {r}: failing check without locate",
                              lambda: gradcheck(model, x, mode=a.mode)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(args=vars(a), runs=runs), f, indent=1)


if __name__ == "__main__":
    main()
