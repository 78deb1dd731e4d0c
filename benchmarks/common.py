"""Helpers shared by the benchmarks: timing, environment report, markdown tables. Benchmarks only."""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


PAUSE = 0.2  # seconds of idling before each measurement: lets the other framework's spinning threads go to sleep


def time_fn(fn, repeats, warmup, setup=None):
    """Median and min wall time (seconds) of ``fn()`` over ``repeats`` runs after ``warmup`` runs.

    ``setup()`` (untimed) runs before every call, e.g. the forward pass whose cache a backward needs.
    """
    time.sleep(PAUSE)
    times = []
    for i in range(warmup + repeats):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        if i >= warmup:
            times.append(dt)
    return statistics.median(times), min(times)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_info():
    """numpy's BLAS as threadpoolctl sees it: library, version, kernel (architecture), threads."""
    import numpy as np
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"note": "threadpoolctl not installed (pip install threadpoolctl)"}
    np.ones((2, 2)) @ np.ones((2, 2))
    for pool in threadpool_info():
        if pool.get("user_api") == "blas" and "numpy" in pool.get("filepath", ""):
            return {k: pool.get(k) for k in ("internal_api", "version", "architecture", "num_threads",
                                              "threading_layer", "filepath")}
    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            return {k: pool.get(k) for k in ("internal_api", "version", "architecture", "num_threads",
                                              "threading_layer", "filepath")}
    return {}


def git_state():
    """HEAD commit and whether the library (numpy_densenet/) has uncommitted changes: numbers depend on it."""
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = run("status", "--porcelain", "--", "numpy_densenet")
    return {"commit": run("rev-parse", "--short", "HEAD"), "library_dirty": bool(dirty),
            "library_changes": dirty.splitlines()[:20]}


def environment(threads=None):
    import numpy as np
    import scipy
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "blas": blas_info(),
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE"),
        "threads": threads,
        "git": git_state(),
        "loadavg": os.getloadavg(),
    }
    try:
        import torch
        env["torch"] = torch.__version__
    except ImportError:
        env["torch"] = None
    return env


def print_environment(env):
    b = env.get("blas", {})
    print(f"# {env['date']} | CPU: {env['cpu']} ({env['cores']} cores) | Python {env['python']} | "
          f"numpy {env['numpy']} | scipy {env['scipy']} | torch {env['torch']}")
    print(f"# numpy BLAS: {b.get('internal_api')} {b.get('version')}, kernel {b.get('architecture')}, "
          f"{b.get('num_threads')} threads ({b.get('threading_layer')}) | benchmark threads: {env['threads']}")
    print(f"# OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']!r} OPENBLAS_L2_SIZE={env['OPENBLAS_L2_SIZE']!r} "
          f"(None = unset) | git {env['git']['commit']}, library dirty: {env['git']['library_dirty']} | "
          f"load average {' '.join(f'{v:.1f}' for v in env['loadavg'])}")


def markdown_table(headers, rows):
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def fmt(v, digits=1):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)
