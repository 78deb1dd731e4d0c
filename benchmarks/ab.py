"""Interleaved A/B timing of library snapshots: is a change faster on this shared, noisy machine?

    mkdir -p /tmp/nd_a /tmp/nd_b
    git archive HEAD~1 numpy_densenet | tar -x -C /tmp/nd_a && git rev-parse --short HEAD~1 > /tmp/nd_a/COMMIT
    git archive HEAD numpy_densenet | tar -x -C /tmp/nd_b && git rev-parse --short HEAD > /tmp/nd_b/COMMIT
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/ab.py /tmp/nd_a /tmp/nd_b --config d121 --rounds 6

Settings below are the defaults; every one can be overridden on the command line (--name value).

Each round runs every snapshot once, each run a fresh process (bench_train_step.py's worker) timing ``steps``
train steps (or eval forwards) after ``warmup``; the order of the snapshots alternates from round to round.
Reported per snapshot: the median and the min over the rounds of each run's median; for two snapshots also how
many rounds the first was faster in and the ratio of the medians. Runs on these machines move by 10-20 %
from minute to minute (other jobs share the cores and the memory bus), which is why single before/after runs
decided nothing here: a difference of a few percent needs six rounds or more, and one that wins only half
the rounds is noise.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import bench_train_step as bts

# ------------------------------------------------------------------------------------------------------------
# settings (override on the command line: --config bc100 --mode eval --rounds 8 ...)
config = "d121"          # bc<depth> (densenet_bc(depth, 12), batch 64 @ 32x32) or d121 (batch 8 @ 224x224)
mode = "train"           # train: forward + CrossEntropyLoss + backward; eval: forward in eval mode under no_grad
dtype = "float32"
rounds = 6
steps = 3                # timed steps per run (the run's median is its figure)
warmup = 1
batch = 0                # 0: the config's own batch
threads = 0              # 0: numpy's BLAS thread count (the library's own threads follow it)
json_out = ""
timeout = 3600           # seconds per run
# ------------------------------------------------------------------------------------------------------------


def summarise(srcs, runs):
    """Lines of the report, from runs = [(round, src, median seconds)]."""
    per = {s: [t for _, src, t in runs if src == s] for s in srcs}
    lines = [f"{s}: median {statistics.median(v):.3f} s, min {min(v):.3f} s over {len(v)} rounds "
             f"({' '.join(f'{t:.3f}' for t in v)})" for s, v in per.items() if v]
    if len(srcs) == 2 and per[srcs[0]] and per[srcs[1]]:
        a, b = srcs
        by_round = {}
        for r, s, t in runs:
            by_round.setdefault(r, {})[s] = t
        complete = [v for v in by_round.values() if a in v and b in v]
        wins = sum(v[a] < v[b] for v in complete)
        ratio = statistics.median(per[a]) / statistics.median(per[b])
        lines.append(f"{a} faster in {wins} of {len(complete)} rounds; ratio of medians {a} / {b} = {ratio:.3f}")
    return lines


def resources(srcs, details):
    """Lines of the report on what each snapshot's runs used: median CPU seconds per step (user + system, which
    move far less with the machine's load than wall time; train mode only), minor page faults per step, peak
    memory above the baseline, and the load averages the runs ended at."""
    lines = []
    for s in srcs:
        mine = [d for d in details if d["src"] == s]
        loads = [d["load"][0] for d in mine if d.get("load")]
        line = f"{s}: peak {statistics.median(d['delta_mb'] for d in mine):.0f} MB above baseline"
        if all(d.get("sys_s") is not None for d in mine):
            line += (f", CPU {statistics.median(d['cpu_s'] for d in mine):.3f} s/step (system "
                     f"{statistics.median(d['sys_s'] for d in mine):.3f}), "
                     f"{statistics.median(d['minor_faults'] for d in mine):.0f} minor faults/step")
        lines.append(line + (f", load average {min(loads):.1f}-{max(loads):.1f}" if loads else ""))
    return lines


def _commit(src):
    """The commit a snapshot was archived from, if its COMMIT file says (see "How to run" in README.md)."""
    try:
        with open(os.path.join(src, "COMMIT")) as f:
            return f.read().strip() or "?"
    except OSError:
        return "?"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("srcs", nargs="+", help="snapshot directories, each holding a numpy_densenet/ package")
    ap.add_argument("--config", default=config)
    ap.add_argument("--mode", choices=("train", "eval"), default=mode)
    ap.add_argument("--dtype", choices=("float32", "float64"), default=dtype)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--batch", type=int, default=batch)
    ap.add_argument("--threads", type=int, default=threads)
    ap.add_argument("--json", dest="json_out", default=json_out)
    ap.add_argument("--timeout", type=int, default=timeout)
    a = ap.parse_args(argv)
    srcs = [os.path.abspath(s) for s in a.srcs]
    for s in srcs:
        if not os.path.isfile(os.path.join(s, "numpy_densenet", "__init__.py")):
            raise SystemExit(f"ab.py: {s} holds no numpy_densenet/ package (make one with git archive, see --help)")
    if len(set(srcs)) != len(srcs):
        raise SystemExit("ab.py: the snapshot directories must differ")
    if a.rounds < 1 or a.steps < 1 or a.warmup < 0:
        raise SystemExit(f"ab.py: --rounds and --steps must be >= 1 and --warmup >= 0, got {a.rounds}, {a.steps}, "
                         f"{a.warmup}")
    env = bts.environment()
    a.nthreads = a.threads or (env["blas"].get("num_threads") or 1)
    env["threads"] = a.nthreads
    cfg = dict(bts.parse_config(a.config, a.batch), name=a.config)
    spec = bts.spec_for(cfg, "numpy", a.dtype, a.mode, a)
    bts.print_environment(env)
    print("# measured: the snapshots (the 'library' line above is only this checkout): " + ", ".join(
        f"{s} @ {_commit(s)}" for s in srcs))
    print(f"# {a.config} {a.mode} {a.dtype}, batch {cfg['batch']}: {a.rounds} rounds x {len(srcs)} snapshots, "
          f"{a.steps} steps after {a.warmup} warm-up per run, {a.nthreads} threads", flush=True)
    runs, details = [], []
    for r in range(a.rounds):
        order = srcs if r % 2 == 0 else srcs[::-1]
        for s in order:
            os.environ["NUMPY_DENSENET_SRC"] = s                  # the worker imports the library from s
            res = bts.run_spec(spec, a)
            if "error" in res:
                raise SystemExit(f"ab.py: the run of {s} failed: {res['error']}")
            if not os.path.realpath(res["library"]).startswith(os.path.realpath(s) + os.sep):
                raise SystemExit(f"ab.py: the run meant for {s} imported {res['library']}")
            runs.append((r, s, res["median_s"]))
            details.append(dict(round=r, src=s, median_s=res["median_s"], times=res["times"],
                                load=res.get("loadavg_after"), cpu_s=res.get("cpu_user_s", 0) + res.get("cpu_sys_s", 0),
                                sys_s=res.get("cpu_sys_s"), minor_faults=res.get("minor_faults"),
                                delta_mb=res["delta_mb"]))
            print(f"round {r + 1}/{a.rounds}  {s}: {res['median_s']:.3f} s", flush=True)
    print()
    summary = summarise(srcs, runs) + resources(srcs, details)
    for line in summary:
        print(line)
    if a.json_out:
        with open(a.json_out + ".tmp", "w") as f:
            json.dump(dict(env=env, args=vars(a), runs=details, summary=summary), f, indent=1)
        os.replace(a.json_out + ".tmp", a.json_out)
        print(f"wrote {a.json_out}")


if __name__ == "__main__":
    sys.exit(main())
