"""Time to accuracy: the whole training job in numpy_densenet and in PyTorch's CPU build, epoch by epoch.

    E="env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE"
    $E python benchmarks/bench_time_to_accuracy.py --src /tmp/nd_head --json benchmarks/results/tta.json
    $E python benchmarks/bench_time_to_accuracy.py --depth 16 --growth-rate 8 --epochs 3 --rounds 2
    $E python benchmarks/bench_time_to_accuracy.py --dataset digits --epochs 1 --limit 300 --depth 10 \\
        --growth-rate 4                                                                  # seconds-long smoke run

Settings below are the defaults; every one is a command-line option (--name value; --help lists them).

What is measured
----------------
Each library trains the same model with the same recipe in its own fresh process (``--rounds R`` repeats the pair,
the order reversed every other round, so numpy and torch alternate and share the machine's drift); the whole run
of ``--epochs`` epochs is one process, timed from the worker's first line (before the library is imported) to the
end of each epoch's evaluation and checkpoint: imports, reading the IDX files, normalisation statistics, the
training steps, evaluating the validation and test sets and writing the checkpoint are all inside.

* numpy_densenet: its own training loop, ``numpy_densenet.training.train(TrainConfig(...))``, exactly what
  ``numpy-densenet train`` runs (checkpoint.npz, best.npz and metrics.jsonl written every epoch to a temporary
  folder). Its per-epoch ``seconds`` (the training steps alone) is reported as ``train s``.
* PyTorch: benchmarks/torch_densenet.py's replica of torchvision's DenseNet (same structure, module names and
  BatchNorm/initialisation defaults), built from the numpy model's config; with ``--torch-init numpy``
  (default) it starts from the numpy model's very weights (both libraries then start from the same point; the
  init is torchvision's in both: kaiming-normal convolutions, BatchNorm 1/0, zero linear bias), with
  ``--torch-init torch`` from torch's own draw. ``torch.optim.SGD`` with the same Nesterov momentum and weight
  decay on every parameter, the learning rate set each epoch from numpy_densenet's own schedule objects,
  ``F.cross_entropy``; the mini-batches come from numpy_densenet's ``BatchIterator`` with the same seed (so both
  libraries see the same images, order and augmentation; torch is spared a DataLoader), the validation split is
  ``numpy_densenet.data.splits.validation_split``, the normalisation the channel statistics of the training
  part, and evaluation runs on the same validation and test images in batches of 256 under ``torch.no_grad()``;
  a checkpoint (model and optimizer) is written with ``torch.save`` every epoch, and the best weights when the
  validation accuracy improves, as numpy_densenet does.
* Threads: ``--threads`` for both (OPENBLAS/OMP/MKL_NUM_THREADS in the worker's environment, threadpoolctl and
  ``numpy_densenet.set_num_threads`` for numpy, ``torch.set_num_threads`` for torch).
* Per epoch: wall seconds, CPU seconds (user + system of the process, all threads), peak RSS (ru_maxrss so far),
  train / validation / test accuracy. Time to accuracy: the cumulative wall time at the end of the first epoch
  whose *validation* accuracy reaches each ``--targets`` value.
* ``--limit N`` (smoke runs): both libraries train on the same seeded random N training images (and
  ``--eval-limit`` test images), written once to a temporary ``.npz`` file and loaded as ``--dataset npz``
  (whose ``--augment`` is the generic 4-pixel crop + flip).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from common import environment, markdown_table, print_environment

# ------------------------------------------------------------------------------------------------------------
# settings (override on the command line: --epochs 3 --depth 16 ...)
dataset = "fashion-mnist"   # any --dataset of numpy-densenet train; digits for a smoke run
data_dir = ""               # "": numpy_densenet's search path (/usr/share/datasets/fashion-mnist, ~/data, ...)
model = "densenet_bc"       # densenet_bc or densenet (depth, growth rate) or densenet121/161/169/201
depth = 22
growth_rate = 12
epochs = 12
batch_size = 64
lr = 0.1
momentum = 0.9              # Nesterov
weight_decay = 1e-4
schedule = "cosine"         # step: lr / 10 at 50% and 75% of the epochs; cosine
augment = True              # the data set's --augment (Fashion-MNIST: 2-pixel-pad random crop + flip)
val_fraction = 0.1          # stratified, seeded validation split of the training images
seed = 0
threads = 2                 # for both libraries
libs = "numpy,torch"        # which to run, in the first round's order
rounds = 1                  # >1: the pair again, order reversed every other round
torch_init = "numpy"        # numpy: torch starts from numpy's initial weights; torch: its own draw
targets = "0.90,0.92,0.93"  # validation accuracies whose time is reported
limit = 0                   # >0: train on this many (seeded random) training images only (smoke runs)
eval_limit = 0              # >0 with --limit: this many test images
json_out = ""               # write everything to this JSON file
numpy_out = ""              # the numpy run's output folder (metrics.jsonl, curves.png, ...; the last round's
                            # run); "": a temporary one
timeout = 4 * 3600          # seconds per worker process (a run past it is an error)
budget = ""                 # "": every run does all its epochs; "first": a run stops after the epoch at which
                            # it has taken as long as the round's first run took in all (time to accuracy is then
                            # "not reached in that time"); a number: that many wall seconds
# ------------------------------------------------------------------------------------------------------------

SETTINGS = ("dataset", "data_dir", "model", "depth", "growth_rate", "epochs", "batch_size", "lr", "momentum",
            "weight_decay", "schedule", "augment", "val_fraction", "seed", "threads", "libs", "rounds", "torch_init",
            "targets", "limit", "eval_limit", "json_out", "timeout", "budget", "numpy_out")
HERE = os.path.dirname(os.path.abspath(__file__))
TAG = "@@tta "                # worker -> parent lines


def rusage():
    """(CPU seconds user + system, peak RSS in MB) of this process so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0


