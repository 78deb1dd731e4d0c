"""Beyond one process: gradcheck probes on an executor, and data-parallel training over MPI.

    python benchmarks/bench_distributed.py probes      # probes/s serially and on a 2-worker process pool
    python benchmarks/bench_distributed.py bigcheck    # a full check of densenet_bc(40, 12)'s first block
    python benchmarks/bench_distributed.py mpi         # Allreduce of bc100's gradients, step times at P = 1, 2
                                                       # (runs mpiexec -n 2 itself), projection for P = 8-64

Each section prints a markdown table. The MPI section needs mpi4py and an mpiexec (``pip install mpi4py
mpich``); the projection is a model fitted to the measurements, not a measurement (see benchmarks/README.md).
"""
import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time

import numpy as np

from common import cpu_model  # (importing common puts the checkout on sys.path)

# -- settings (overridable on the command line) ---------------------------------------------------------------
workers = 2
probe_depth, probe_size, probe_count = 40, 16, 64      # probes/s: densenet_bc(40, 12)'s first block, batch 2
step_depth, step_batch, step_size = 100, 64, 32        # step times: densenet_bc(100, 12), global batch 64, 32x32
step_repeats = 3
allreduce_repeats = 30


def banner(title):
    print(f"\n## {title}\n\nCPU: {cpu_model()}; {os.cpu_count()} cores visible; NumPy {np.__version__}\n")


# -- gradcheck on an executor ---------------------------------------------------------------------------------
def _block_probe(depth, size, seed=0):
    from numpy_densenet import densenet_bc
    from numpy_densenet.gradcheck.probe import Probe
    block = densenet_bc(depth, 12, seed=seed).features.denseblock1
    x = np.random.default_rng(seed).standard_normal((2, block.num_input_features, size, size))
    return block, x, Probe(block, x, seed)


def probes(a):
    """Probes per second (two forwards each) on one process with one thread, and on a spawned process pool."""
    from concurrent.futures import ProcessPoolExecutor

    from numpy_densenet import fast
    from numpy_densenet.gradcheck.parallel import ParallelLosses, one_thread, perturbed_loss
    fast.set_num_threads(1)
    one_thread()
    block, x, probe = _block_probe(a.depth, a.size)
    name = "denselayer1.conv2.weight"
    array = dict(block.named_parameters())[name].data
    idx = [np.unravel_index(i, array.shape) for i in range(a.count)]
    requests = [(name, i, d) for i in idx for d in (1e-6, -1e-6)]
    probe.targets = {n: ("param", k) for k, (n, _) in enumerate(probe.params)}
    t0 = time.perf_counter()
    serial = [perturbed_loss(probe, *r) for r in requests]
    t_serial = time.perf_counter() - t0
    del probe.targets
    rows = [("serial, 1 thread", 1, t_serial, None)]
    for n in sorted({1, a.workers}):
        t0 = time.perf_counter()
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=one_thread) as pool:
            list(pool.map(abs, range(n)))                                        # workers started
            started = time.perf_counter() - t0
            parallel = ParallelLosses(pool, probe)
            t1 = time.perf_counter()
            values = parallel.losses(requests)
            t_pool = time.perf_counter() - t1
            assert values == serial, "executor values differ from the serial ones"
        rows.append((f"ProcessPoolExecutor({n}), spawn", n, t_pool, started))
    banner(f"gradcheck probes on an executor: densenet_bc({a.depth}, 12)'s first block, batch 2, {a.size}x{a.size}, "
           f"float64, {a.count} probes of {name}")
    print("| where | workers | seconds | probes/s | speed-up | pool start s |")
    print("|---|---|---|---|---|---|")
    for label, n, t, started in rows:
        print(f"| {label} | {n} | {t:.2f} | {a.count / t:.1f} | {t_serial / t:.2f} | "
              f"{'' if started is None else f'{started:.2f}'} |")
    print(f"\nPayload (pickled model, inputs, upstream gradient): {len(parallel.payload()) / 1e3:.0f} kB; the "
          f"values from the pool are bit-identical to the serial ones.")
    walls = {}
    for n in sorted({1, a.workers}):                                    # what parallelism the machine gives now
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(abs, range(n)))
            t0 = time.perf_counter()
            list(pool.map(_spin, [2_000_000] * 4))
            walls[n] = time.perf_counter() - t0
    print(f"Control: four pure-Python loops on the same pools: 1 worker {walls[1]:.2f} s, {a.workers} workers "
          f"{walls[a.workers]:.2f} s = {walls[1] / walls[a.workers]:.2f}x (the cores actually free; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores).")


def _spin(n):
    s = 0
    for i in range(n):
        s += i * i
    return s


