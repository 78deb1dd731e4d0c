"""Train-step time, images/s and peak memory of numpy_densenet's DenseNets, with PyTorch's CPU build side by side.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_train_step.py                 # full run
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_train_step.py --configs bc100 --steps 1 --batch 8
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_train_step.py --depths 100,190,250 --configs ""
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_train_step.py --profile --configs bc100

Settings below are the defaults; every one can be overridden on the command line (--name value).

What is measured
----------------
* train step = forward, CrossEntropyLoss, backward (``loss = crit(model.forward(x), y); model.backward(
  crit.backward())``; torch: ``F.cross_entropy(model(x), y).backward()``); ``zero_grad`` runs untimed before
  each step. Time = median of ``steps`` steps after ``warmup`` steps; images/s = batch / that median.
* eval forward = ``model.eval(); model.forward(x)`` under ``numpy_densenet.nn.no_grad()`` where the library has it
  (torch: under ``torch.no_grad()``), same statistics.
* memory: every (framework, config, dtype, mode) runs in a fresh subprocess. ``baseline`` is ru_maxrss
  (resource.getrusage(RUSAGE_SELF)) after the imports, the model and the input batch are created; ``peak`` is
  ru_maxrss after the last step; ``delta = peak - baseline`` is what the steps themselves needed.
* torch: the torchvision DenseNet re-created from torch.nn in benchmarks/torch_densenet.py, default and
  ``memory_efficient=True`` (checkpointed concat->norm1->relu1->conv1), with torch.set_num_threads equal to
  numpy's BLAS thread count.
* --depths: peak memory of densenet_bc(depth, 12) at batch 64 for each depth, one train step each, reported
  against a least-squares line in depth and against naive quadratic growth (every layer storing its own
  concatenated input), both anchored at the first depth.
* --rounds R: every measurement R times, numpy and torch processes interleaved (the order reversed every other
  round); time cells are the median of the R run medians, and a table lists each round's numpy/torch ratio
  (two runs back to back) with their median, the figure least exposed to the machine's drift.
* --profile: one numpy train step with each leaf layer's forward/backward timed (wrappers set on the model's
  instances; library code untouched), grouped by operation, plus torch.profiler's top ops for the same step.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time

from common import environment, fmt, markdown_table, print_environment

# ------------------------------------------------------------------------------------------------------------
# settings (override on the command line: --configs bc100 --steps 1 --batch 8 ...)
configs = "bc100,d121"   # bc<depth>: densenet_bc(depth, 12) batch 64 @ 32x32; d121: densenet121 batch 8 @ 224x224
dtypes = "float32,float64"
steps = 3                # timed steps (median)
warmup = 1               # untimed steps first
batch = 0                # 0: the config's own batch (64 for bc, 8 for d121)
eval_forward = True      # also time an eval-mode forward
torch = "auto"           # auto: on when torch is importable; on / off
torch_me = True          # also run torch with memory_efficient=True (train step only)
numpy_me = False         # depth study: also numpy_densenet's memory_efficient=True, where the library has it
threads = 0              # 0: numpy's BLAS thread count; torch gets the same
tier = "fast"            # fast: DenseNet(..., fast=True), the default; plain: fast=False, the readable tier
depths = ""              # e.g. 100,190,250: memory-vs-depth study of densenet_bc(depth, 12)
depth_batch = 64
profile = False          # per-operation profile of one train step of each config (float32)
rounds = 1               # >1: run every measurement this many times, numpy and torch interleaved (order reversed
                         # every other round); cells show the median of the rounds' medians, and per-round
                         # numpy/torch ratios are listed (paired in time, so less exposed to the machine's drift)
json_out = ""            # write all results to this JSON file
timeout = 7200           # seconds per subprocess
# ------------------------------------------------------------------------------------------------------------

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_config(name, batch_override=0):
    m = re.fullmatch(r"bc(\d+)", name)
    if m:
        return dict(model="densenet_bc", depth=int(m.group(1)), batch=batch_override or 64, size=32, classes=10)
    if name == "d121":
        return dict(model="densenet121", depth=121, batch=batch_override or 8, size=224, classes=1000)
    raise SystemExit(f"unknown config {name!r}: use bc<depth> (e.g. bc100) or d121")


def maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0              # kB on Linux


# -- workers: one configuration in a fresh process ------------------------------------------------------------------
def numpy_worker(spec):
    import numpy as np
    limiter = None
    if spec["threads"]:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(spec["threads"])                                # noqa: F841 (kept alive)
    from numpy_densenet import densenet121, densenet_bc              # the top-level names: every snapshot has them
    from numpy_densenet import nn as nd_nn
    from numpy_densenet.nn import CrossEntropyLoss
    import numpy_densenet
    own = getattr(numpy_densenet, "set_num_threads", getattr(nd_nn, "set_num_threads", None))  # newer / older
    if spec["threads"] and own is not None:                               # the library's own threads
        own(spec["threads"])
    dt = np.dtype(spec["dtype"])
    kw = {"memory_efficient": True} if spec.get("memory_efficient") else {}   # only libraries that have it
    if spec.get("tier", "fast") == "plain":
        kw["fast"] = False                                                  # the plain tier (since issue 11)
    if spec["model"] == "densenet_bc":
        model = densenet_bc(spec["depth"], 12, dtype=dt, seed=0, **kw)
    else:
        model = densenet121(dtype=dt, seed=0, **kw)
    rng = np.random.default_rng(0)
    B, S = spec["batch"], spec["size"]
    x = rng.standard_normal((B, 3, S, S)).astype(dt)
    y = rng.integers(0, spec["classes"], B)
    crit = CrossEntropyLoss()
    baseline = maxrss_mb()
    prof = Profiler(model, crit) if spec.get("profile") else None
    times = []
    ru0 = None
    if spec["mode"] == "train":
        model.train()
        for i in range(spec["warmup"] + spec["steps"]):
            model.zero_grad()
            if i == spec["warmup"]:
                ru0 = resource.getrusage(resource.RUSAGE_SELF)
            if prof is not None and i >= spec["warmup"]:
                prof.on = True
            t0 = time.perf_counter()
            loss = crit(model.forward(x), y)
            dlogits = crit.backward()
            model.backward(dlogits)
            times.append(time.perf_counter() - t0)
            if prof is not None and i >= spec["warmup"]:
                prof.stop(times[-1])
        assert np.isfinite(float(loss))
    else:
        model.eval()
        import contextlib

        import numpy_densenet.nn as ndnn
        inference = getattr(ndnn, "no_grad", contextlib.nullcontext)    # older snapshots have no no_grad()
        for _ in range(spec["warmup"] + spec["steps"]):
            t0 = time.perf_counter()
            with inference():
                model.forward(x)
            times.append(time.perf_counter() - t0)
    import numpy_densenet
    out = dict(times=times[spec["warmup"]:], baseline_mb=baseline, peak_mb=maxrss_mb(),
               library=numpy_densenet.__file__)
    if ru0 is not None:                                   # CPU seconds per timed step: user (both threads), system
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        n = max(spec["steps"], 1)
        out.update(cpu_user_s=(ru1.ru_utime - ru0.ru_utime) / n, cpu_sys_s=(ru1.ru_stime - ru0.ru_stime) / n,
                   minor_faults=(ru1.ru_minflt - ru0.ru_minflt) // n)
    if prof is not None:
        out["profile"] = prof.table()
    return out


def torch_worker(spec):
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, HERE)
    import torch_densenet
    torch.set_num_threads(spec["threads"])
    tdt = {"float32": torch.float32, "float64": torch.float64}[spec["dtype"]]
    me = spec.get("memory_efficient", False)
    torch.manual_seed(0)
    if spec["model"] == "densenet_bc":
        model = torch_densenet.densenet_bc(spec["depth"], 12, memory_efficient=me)
    else:
        model = torch_densenet.densenet121(memory_efficient=me)
    model = model.to(tdt)
    B, S = spec["batch"], spec["size"]
    x = torch.randn(B, 3, S, S, dtype=tdt)
    y = torch.randint(0, spec["classes"], (B,))
    baseline = maxrss_mb()
    times = []
    prof_rows = None
    if spec["mode"] == "train":
        model.train()
        for i in range(spec["warmup"] + spec["steps"]):
            model.zero_grad()
            profiling = spec.get("profile") and i == spec["warmup"]
            if profiling:
                from torch.profiler import ProfilerActivity, profile
                p = profile(activities=[ProfilerActivity.CPU])
                p.__enter__()
            t0 = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            times.append(time.perf_counter() - t0)
            if profiling:
                p.__exit__(None, None, None)
                ka = sorted(p.key_averages(), key=lambda e: -e.self_cpu_time_total)
                prof_rows = [dict(op=e.key, self_ms=e.self_cpu_time_total / 1e3, calls=e.count) for e in ka[:15]]
                prof_rows.append(dict(op="(profiled step wall time)", self_ms=times[-1] * 1e3, calls=1))
    else:
        model.eval()
        with torch.no_grad():
            for _ in range(spec["warmup"] + spec["steps"]):
                t0 = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - t0)
    out = dict(times=times[spec["warmup"]:], baseline_mb=baseline, peak_mb=maxrss_mb(),
               torch_threads=torch.get_num_threads())
    if prof_rows is not None:
        out["profile"] = prof_rows
    return out


class Profiler:
    """Times every leaf layer's forward/backward of one numpy train step, by category (instance wrappers only)."""

    def __init__(self, model, loss=None):
        try:                                             # the fast tier's conv module (since issue 11)
            import numpy_densenet.fast.conv as conv_mod
            from numpy_densenet.fast import ChannelMajor as SpatialModule
        except ImportError:                              # older snapshots
            import numpy_densenet.nn.conv as conv_mod
            from numpy_densenet.nn.module import SpatialModule
        self.model, self.totals, self.on, self.phase = model, {}, False, "forward"
        self.step, self.nsteps = 0.0, 0                  # summed over the profiled steps; table() averages
        for _, m in model.named_modules():
            if m._modules:                                       # containers: their time is their children's
                continue
            cat = self.category(m)
            names = ("forward_cnhw", "backward_cnhw") if isinstance(m, SpatialModule) else ("forward", "backward")
            for meth, phase in zip(names, ("forward", "backward")):
                object.__setattr__(m, meth, self.wrap(getattr(m, meth), cat, phase))
        if loss is not None:
            for meth, phase in (("forward", "forward"), ("backward", "backward")):
                object.__setattr__(loss, meth, self.wrap(getattr(loss, meth), "CrossEntropyLoss", phase))
        # im2col / col2im are module functions of numpy_densenet.nn.conv: rebinding them there (in this process
        # only) splits conv time into patch-matrix building and the rest (the GEMMs).
        for fname in ("im2col", "col2im"):
            if hasattr(conv_mod, fname):
                setattr(conv_mod, fname, self.wrap(getattr(conv_mod, fname), f"  of which {fname}", None))

    @staticmethod
    def category(m):
        name = type(m).__name__
        if name == "Conv2d":
            k = m.kernel_size
            return f"Conv2d {k[0]}x{k[1]}" + (f" stride {m.stride[0]}" if m.stride != (1, 1) else "")
        return name

    def wrap(self, fn, cat, phase):
        def wrapper(*args, **kwargs):
            if not self.on:
                return fn(*args, **kwargs)
            ph = phase or self.phase                 # helpers (im2col) count in the phase of their caller
            if phase:
                self.phase = phase
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                key = (cat, ph)
                t, n = self.totals.get(key, (0.0, 0))
                self.totals[key] = (t + time.perf_counter() - t0, n + 1)
        return wrapper

    def stop(self, step_time):
        self.on = False
        self.step += step_time
        self.nsteps += 1

    def table(self):
        """Per-step averages over the profiled steps (calls are per step too)."""
        cats = sorted({c for c, _ in self.totals}, key=lambda c: (c.startswith("  "), c))
        rows = []
        leaf_total = 0.0
        k = max(self.nsteps, 1)
        step = self.step / k
        for c in cats:
            f, nf = self.totals.get((c, "forward"), (0.0, 0))
            b, nb = self.totals.get((c, "backward"), (0.0, 0))
            f, b, nf, nb = f / k, b / k, nf // k, nb // k
            if not c.startswith("  "):
                leaf_total += f + b
            rows.append(dict(op=c, fwd_s=f, bwd_s=b, calls=nf + nb))
        rows.append(dict(op="other (block buffer copies, concat-backward adds, glue)", fwd_s=None, bwd_s=None,
                         total_s=step - leaf_total, calls=None))
        rows.append(dict(op=f"train step (wall, mean of {self.nsteps})", fwd_s=None, bwd_s=None, total_s=step,
                         calls=None))
        return rows