def emit(kind, **values):
    print(TAG + json.dumps(dict(kind=kind, **values)), flush=True)


class EpochClock:
    """Per-epoch wall / CPU / peak-RSS bookkeeping of a worker, from its first line on."""

    def __init__(self, t0):
        self.t0, self.last = t0, t0
        self.cpu_last = 0.0

    def row(self, epoch, **metrics):
        now = time.perf_counter()
        cpu, rss = rusage()
        row = dict(epoch=epoch, wall=now - self.last, cum_wall=now - self.t0, cpu=cpu - self.cpu_last,
                   cum_cpu=cpu, rss_mb=rss, loadavg=os.getloadavg()[0], **metrics)
        self.last, self.cpu_last = now, cpu
        return row


# -- workers: one library, one whole run, in a fresh process ---------------------------------------------------
def limit_threads(n):
    """BLAS threads (threadpoolctl, when installed; the environment's *_NUM_THREADS set by the parent otherwise)
    and numpy_densenet's own threads, both to ``n``."""
    try:
        from threadpoolctl import threadpool_limits
        keep = threadpool_limits(n)
    except ImportError:
        keep = None
    import numpy_densenet
    own = getattr(numpy_densenet, "set_num_threads", None) or getattr(numpy_densenet.nn, "set_num_threads", None)
    if own is not None:
        own(n)
    return keep


def numpy_worker(spec, clock):
    """numpy_densenet's own loop (``train``); one row per epoch from its log line, read off the Run's history."""
    keep = limit_threads(spec["threads"])                                   # noqa: F841 (kept alive)
    from numpy_densenet.training import TrainConfig, train
    cfg = TrainConfig(dataset=spec["dataset"], data_dir=spec["data_dir"] or None, model=spec["model"],
                      depth=spec["depth"], growth_rate=spec["growth_rate"], epochs=spec["epochs"],
                      batch_size=spec["batch_size"], lr=spec["lr"], momentum=spec["momentum"],
                      weight_decay=spec["weight_decay"], schedule=spec["schedule"], augment=spec["augment"],
                      seed=spec["seed"], out=spec["numpy_out"] or os.path.join(spec["tmp"], "numpy_run"),
                      val_fraction=spec["val_fraction"])
    holder = {}

    def on_step(run):
        holder.setdefault("run", run)
        if "first_step" not in holder:
            holder["first_step"] = time.perf_counter() - clock.t0
            emit("setup", seconds=holder["first_step"], params=run.model.num_parameters(),
                 train_images=len(run.y_train), val_images=run.split.size, test_images=len(run.data.y_test))

    def log(message):
        if message.startswith("epoch ") and "run" in holder:
            r = holder["run"].history[-1]
            emit("epoch", **clock.row(r["epoch"], lr=r["lr"], train_loss=r["train_loss"], train_acc=r["train_acc"],
                                      val_acc=r["val_acc"], test_acc=r["test_acc"], train_seconds=r["seconds"]))

    train(cfg, log=log, on_step=on_step, overwrite=True)


