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


def use_src(argv=None):
    """Honour ``--src DIR`` (or NUMPY_DENSENET_SRC=DIR): import numpy_densenet from DIR instead of this checkout.

    Lets a fixed snapshot be measured while the library in the working tree changes, e.g.
    ``mkdir /tmp/base && git archive COMMIT numpy_densenet | tar -x -C /tmp/base``. Subprocesses inherit it
    through the environment variable. Call before numpy_densenet is imported.
    """
    argv = sys.argv[1:] if argv is None else argv
    for i, arg in enumerate(argv):
        if arg == "--src" and i + 1 < len(argv):
            os.environ["NUMPY_DENSENET_SRC"] = os.path.abspath(argv[i + 1])
        elif arg.startswith("--src="):
            os.environ["NUMPY_DENSENET_SRC"] = os.path.abspath(arg.split("=", 1)[1])
    src = os.environ.get("NUMPY_DENSENET_SRC")
    if src and src not in sys.path:
        sys.path.insert(0, src)
    return src


use_src()


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
    """Which library is measured: HEAD commit and whether numpy_densenet/ has uncommitted changes, or the
    snapshot given with --src (its COMMIT file names the commit it was archived from)."""
    src = os.environ.get("NUMPY_DENSENET_SRC")
    if src:
        try:
            with open(os.path.join(src, "COMMIT")) as f:
                commit = f.read().strip()
        except OSError:
            commit = "?"
        return {"commit": commit, "src": src, "library_dirty": False, "library_changes": []}
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
    import numpy_densenet
    env["numpy_densenet_file"] = numpy_densenet.__file__
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
          f"(None = unset) | library {env['numpy_densenet_file']} @ {env['git']['commit']}, "
          f"dirty: {env['git']['library_dirty']} | "
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