def worker_main(spec):
    fn = numpy_worker if spec["framework"] == "numpy" else torch_worker
    out = fn(spec)
    print("RESULT " + json.dumps(out), flush=True)


# -- parent: spawns one subprocess per measurement -------------------------------------------------------------------
def run_spec(spec, a):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
    if p.returncode != 0:
        print(p.stdout[-2000:], p.stderr[-4000:], file=sys.stderr)
        return dict(spec=spec, error=(p.stderr.strip().splitlines() or ["?"])[-1])
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    res["spec"] = spec
    res["median_s"] = statistics.median(res["times"])
    res["min_s"] = min(res["times"])
    res["delta_mb"] = res["peak_mb"] - res["baseline_mb"]
    res["wall_s"] = time.time() - t0
    res["loadavg_after"] = os.getloadavg()
    tag = f"{spec['framework']}{' me' if spec.get('memory_efficient') else ''} {spec['model']}({spec['depth']}) " \
          f"b{spec['batch']} {spec['dtype']} {spec['mode']}"
    cpu = (f", cpu/step user {res['cpu_user_s']:.2f}s sys {res['cpu_sys_s']:.2f}s, {res['minor_faults']} minor faults"
           if "cpu_user_s" in res else "")
    print(f"  {tag}: median {res['median_s']:.3f}s (min {res['min_s']:.3f}s, {len(res['times'])} steps){cpu}, peak "
          f"{res['peak_mb']:.0f} MB, baseline {res['baseline_mb']:.0f} MB, delta {res['delta_mb']:.0f} MB, "
          f"load {res['loadavg_after'][0]:.1f}", file=sys.stderr, flush=True)
    return res