def bigcheck(a):
    """A full gradcheck of every parameter of densenet_bc(depth, 12)'s first dense block on the pool."""
    from concurrent.futures import ProcessPoolExecutor

    from numpy_densenet import fast, gradcheck
    from numpy_densenet.gradcheck.parallel import one_thread
    fast.set_num_threads(1)
    one_thread()
    block, x, probe = _block_probe(a.depth, a.size)
    t0 = time.perf_counter()
    for _ in range(5):
        probe.loss()
    per_forward = (time.perf_counter() - t0) / 5
    n = sum(p.data.size for p in block.parameters())
    t0 = time.perf_counter()
    with ProcessPoolExecutor(a.workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=one_thread) as pool:
        result = gradcheck(block, x, mode="full", check_inputs=False, executor=pool)
    seconds = time.perf_counter() - t0
    banner(f"a full check of densenet_bc({a.depth}, 12)'s first dense block on {a.workers} workers")
    print(result.table() if a.verbose else f"{len(result.rows)} tensors, passed: {result.passed}, "
          f"kink probes: {sum(r.kinks for r in result.rows)}")
    print(f"\n| parameters (= probes) | forwards | one forward s | serial estimate min | on {a.workers} workers min |")
    print("|---|---|---|---|---|")
    print(f"| {n:,} | {2 * n:,} | {per_forward:.4f} | {2 * n * per_forward / 60:.1f} | {seconds / 60:.1f} |")


# -- MPI ------------------------------------------------------------------------------------------------------
def _step_time(model, x, y, repeats, dp=None):
    from numpy_densenet import nn
    from numpy_densenet.optim import SGD
    net = dp or model
    criterion = nn.CrossEntropyLoss()
    opt = SGD(net.named_parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4, nesterov=True)
    times = []
    for i in range(repeats + 1):
        if dp is not None:
            dp.comm.Barrier()
        t0 = time.perf_counter()
        opt.zero_grad()
        criterion(net(x), y)
        net.backward(criterion.backward())
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _batch(depth, n, size, seed=0):
    from numpy_densenet import densenet_bc
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, size, size)).astype(np.float32)
    return densenet_bc(depth, 12, seed=seed), x, rng.integers(0, 10, n)


class _Timed:
    """Wraps a communicator: counts and times the collectives a data-parallel step makes."""

    def __init__(self, comm):
        self.comm, self.seconds, self.calls = comm, 0.0, 0

    def __getattr__(self, name):
        attr = getattr(self.comm, name)
        if name not in ("Allreduce", "Allgather", "Bcast", "Barrier"):
            return attr

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1
        return timed


def mpi_ranks(a):
    """Run on each rank (under mpiexec): Allreduce timings and the data-parallel step time."""
    from mpi4py import MPI

    from numpy_densenet import fast
    from numpy_densenet.training.distributed import DataParallel
    from numpy_densenet.gradcheck.parallel import one_thread
    comm = MPI.COMM_WORLD
    fast.set_num_threads(1)
    one_thread()
    out = {}
    model, x, y = _batch(a.depth, a.batch, a.size)
    flat = np.zeros(model.num_parameters(), dtype=np.float32) + comm.Get_rank()
    times = {"buffer": [], "pickle": []}
    for _ in range(a.allreduce_repeats):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        times["buffer"].append(time.perf_counter() - t0)
        comm.Barrier()
        t0 = time.perf_counter()
        comm.allreduce(flat, op=MPI.SUM)
        times["pickle"].append(time.perf_counter() - t0)
    out["allreduce_buffer_ms"] = 1e3 * statistics.median(times["buffer"])
    out["allreduce_pickle_ms"] = 1e3 * statistics.median(times["pickle"])
    out["params"] = int(flat.size)
    timed = _Timed(comm)
    dp = DataParallel(model, comm=timed)
    s = dp.shard(a.batch)
    timed.seconds, timed.calls = 0.0, 0
    out["step_s"] = _step_time(model, x[s], y[s], a.repeats, dp)
    steps = a.repeats + 1
    out["collectives_per_step"] = timed.calls / steps
    out["collective_ms_per_step"] = 1e3 * timed.seconds / steps      # includes waiting for the slower rank
    t0 = time.perf_counter()
    for _ in range(20):
        dp.allreduce_gradients()
    out["grad_allreduce_ms"] = 1e3 * (time.perf_counter() - t0) / 20
    small = np.zeros(2 * 48)
    comm.Barrier()
    t0 = time.perf_counter()
    for _ in range(200):
        comm.Allreduce(MPI.IN_PLACE, small, op=MPI.SUM)
    out["small_allreduce_us"] = 1e6 * (time.perf_counter() - t0) / 200
    if comm.Get_rank() == 0:
        print("RESULT " + json.dumps(out), flush=True)