def torch_data(spec):
    """The data exactly as numpy_densenet's train prepares it: (dataset, split, mean, std, batches)."""
    import numpy as np

    from numpy_densenet.data import BatchIterator, channel_stats, load_dataset
    from numpy_densenet.data.splits import validation_split
    data = load_dataset(spec["dataset"], spec["data_dir"] or None)
    split = validation_split(data, spec["val_fraction"], spec["seed"])
    mean, std = channel_stats(split.x_train)
    std = np.where(std == 0, 1.0, std)
    n, b = len(split.y_train), spec["batch_size"]
    drop_last = n % b == 1 and n > 1                                  # as train: no batch of one image
    aug = getattr(data, "augmentation", {"pad": 4, "flip": True})
    batches = BatchIterator(split.x_train, split.y_train, b, shuffle=True, augment=spec["augment"], **aug,
                            mean=mean, std=std, dtype=np.float32, seed=np.random.default_rng([spec["seed"], 1]),
                            drop_last=drop_last)
    return data, split, mean, std, batches


def torch_model(spec, data):
    """The torch replica with the numpy model's config (and, with torch_init=numpy, its initial weights)."""
    import numpy as np

    import numpy_densenet
    sys.path.insert(0, HERE)
    from torch_densenet import _replica
    kwargs = dict(num_classes=data.num_classes, in_channels=data.in_channels, seed=spec["seed"], dtype=np.float32)
    build = getattr(numpy_densenet, spec["model"])
    np_model = (build(spec["depth"], spec["growth_rate"], **kwargs) if spec["model"] in ("densenet_bc", "densenet")
                else build(**kwargs))
    if spec["torch_init"] == "numpy":
        return _replica.from_numpy_model(np_model).train()
    return _replica.DenseNet(**np_model.config).float()