def spec_for(cfg, framework, dtype, mode, a, **extra):
    s = dict(cfg, framework=framework, dtype=dtype, mode=mode, steps=a.steps, warmup=a.warmup, threads=a.nthreads,
             tier=getattr(a, "tier", "fast"))
    s.update(extra)
    return s


def main_table(results, use_torch, use_me):
    def get(cfg, dtype, fw, mode, me=False):
        for r in results:
            s = r["spec"]
            if (s["name"], s["dtype"], s["framework"], s["mode"], bool(s.get("memory_efficient"))) == \
                    (cfg, dtype, fw, mode, me) and "error" not in r:
                return r
        return None

    keys = []
    for r in results:
        k = (r["spec"]["name"], r["spec"]["dtype"], r["spec"]["batch"])
        if k not in keys:
            keys.append(k)
    trows, mrows = [], []
    for cfg, dtype, B in keys:
        n_tr, n_ev = get(cfg, dtype, "numpy", "train"), get(cfg, dtype, "numpy", "eval")
        t_tr, t_ev = get(cfg, dtype, "torch", "train"), get(cfg, dtype, "torch", "eval")
        m_tr = get(cfg, dtype, "torch", "train", True)
        med = lambda r: r["median_s"] if r else None
        ips = lambda r: B / r["median_s"] if r else None
        ratio = lambda a_, b_: f"{a_['median_s'] / b_['median_s']:.2f}" if a_ and b_ else "-"
        row = [cfg, B, dtype, fmt(med(n_tr), 2), fmt(ips(n_tr), 1)]
        if use_torch:
            row += [fmt(med(t_tr), 2), fmt(ips(t_tr), 1), ratio(n_tr, t_tr)]
            if use_me:
                row += [fmt(med(m_tr), 2), ratio(n_tr, m_tr)]
        row += [fmt(med(n_ev), 2)]
        if use_torch:
            row += [fmt(med(t_ev), 2), ratio(n_ev, t_ev)]
        trows.append(row)
        mem = lambda r: f"{r['peak_mb']:.0f} / {r['baseline_mb']:.0f} / {r['delta_mb']:.0f}" if r else "-"
        mrow = [cfg, B, dtype, mem(n_tr)]
        if use_torch:
            mrow += [mem(t_tr)] + ([mem(m_tr)] if use_me else []) + \
                    [f"{n_tr['delta_mb'] / t_tr['delta_mb']:.2f}" if n_tr and t_tr else "-"]
        mrow += [mem(n_ev)] + ([mem(t_ev)] if use_torch else [])
        mrows.append(mrow)
    th = ["config", "batch", "dtype", "numpy train s", "numpy img/s"]
    if use_torch:
        th += ["torch train s", "torch img/s", "train numpy/torch"]
        if use_me:
            th += ["torch mem-eff train s", "numpy/torch mem-eff"]
    th += ["numpy eval fwd s"] + (["torch eval fwd s", "eval numpy/torch"] if use_torch else [])
    mh = ["config", "batch", "dtype", "numpy train peak/base/delta MB"]
    if use_torch:
        mh += ["torch train peak/base/delta MB"] + (["torch mem-eff peak/base/delta MB"] if use_me else []) + \
              ["train delta numpy/torch"]
    mh += ["numpy eval peak/base/delta MB"] + (["torch eval peak/base/delta MB"] if use_torch else [])
    return markdown_table(th, trows), markdown_table(mh, mrows)


