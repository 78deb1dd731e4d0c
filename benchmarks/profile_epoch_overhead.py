"""What an epoch of ``numpy-densenet train`` spends outside the training steps, item by item.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/profile_epoch_overhead.py
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/profile_epoch_overhead.py --depth 16 --profile

Settings below are the defaults; every one is a command-line option (--help).

Items, each timed (wall and CPU seconds, median of ``--repeats``) on the real data set through the library's own
functions: reading the data set (``load_dataset``), the validation split, the normalisation statistics, building
the run (``Run``: all of the above plus the model), one epoch of mini-batches alone (shuffle, augmentation,
normalisation: ``BatchIterator`` without the model), evaluating the validation and the test set
(``train.evaluate``), writing checkpoint.npz, best.npz and metrics.jsonl; and for scale, ``--steps`` training
steps, extrapolated to the epoch. ``--profile`` adds cProfile's top functions for the evaluation and the batches.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import statistics
import sys
import tempfile
import time

from common import environment, markdown_table, print_environment

# ------------------------------------------------------------------------------------------------------------
# settings
dataset = "fashion-mnist"
data_dir = ""           # "": the search path
model = "densenet_bc"
depth = 22
growth_rate = 12
batch_size = 64
augment = True
threads = 2
repeats = 3             # median of this many runs of each item
steps = 10              # training steps timed (after one warm-up) for the per-epoch comparison
profile = False         # cProfile's top functions of the evaluation and of an epoch of batches
# ------------------------------------------------------------------------------------------------------------

SETTINGS = ("dataset", "data_dir", "model", "depth", "growth_rate", "batch_size", "augment", "threads", "repeats",
            "steps", "profile")


def cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def timed(fn, repeats):
    """(median wall s, median CPU s, last result) of ``fn()`` over ``repeats`` calls."""
    walls, cpus, result = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), cpu_seconds()
        result = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(cpu_seconds() - c)
    return statistics.median(walls), statistics.median(cpus), result


def top_functions(fn, n=12):
    prof = cProfile.Profile()
    prof.runcall(fn)
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(n)
    return out.getvalue()


def items(a, run, tmp):
    """The (name, callable) pairs timed, each on the run's own data and model."""
    from numpy_densenet.data import channel_stats, load_dataset
    from numpy_densenet.data.splits import validation_split
    from numpy_densenet.io import save_npz
    from numpy_densenet.training import evaluate, write_metrics
    d, split = run.data, run.split

    def batches():
        for _ in run.batches:
            pass

    history = [dict(epoch=k, lr=0.1, train_loss=0.3, train_acc=0.9, val_loss=0.3, val_acc=0.9, test_loss=0.3,
                    test_acc=0.9, seconds=100.0) for k in range(1, 31)]
    return [
        ("load_dataset (read + check the files)", lambda: load_dataset(a.dataset, a.data_dir or None)),
        ("validation_split", lambda: validation_split(d, 0.1, 0)),
        ("channel_stats (training part)", lambda: channel_stats(split.x_train)),
        (f"an epoch of batches alone ({len(run.batches)} batches, augment={a.augment})", batches),
        (f"evaluate validation ({split.size} images)",
         lambda: evaluate(run.model, split.x_val, split.y_val, mean=run.mean, std=run.std)),
        (f"evaluate test ({len(d.y_test)} images)",
         lambda: evaluate(run.model, d.x_test, d.y_test, mean=run.mean, std=run.std)),
        ("checkpoint.npz", lambda: run.save_checkpoint(os.path.join(tmp, "checkpoint.npz"))),
        ("best.npz", lambda: save_npz(os.path.join(tmp, "best.npz"), {**run.model.state_dict(), **run.metadata()})),
        ("metrics.jsonl (30 rows)", lambda: write_metrics(os.path.join(tmp, "metrics.jsonl"), history)),
    ]


def train_steps(run, n):
    """Median wall / CPU seconds of one training step (the library's train_step) over ``n`` after a warm-up."""
    from numpy_densenet.training import train_step
    it = iter(run.batches)
    xb, yb = next(it)
    train_step(run.model, run.criterion, run.optimizer, xb, yb)
    walls, cpus = [], []
    for _ in range(n):
        xb, yb = next(it)
        w, c = time.perf_counter(), cpu_seconds()
        train_step(run.model, run.criterion, run.optimizer, xb, yb)
        walls.append(time.perf_counter() - w)
        cpus.append(cpu_seconds() - c)
    return statistics.median(walls), statistics.median(cpus)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for name in SETTINGS:
        default = globals()[name]
        kw = (dict(action=argparse.BooleanOptionalAction) if isinstance(default, bool) else dict(type=type(default)))
        ap.add_argument("--" + name.replace("_", "-"), dest=name, default=default, **kw)
    ap.add_argument("--src", default=None, help="import numpy_densenet from this snapshot folder")
    a = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits
    keep = threadpool_limits(a.threads)                                         # noqa: F841
    import numpy_densenet
    numpy_densenet.set_num_threads(a.threads)
    from numpy_densenet.training import Run, TrainConfig
    env = environment(a.threads)
    print_environment(env)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(dataset=a.dataset, data_dir=a.data_dir or None, model=a.model, depth=a.depth,
                          growth_rate=a.growth_rate, batch_size=a.batch_size, augment=a.augment, epochs=10,
                          out=os.path.join(tmp, "run"))
        wall, cpu, run = timed(lambda: Run(cfg, log=lambda *x: None), 1)
        rows = [["Run(config): load, split, stats, model (once per run)", f"{wall:.2f}", f"{cpu:.2f}"]]
        per_epoch = 0.0
        for name, fn in items(a, run, tmp):
            wall, cpu, _ = timed(fn, a.repeats)
            rows.append([name, f"{wall:.2f}", f"{cpu:.2f}"])
            if name.startswith(("an epoch", "evaluate", "checkpoint", "best", "metrics")):
                per_epoch += wall
        step_wall, step_cpu = train_steps(run, a.steps)
        n = len(run.batches)
        rows.append([f"training steps: {n} x {step_wall:.3f} s (median of {a.steps})", f"{n * step_wall:.1f}",
                     f"{n * step_cpu:.1f}"])
        print(markdown_table(["item", "wall s", "CPU s"], rows))
        print(f"\nper epoch outside the steps (batches, evaluation, files): {per_epoch:.1f} s, "
              f"{100 * per_epoch / (per_epoch + n * step_wall):.1f} % of an epoch")
        if a.profile:
            for name, fn in items(a, run, tmp):
                if name.startswith(("an epoch", "evaluate test")):
                    print(f"\n### cProfile: {name}\n")
                    print(top_functions(fn))


if __name__ == "__main__":
    sys.exit(main())