def torch_evaluate(model, x, y, mean, std):
    """Eval-mode mean cross-entropy and accuracy over (x, y), in batches of 256, under no_grad."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from numpy_densenet.data import BatchIterator
    model.eval()
    loss, hits = 0.0, 0
    with torch.no_grad():
        for xb, yb in BatchIterator(x, y, 256, shuffle=False, mean=mean, std=std, dtype=np.float32):
            logits = model(torch.from_numpy(xb))
            target = torch.from_numpy(yb)
            loss += float(F.cross_entropy(logits, target, reduction="sum"))
            hits += int((logits.argmax(1) == target).sum())
    model.train()
    return loss / len(y), hits / len(y)


def torch_save(obj, path):
    """torch.save atomically: a temporary file in the same folder, then a rename."""
    import torch
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def torch_worker(spec, clock):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(spec["threads"])
    keep = limit_threads(spec["threads"])                                   # noqa: F841 (numpy's side: data)
    from numpy_densenet.optim import CosineAnnealingLR, paper_schedule
    data, split, mean, std, batches = torch_data(spec)
    model = torch_model(spec, data)
    opt = torch.optim.SGD(model.parameters(), lr=spec["lr"], momentum=spec["momentum"],
                          weight_decay=spec["weight_decay"], nesterov=spec["momentum"] > 0)

    class _Rate:
        lr = spec["lr"]
    rate = _Rate()
    sched = (paper_schedule(rate, spec["epochs"]) if spec["schedule"] == "step"
             else CosineAnnealingLR(rate, spec["epochs"]))
    setup = dict(params=sum(p.numel() for p in model.parameters()), train_images=len(split.y_train),
                 val_images=split.size, test_images=len(data.y_test))
    best, out = -1.0, os.path.join(spec["tmp"], "torch_run")
    os.makedirs(out, exist_ok=True)
    for epoch in range(1, spec["epochs"] + 1):
        for group in opt.param_groups:
            group["lr"] = rate.lr
        start, sums = time.perf_counter(), [0.0, 0, 0]
        for xb, yb in batches:
            x, y = torch.from_numpy(xb), torch.from_numpy(yb)
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            opt.step()
            sums[0] += float(loss) * len(yb)
            sums[1] += int((logits.argmax(1) == y).sum())
            sums[2] += len(yb)
            if setup is not None:                                       # as numpy's: when the first step ends
                emit("setup", seconds=time.perf_counter() - clock.t0, **setup)
                setup = None
        train_seconds = time.perf_counter() - start
        val_loss, val_acc = torch_evaluate(model, split.x_val, split.y_val, mean, std) if split.size else (None, None)
        test_loss, test_acc = torch_evaluate(model, data.x_test, data.y_test, mean, std)
        if split.size and val_acc > best:
            best = val_acc
            torch_save(model.state_dict(), os.path.join(out, "best.pt"))
        torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": epoch},
                   os.path.join(out, "checkpoint.pt"))
        emit("epoch", **clock.row(epoch, lr=rate.lr, train_loss=sums[0] / sums[2], train_acc=sums[1] / sums[2],
                                  val_acc=val_acc, test_acc=test_acc, train_seconds=round(train_seconds, 3)))
        sched.step()


def worker(spec_json):
    clock = EpochClock(time.perf_counter())
    spec = json.loads(spec_json)
    (numpy_worker if spec["lib"] == "numpy" else torch_worker)(spec, clock)
    cpu, rss = rusage()
    emit("done", cum_wall=time.perf_counter() - clock.t0, cum_cpu=cpu, rss_mb=rss)


# -- the parent: workers in turn, tables ---------------------------------------------------------------------------
def limited_npz(a, tmp):
    """--limit: the same seeded random training (and test) images for both libraries, as an .npz file."""
    import numpy as np

    from numpy_densenet.data import load_dataset
    data = load_dataset(a.dataset, a.data_dir or None)
    rng = np.random.default_rng([a.seed, 7])
    keep = np.sort(rng.permutation(len(data.y_train))[:a.limit])
    test = np.sort(rng.permutation(len(data.y_test))[:a.eval_limit or len(data.y_test)])
    path = os.path.join(tmp, "limited.npz")
    np.savez(path, x=data.x_train[keep], y=data.y_train[keep], x_test=data.x_test[test], y_test=data.y_test[test],
             classes=np.array(data.classes))
    return path


def run_worker(spec, a, budget=None):
    """One library's whole run in a fresh process; its epoch rows as they arrive (echoed), or an error. With a
    ``budget`` (wall seconds) the run is stopped after the first epoch that ends past it (``stopped``)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads),
               MKL_NUM_THREADS=str(a.threads))
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    result = dict(lib=spec["lib"], round=spec["round"], epochs=[], setup=None, done=None,
                  loadavg_before=os.getloadavg())
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=spec["tmp"])
    deadline = time.time() + a.timeout
    for line in proc.stdout:
        if not line.startswith(TAG):
            continue
        msg = json.loads(line[len(TAG):])
        kind = msg.pop("kind")
        if kind == "epoch":
            result["epochs"].append(msg)
            print(f"  {spec['lib']:5s} round {spec['round'] + 1} epoch {msg['epoch']:3d}: "
                  f"val {fmt_acc(msg['val_acc'])} "
                  f"test {fmt_acc(msg['test_acc'])}  {msg['wall']:.1f} s wall ({msg['train_seconds']:.1f} s train), "
                  f"{msg['cpu']:.1f} s CPU, {msg['rss_mb']:.0f} MB peak, {msg['cum_wall']:.0f} s so far", flush=True)
            if budget is not None and msg["cum_wall"] >= budget and msg["epoch"] < spec["epochs"]:
                result.update(stopped=dict(budget=budget, epoch=msg["epoch"], cum_wall=msg["cum_wall"],
                                           cum_cpu=msg["cum_cpu"], rss_mb=msg["rss_mb"]))
                print(f"  {spec['lib']} round {spec['round'] + 1}: stopped after epoch {msg['epoch']}, past its "
                      f"budget of {budget:.0f} s", flush=True)
                proc.kill()
                break
        else:
            result[kind] = msg
        if time.time() > deadline:
            proc.kill()
            break
    stderr = proc.stderr.read()
    proc.wait()
    result["loadavg_after"] = os.getloadavg()
    if "stopped" in result:
        result["done"] = result["stopped"]
    elif proc.returncode != 0 or result["done"] is None:
        result["error"] = f"exit code {proc.returncode}: {stderr.strip()[-2000:]}"
        print(f"  {spec['lib']} round {spec['round'] + 1} FAILED: {result['error']}", flush=True)
    return result