def merge_rounds(results):
    """One result from the runs of one measurement in several rounds: median of the rounds' medians, min of
    all steps, the highest peak memory; each round's own result is kept under "rounds"."""
    ok = [r for r in results if "error" not in r]
    if len(results) == 1 or not ok:
        return results[0]
    merged = dict(max(ok, key=lambda r: r["peak_mb"]))              # memory fields of the highest peak
    merged.update(times=[t for r in ok for t in r["times"]],
                  median_s=statistics.median(r["median_s"] for r in ok), min_s=min(r["min_s"] for r in ok),
                  rounds=[{k: v for k, v in r.items() if k != "spec"} for r in results])
    return merged


def round_ratio_table(results):
    """numpy/torch ratio of each round's medians, per (config, dtype, mode), for runs with rounds."""
    rows = []
    for n in results:
        s = n["spec"]
        if s["framework"] != "numpy" or "rounds" not in n:
            continue
        for t in results:
            ts = t["spec"]
            if ts["framework"] == "torch" and not ts.get("memory_efficient") and "rounds" in t and \
                    (ts["name"], ts["dtype"], ts["mode"]) == (s["name"], s["dtype"], s["mode"]):
                ratios = [a_["median_s"] / b_["median_s"] for a_, b_ in zip(n["rounds"], t["rounds"])
                          if "median_s" in a_ and "median_s" in b_]
                if ratios:
                    rows.append([s["name"], s["dtype"], s["mode"], " ".join(f"{x:.2f}" for x in ratios),
                                 f"{statistics.median(ratios):.2f}"])
    return markdown_table(["config", "dtype", "mode", "numpy/torch per round", "median"], rows)