def mpi(a):
    from numpy_densenet import fast
    from numpy_densenet.gradcheck.parallel import one_thread
    exe = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    cmd = [exe if os.path.exists(exe) else "mpiexec", "-n", "2", sys.executable, "-m", "mpi4py",
           os.path.abspath(__file__), "_ranks", "--depth", str(a.depth), "--batch", str(a.batch), "--size",
           str(a.size), "--repeats", str(a.repeats), "--allreduce-repeats", str(a.allreduce_repeats)]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode:
        sys.exit(proc.stderr)
    r = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])

    model, x, y = _batch(a.depth, a.batch, a.size)
    fast.set_num_threads(2)
    t2 = _step_time(model, x, y, a.repeats)                                    # P = 1, 2 threads (default)
    fast.set_num_threads(1)
    one_thread()
    per_rank = {}
    b = a.batch
    while b >= 1:                                                              # compute of one rank's slice
        model, x, y = _batch(a.depth, b, a.size)
        per_rank[b] = _step_time(model, x, y, a.repeats if b >= 16 else 2 * a.repeats)
        b //= 2
    t1 = per_rank[a.batch]

    banner(f"data-parallel training over MPI: densenet_bc({a.depth}, 12), float32, global batch {a.batch}, "
           f"{a.size}x{a.size}, MPICH on one machine (shared memory)")
    print(f"Allreduce of the {r['params']:,} float32 gradients (P = 2): buffer API in place "
          f"{r['allreduce_buffer_ms']:.1f} ms median; pickle-based lower-case allreduce "
          f"{r['allreduce_pickle_ms']:.1f} ms. A 2C = 96-value Allreduce (a BatchNorm backward's sums): "
          f"{r['small_allreduce_us']:.0f} us.\n")
    print("| configuration | step s | images/s | speed-up vs P=1 x 1 thread |")
    print("|---|---|---|---|")
    for label, t in (("P = 1, 1 thread", t1), ("P = 1, 2 threads (one process)", t2),
                     ("P = 2 ranks x 1 thread, sync BN", r["step_s"])):
        print(f"| {label} | {t:.2f} | {a.batch / t:.1f} | {t1 / t:.2f} |")
    print(f"\nIn the P = 2 step: {r['collectives_per_step']:.0f} collectives per step (BN statistics and sums, the "
          f"metrics' count, one gradient Allreduce) taking {r['collective_ms_per_step']:.0f} ms including waits "
          f"for the other rank; the gradient Allreduce alone {r['grad_allreduce_ms']:.1f} ms.\n")

    # Projection: compute of one rank's slice (measured, 1 thread) + ring Allreduce of the gradients +
    # the latency-bound BatchNorm collectives, on a cluster network (assumed figures, stated).
    bandwidth, latency = 10e9, 3e-6                                  # bytes/s and s: an InfiniBand-class network
    grad_bytes = 4 * r["params"]
    bn_calls = r["collectives_per_step"] - 2
    print(f"Projection (a model, not a measurement) for the paper's global batch {a.batch}: per step = measured "
          f"1-thread compute of a {a.batch}/P-image slice + ring Allreduce of {grad_bytes / 1e6:.1f} MB "
          f"(2 (P-1)/P x bytes / {bandwidth / 1e9:.0f} GB/s + 2 (P-1) x {latency * 1e6:.0f} us) + "
          f"{bn_calls:.0f} BatchNorm collectives of log2(P) x {latency * 1e6:.0f} us each; 300 epochs of "
          f"782 steps (CIFAR, 50,000 images).\n")
    print("| P | images per rank | compute s | gradient allreduce ms | BN collectives ms | step s | speed-up | "
          "300 epochs, hours |")
    print("|---|---|---|---|---|---|---|---|")
    for P in (1, 2, 8, 16, 32, 64):
        n = max(1, a.batch // P)
        compute = per_rank[n] if n in per_rank else per_rank[min(per_rank)]
        ring = 0.0 if P == 1 else 2 * (P - 1) / P * grad_bytes / bandwidth + 2 * (P - 1) * latency
        bn = 0.0 if P == 1 else bn_calls * np.log2(P) * latency
        step = compute + ring + bn
        print(f"| {P} | {n} | {compute:.3f} | {1e3 * ring:.2f} | {1e3 * bn:.2f} | {step:.3f} | {t1 / step:.1f} | "
              f"{300 * 782 * step / 3600:.1f} |")
    print("\nMeasured 1-thread step times by slice size: "
          + ", ".join(f"{n}: {t:.3f} s" for n, t in sorted(per_rank.items(), reverse=True)))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("section", choices=["probes", "bigcheck", "mpi", "_ranks"])
    p.add_argument("--workers", type=int, default=workers)
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--count", type=int, default=probe_count)
    p.add_argument("--batch", type=int, default=step_batch)
    p.add_argument("--repeats", type=int, default=step_repeats)
    p.add_argument("--allreduce-repeats", type=int, default=allreduce_repeats)
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    mpi_section = a.section in ("mpi", "_ranks")
    a.depth = a.depth or (step_depth if mpi_section else probe_depth)
    a.size = a.size or (step_size if mpi_section else probe_size)
    {"probes": probes, "bigcheck": bigcheck, "mpi": mpi, "_ranks": mpi_ranks}[a.section](a)


if __name__ == "__main__":
    main()