def fmt_acc(v):
    return "-" if v is None else f"{v:.4f}"


def time_to(result, target):
    """Cumulative wall seconds (and the epoch) at the first epoch whose validation accuracy reaches target."""
    for row in result["epochs"]:
        if row["val_acc"] is not None and row["val_acc"] >= target:
            return row["cum_wall"], row["epoch"]
    return None, None


def summary(result):
    """Best validation epoch (ties: the earlier) and its test accuracy; the final epoch's test accuracy."""
    rows = [r for r in result["epochs"] if r["val_acc"] is not None]
    best = max(rows, key=lambda r: (r["val_acc"], -r["epoch"])) if rows else None
    last = result["epochs"][-1] if result["epochs"] else None
    return best, last


def epoch_table(result):
    headers = ["epoch", "lr", "train acc", "val acc", "test acc", "wall s", "train s", "eval+ckpt s", "CPU s",
               "peak RSS MB", "cumulative wall s", "load"]
    rows = [[r["epoch"], f"{r['lr']:.4g}", f"{r['train_acc']:.4f}", fmt_acc(r["val_acc"]), fmt_acc(r["test_acc"]),
             f"{r['wall']:.1f}", f"{r['train_seconds']:.1f}", f"{r['wall'] - r['train_seconds']:.1f}",
             f"{r['cpu']:.1f}", f"{r['rss_mb']:.0f}", f"{r['cum_wall']:.1f}", f"{r['loadavg']:.1f}"]
            for r in result["epochs"]]
    return markdown_table(headers, rows)


def target_table(results, targets):
    headers = (["library", "round"] + [f"to {t:.0%} val: s (epoch)" for t in targets]
               + ["best val (epoch)", "test there", "final test", "total wall s", "total CPU s", "peak RSS MB"])
    rows = []
    for r in results:
        best, last = summary(r)
        reach = [time_to(r, t) for t in targets]
        done = r.get("done") or {}
        missed = (f"not reached in {r['epochs'][-1]['cum_wall']:.0f} s ({r['epochs'][-1]['epoch']} epochs"
                  + (", stopped at its budget)" if "stopped" in r else ")")) if r["epochs"] else "not reached"
        rows.append([r["lib"], r["round"] + 1] + [f"{s:.0f} ({e})" if s is not None else missed
                                                  for s, e in reach]
                    + [f"{best['val_acc']:.4f} ({best['epoch']})" if best else "-",
                       fmt_acc(best["test_acc"]) if best else "-", fmt_acc(last["test_acc"]) if last else "-",
                       f"{done.get('cum_wall', float('nan')):.0f}", f"{done.get('cum_cpu', float('nan')):.0f}",
                       f"{done.get('rss_mb', float('nan')):.0f}"])
    return markdown_table(headers, rows)


def ratio_bound(n, torch_result):
    """numpy reached a target in n seconds, torch not within its run: the ratio is below n / torch's run time."""
    rows = torch_result["epochs"]
    return f"< {n / rows[-1]['cum_wall']:.2f} (torch not there in {rows[-1]['cum_wall']:.0f} s)" if rows else "-"


