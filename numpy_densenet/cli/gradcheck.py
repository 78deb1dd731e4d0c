"""``numpy-densenet gradcheck``: every layer type's (or tiny DenseNets') backward pass against finite differences."""
from __future__ import annotations

import time

import numpy as np

from ..gradcheck import MODES, executor_for, layer_cases, model_cases, run_case
from .common import UserError, nonneg_int, positive_int


def register(sub):
    """Add the ``gradcheck`` subcommand."""
    p = sub.add_parser("gradcheck", help="check every layer's (or a tiny DenseNet's) backward pass",
                       description="Compare every layer type's hand-written backward pass (or, with --model, whole "
                                   "tiny DenseNets') with finite differences in float64, and print one row per "
                                   "tensor: worst error, where, analytic against numeric. Exit code 1 on a failure.")
    p.add_argument("--model", action="store_true", help="check whole tiny DenseNets instead of single layers")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="full (every coordinate; default for layers), sampled, directional (default for --model)")
    p.add_argument("--seed", type=nonneg_int, default=0,
                   help="seed of the inputs, weights and probe directions (default 0)")
    p.add_argument("--thorough", action="store_true",
                   help="also the large-input paths that cost more (--model: a dense block whose backward splits "
                        "its concatenation adds between threads)")
    p.add_argument("--float32", action="store_true",
                   help="also run each module in float32 and compare its gradients with float64's at the same "
                        "point (float32 rows reported separately)")
    p.add_argument("--locate", action="store_true",
                   help="when a check fails, check every submodule alone on the inputs it received in the "
                        "model's forward and name the innermost wrong ones first (costs nothing on a pass)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=None, metavar="N",
                       help="evaluate the probes on N local worker processes (one thread each); same results")
    where.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="evaluate the probes on a running Dask scheduler's workers, e.g. tcp://host:8786 "
                            "(needs dask[distributed])")
    p.set_defaults(func=cmd_gradcheck)


def cmd_gradcheck(args):
    """Check every case's backward pass; exit status 1 when one fails."""
    rng = np.random.default_rng(args.seed)
    cases = (model_cases if args.model else layer_cases)(rng, thorough=args.thorough)
    mode = args.mode or ("directional" if args.model else "full")
    failed = []
    start = time.perf_counter()
    try:
        executor = executor_for(args.workers, args.scheduler)
    except (ImportError, ValueError, OSError) as e:
        raise UserError(str(e)) from None
    with executor as pool:                    # None: serial; else the probes run on the pool's workers
        for case in cases:
            t0 = time.perf_counter()
            result = run_case(case, mode=mode, seed=args.seed, executor=pool, float32=args.float32,
                              locate=args.locate)
            extra = ", ".join(f"{k}={v}" for k, v in case.options.items())
            print(f"== {case.label}{f' ({extra})' if extra else ''}  ({time.perf_counter() - t0:.2f} s)")
            print(result.table())
            print()
            if not result.passed:
                culprits = f" (in {', '.join(repr(c) for c in result.culprits)})" if result.culprits else ""
                failed.append(case.label + culprits)
    what = "models" if args.model else "layers"
    print(f"{len(cases) - len(failed)} passed, {len(failed)} failed: {len(cases)} {what} checked in float64"
          f"{' and float32' if args.float32 else ''}, "
          f"mode={mode}, in {time.perf_counter() - start:.1f} s")
    if failed:
        print("failed: " + ", ".join(failed))
        return 1
    return 0