def feature_elements(depth, k=12, size=32):
    """(linear, naive) feature-map element counts per image of densenet_bc(depth, k).

    linear: every feature map stored once (the block buffers: sum over blocks of (k0 + n*k) * H*W);
    naive: every dense layer stores its own concatenated input (sum over layers of (k0 + l*k) * H*W), quadratic.
    """
    n = (depth - 4) // 6
    k0, hw, lin, naive = 2 * k, size * size, 0, 0
    for b in range(3):
        lin += (k0 + n * k) * hw
        naive += sum(k0 + l * k for l in range(n)) * hw
        k0 = (k0 + n * k) // 2
        hw //= 4
    return lin, naive


def depth_study(a, use_torch):
    ds = [int(d) for d in a.depths.split(",") if d]
    frameworks = [("numpy", False)] + ([("numpy", True)] if a.numpy_me else []) + \
        ([("torch", False)] + ([("torch", True)] if a.torch_me else []) if use_torch else [])
    res = []
    for d in ds:
        for fw, me in frameworks:
            cfg = dict(model="densenet_bc", depth=d, batch=a.depth_batch, size=32, classes=10, name=f"bc{d}")
            spec = dict(cfg, framework=fw, dtype="float32", mode="train", steps=1, warmup=0, threads=a.nthreads,
                        memory_efficient=me)
            res.append(run_spec(spec, a))
    rows = []
    for fw, me in frameworks:
        pts = [(r["spec"]["depth"], r["delta_mb"], r["median_s"]) for r in res
               if r["spec"]["framework"] == fw and bool(r["spec"].get("memory_efficient")) == me and "error" not in r]
        if not pts:
            continue
        xs = [p[0] for p in pts]
        ysv = [p[1] for p in pts]
        n = len(pts)
        mx, my = sum(xs) / n, sum(ysv) / n
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ysv)) / sxx if sxx else 0.0
        icpt = my - slope * mx
        d0, m0 = pts[0][0], pts[0][1]
        lin0, naive0 = feature_elements(d0)
        label = f"{fw}{' mem-eff' if me else ''}"
        for d, m, t in pts:
            lin, naive = feature_elements(d)
            rows.append([label, d, (d - 4) // 6 * 3, f"{m:.0f}", f"{slope * d + icpt:.0f}", f"{m0 * d / d0:.0f}",
                         f"{m0 * lin / lin0:.0f}", f"{m0 * naive / naive0:.0f}", f"{t:.1f}"])
        rows.append([label, "fit", "", "", f"{slope:.1f} MB/depth {icpt:+.0f} MB", "", "", "", ""])
    table = markdown_table(["framework", "depth", "dense layers", "measured delta MB", "least-squares line MB",
                            "proportional to depth MB", "linear in stored features MB",
                            "naive quadratic MB", "step s"], rows)
    return res, table


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--configs", default=configs, help="comma list of bc<depth> and d121 ('' for none)")
    ap.add_argument("--dtypes", default=dtypes)
    ap.add_argument("--steps", type=int, default=steps)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--batch", type=int, default=batch, help="override every config's batch (0: its own)")
    ap.add_argument("--eval", dest="eval_forward", action="store_true", default=eval_forward)
    ap.add_argument("--no-eval", dest="eval_forward", action="store_false")
    ap.add_argument("--torch", choices=("auto", "on", "off"), default=torch)
    ap.add_argument("--no-torch", dest="torch", action="store_const", const="off")
    ap.add_argument("--torch-me", dest="torch_me", action="store_true", default=torch_me)
    ap.add_argument("--no-torch-me", dest="torch_me", action="store_false")
    ap.add_argument("--numpy-me", action="store_true", default=numpy_me,
                    help="depth study: also numpy_densenet with memory_efficient=True (libraries that have it)")
    ap.add_argument("--threads", type=int, default=threads)
    ap.add_argument("--tier", choices=("fast", "plain"), default=tier,
                    help="numpy_densenet's tier: fast (default) or plain (DenseNet(..., fast=False))")
    ap.add_argument("--depths", default=depths)
    ap.add_argument("--depth-batch", type=int, default=depth_batch)
    ap.add_argument("--profile", action="store_true", default=profile)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--json", dest="json_out", default=json_out)
    ap.add_argument("--src", default="", help="import numpy_densenet from this directory (a snapshot), see common.py")
    ap.add_argument("--timeout", type=int, default=timeout)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    if a.worker:
        return worker_main(json.loads(a.worker))
    env = environment()
    a.nthreads = a.threads or (env["blas"].get("num_threads") or 1)
    env["threads"] = a.nthreads
    use_torch = a.torch != "off"
    if use_torch:
        try:
            import torch as _torch  # noqa: F401
        except ImportError:
            if a.torch == "on":
                raise
            use_torch = False
    print_environment(env)
    print(f"# steps {a.steps} after {a.warmup} warm-up; threads {a.nthreads}; torch {use_torch}"
          f"{' (+ memory_efficient)' if use_torch and a.torch_me else ''}; one subprocess per measurement")
    out = dict(env=env, args={k: v for k, v in vars(a).items() if k != "worker"}, results=[], depth=[], profile=[])
    cfg_names = [c for c in a.configs.split(",") if c]
    dts = [d for d in a.dtypes.split(",") if d]
    for name in cfg_names:
        cfg = dict(parse_config(name, a.batch), name=name)
        for dt in dts:
            specs = [spec_for(cfg, "numpy", dt, "train", a)]
            if use_torch:
                specs.append(spec_for(cfg, "torch", dt, "train", a))
                if a.torch_me:
                    specs.append(spec_for(cfg, "torch", dt, "train", a, memory_efficient=True))
            if a.eval_forward:
                specs.append(spec_for(cfg, "numpy", dt, "eval", a))
                if use_torch:
                    specs.append(spec_for(cfg, "torch", dt, "eval", a))
            runs = [[] for _ in specs]
            for r in range(max(a.rounds, 1)):
                order = list(range(len(specs))) if r % 2 == 0 else list(reversed(range(len(specs))))
                for i in order:
                    runs[i].append(run_spec(specs[i], a))
            out["results"] += [merge_rounds(rs) for rs in runs]
    if out["results"]:
        t_table, m_table = main_table(out["results"], use_torch, a.torch_me)
        print("\nTrain step (forward + CrossEntropyLoss + backward) and eval forward, median seconds"
              f"{f' (median of {a.rounds} rounds)' if a.rounds > 1 else ''}:\n")
        print(t_table)
        if a.rounds > 1 and use_torch:
            print("\nnumpy/torch per round (each round's two runs back to back), and their median:\n")
            print(round_ratio_table(out["results"]))
        print("\nPeak RSS (ru_maxrss) / baseline after imports+model+batch / delta, MB; one process per cell:\n")
        print(m_table)
    if a.profile:
        for name in cfg_names:
            cfg = dict(parse_config(name, a.batch), name=name)
            pr = run_spec(spec_for(cfg, "numpy", "float32", "train", a, profile=True), a)
            out["profile"].append(pr)
            if "error" in pr:
                continue
            rows = []
            step = pr["profile"][-1]["total_s"]
            for r in pr["profile"]:
                tot = r.get("total_s", (r["fwd_s"] or 0) + (r["bwd_s"] or 0))
                rows.append([r["op"], fmt(r["fwd_s"] * 1e3, 0) if r["fwd_s"] is not None else "",
                             fmt(r["bwd_s"] * 1e3, 0) if r["bwd_s"] is not None else "",
                             fmt(tot * 1e3, 0), f"{100 * tot / step:.1f}%", r["calls"] if r["calls"] else ""])
            print(f"\nnumpy per-operation profile, mean of {a.steps} train steps of {name} float32 batch {cfg['batch']}, "
                  f"library {env['git']['commit']}{' (dirty)' if env['git']['library_dirty'] else ''}:\n")
            print(markdown_table(["operation", "forward ms", "backward ms", "total ms", "share of step", "calls"],
                                 rows))
            if use_torch:
                tp = run_spec(spec_for(cfg, "torch", "float32", "train", a, steps=1, profile=True), a)
                out["profile"].append(tp)
                if "error" not in tp:
                    print(f"\ntorch.profiler top ops (self CPU), same step ({name} float32):\n")
                    print(markdown_table(["op", "self ms", "calls"],
                                         [[r["op"], fmt(r["self_ms"], 0), r["calls"]] for r in tp["profile"]]))
    if a.depths:
        out["depth"], table = depth_study(a, use_torch)
        print(f"\nMemory vs depth, densenet_bc(depth, 12), batch {a.depth_batch}, float32, one train step; delta ="
              f" peak - baseline RSS. Predictions anchored at the first depth:\n")
        print(table)
    env["git_end"] = environment()["git"]
    env["loadavg_end"] = os.getloadavg()
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(out, f, indent=1)
        print(f"\nwrote {a.json_out}")


if __name__ == "__main__":
    main()