def ratio_table(results, targets):
    """numpy / torch time to each target, per round (both in the same round) and the median."""
    by_round = {}
    for r in results:
        by_round.setdefault(r["round"], {})[r["lib"]] = r
    rows, ratios = [], {t: [] for t in targets}
    for rnd, pair in sorted(by_round.items()):
        if {"numpy", "torch"} - set(pair):
            continue
        cells = []
        for t in targets:
            (n, _), (p, _) = time_to(pair["numpy"], t), time_to(pair["torch"], t)
            cells.append(f"{n / p:.2f}" if n and p else ratio_bound(n, pair["torch"]) if n else "-")
            if n and p:
                ratios[t].append(n / p)
        rows.append([rnd + 1] + cells)
    if not rows:
        return ""
    rows.append(["median"] + [f"{statistics.median(v):.2f}" if v else "-" for v in ratios.values()])
    return markdown_table(["round"] + [f"numpy / torch to {t:.0%}" for t in targets], rows)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="Time to accuracy: numpy_densenet against PyTorch's CPU build, the "
                                             "whole training job, epoch by epoch, alternating fresh processes.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = globals()
    for name in SETTINGS:
        default = g[name]
        option = "--" + ("json" if name == "json_out" else name.replace("_", "-"))
        if isinstance(default, bool):
            ap.add_argument(option, dest=name, action=argparse.BooleanOptionalAction, default=default)
        else:
            ap.add_argument(option, dest=name, type=type(default), default=default)
    ap.add_argument("--src", default=None, help="import numpy_densenet from this snapshot folder (see "
                                                 "benchmarks/README.md)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv=None):
    a = parse_args(argv)
    if a.worker:
        return worker(a.worker)
    check_budget(a.budget)
    targets = [float(t) for t in a.targets.split(",") if t.strip()]
    libs = [lib.strip() for lib in a.libs.split(",") if lib.strip()]
    unknown = [lib for lib in libs if lib not in ("numpy", "torch")]
    if unknown or not libs:
        raise SystemExit(f"--libs must list numpy and/or torch, got {a.libs!r}")
    env = environment(a.threads)
    print_environment(env)
    settings = {name: getattr(a, name) for name in SETTINGS}
    print("# settings: " + " ".join(f"{k}={v}" for k, v in settings.items()), flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="tta-") as tmp:
        spec = {name: getattr(a, name) for name in SETTINGS}
        spec["numpy_out"] = os.path.abspath(a.numpy_out) if a.numpy_out else ""
        if a.limit:
            spec.update(dataset="npz", data_dir=limited_npz(a, tmp))
        for rnd in range(a.rounds):
            for lib in (libs if rnd % 2 == 0 else libs[::-1]):
                work = tempfile.mkdtemp(dir=tmp, prefix=f"{lib}{rnd}-")
                print(f"# {lib}, round {rnd + 1}: load average {os.getloadavg()[0]:.1f}", flush=True)
                first = [r for r in results if r["round"] == rnd]
                budget = (None if not a.budget else float(a.budget) if a.budget != "first"
                          else first[0]["done"]["cum_wall"] if first and first[0].get("done") else None)
                results.append(run_worker(dict(spec, lib=lib, round=rnd, tmp=work), a, budget))
    for r in results:
        print(f"\n## {r['lib']}, round {r['round'] + 1} (load average {r['loadavg_before'][0]:.1f} before, "
              f"{r['loadavg_after'][0]:.1f} after; first step ended at "
              f"{(r['setup'] or {}).get('seconds', float('nan')):.1f} s)\n")
        print(epoch_table(r))
    print("\n## Time to validation accuracy (cumulative wall seconds from the worker's start)\n")
    print(target_table(results, targets))
    ratios = ratio_table(results, targets)
    if ratios:
        print("\n" + ratios)
    if a.json_out:
        out = dict(env=env, settings=settings, results=results)
        tmp_path = f"{a.json_out}.tmp-{os.getpid()}"
        with open(tmp_path, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp_path, a.json_out)
        print(f"\n# written {a.json_out}")
    return 1 if any("error" in r for r in results) else 0


def check_budget(value):
    """--budget: "", "first" or a number of seconds."""
    if value in ("", "first"):
        return value
    try:
        if float(value) > 0:
            return value
    except ValueError:
        pass
    raise SystemExit(f"--budget must be empty, 'first' or a number of seconds > 0, got {value!r}")


if __name__ == "__main__":
    sys.exit(main())
