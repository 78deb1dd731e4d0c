"""How numpy_densenet uses more than one core.

NumPy runs element-wise operations (BatchNorm, ReLU, pooling, the concatenation's adds) on one core; only its
BLAS, which does the matrix products, is multi-threaded. In a DenseNet train step the element-wise passes take
about half the time, so half the step would leave the other cores idle. Running them in Python threads does
not help by itself: after each matrix product OpenBLAS's worker threads busy-wait for about 0.1 s for the next
one, and compete with any other thread for the cores.

So numpy_densenet shares its work between its own threads (NumPy releases the GIL inside its loops):

* :func:`parallel_for` hands out independent pieces of an element-wise pass (blocks of channels);
* :func:`matmul` splits a matrix product into column blocks (or, for a long inner dimension, into partial
  products that are then summed), each computed by OpenBLAS set to *one* thread for the duration of the call;
  the caller's OpenBLAS setting is restored afterwards, so other NumPy code is unaffected. Products too small
  to split run in the calling thread, with OpenBLAS on one thread as well: waking its workers for one product
  would leave them spinning against the next pass (measured: a tiny DenseNet on 8x8 digits trained 30 %
  slower when small products used OpenBLAS's threads between split ones).

The number of threads defaults to OpenBLAS's own (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS`` or the number
of cores) and can be changed with :func:`set_num_threads`, as ``torch.set_num_threads``. Results depend only
on that number, not on timing: every piece is computed the same way whichever thread runs it. NumPy's BLAS is
found through threadpoolctl when it is installed (OpenBLAS, MKL, BLIS), else by looking for OpenBLAS by hand;
if neither finds it (Accelerate), the default is one thread and everything runs as plain NumPy would.
"""
from __future__ import annotations

import ctypes
import glob
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

MIN_COLUMNS_PER_THREAD = 128        # matmul: below this many columns per thread one thread does it all
MIN_FLOPS_TO_SPLIT = 1 << 25        # matmul: products smaller than this (~0.3 ms) are not split
MIN_ELEMENTS_TO_SPLIT = 1 << 18     # element-wise passes over fewer values run in the calling thread

_state = {"threads": None, "pool": None, "blas": None}
_lock = threading.Lock()
_worker = threading.local()         # set in the pool's threads: no nested splitting inside a piece


# -- OpenBLAS's thread count -------------------------------------------------------------------------------
def _find_openblas():
    """(get, set) for the OpenBLAS NumPy uses, or None if NumPy's BLAS is something else or not found."""
    try:
        name = np.__config__.CONFIG["Build Dependencies"]["blas"]["name"]
    except (AttributeError, KeyError, TypeError):
        name = "openblas?"                               # numpy < 1.26 has no CONFIG: look for the library
    if "openblas" not in str(name).lower():
        return None
    numpy_dir = os.path.dirname(np.__file__)
    paths = glob.glob(os.path.join(numpy_dir + ".libs", "*openblas*"))          # Linux wheels
    paths += glob.glob(os.path.join(numpy_dir, ".dylibs", "*openblas*"))        # macOS wheels
    if not paths and os.path.exists("/proc/self/maps"):                         # a system OpenBLAS
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    for path in paths:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "64_"),
                               ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype, set_.argtypes = ctypes.c_int, [ctypes.c_int]
                return get, set_
    return None


def _find_blas_with_threadpoolctl():
    """(get, set) for NumPy's BLAS through threadpoolctl (OpenBLAS, MKL or BLIS), if threadpoolctl is installed
    and finds exactly one BLAS, or one inside NumPy's own folder; else None.

    threadpoolctl (the small pure-Python library scikit-learn uses) is not a dependency: without it the
    library finds OpenBLAS by hand (:func:`_find_openblas`). Its per-call cost is a few microseconds, the same
    as the ctypes calls (benchmarks/README.md, "Threads: threadpoolctl").
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    try:
        libs = ThreadpoolController().select(user_api="blas").lib_controllers
    except Exception:                                    # a broken install: fall back to the ctypes search
        return None
    numpy_dir = os.path.dirname(np.__file__)
    own = [lib for lib in libs if str(getattr(lib, "filepath", "")).startswith(numpy_dir)]   # numpy.libs, .dylibs
    chosen = own[0] if len(own) == 1 else libs[0] if len(libs) == 1 else None
    if chosen is None:
        return None
    return chosen.get_num_threads, chosen.set_num_threads


def _blas():
    if _state["blas"] is None:
        _state["blas"] = _find_blas_with_threadpoolctl() or _find_openblas() or False
    return _state["blas"]


def get_blas_threads():
    """The thread count of NumPy's BLAS (OpenBLAS, MKL, BLIS), or None when it cannot be found."""
    blas = _blas()
    return int(blas[0]()) if blas else None


def set_blas_threads(n):
    """Set the thread count of NumPy's BLAS to ``n`` when it can be found (see the module docstring); returns
    whether it could. numpy_densenet's own threads are :func:`set_num_threads`'."""
    blas = _blas()
    if blas and blas[0]() != n:
        blas[1](n)
    return bool(blas)


@contextmanager
def blas_single_threaded():
    """OpenBLAS on one thread inside the block (our threads split the work); the previous setting after."""
    blas = _blas()
    previous = blas[0]() if blas else 1
    if previous != 1 and get_num_threads() > 1:
        _pool()                                          # started before OpenBLAS is set to one thread
    if previous != 1:
        blas[1](1)
    try:
        yield
    finally:
        if previous != 1:
            blas[1](previous)


# -- the thread count ----------------------------------------------------------------------------------------
def get_num_threads():
    """The number of threads numpy_densenet's layers use (see the module docstring)."""
    if _state["threads"] is None:
        blas = _blas()
        _state["threads"] = max(1, int(blas[0]())) if blas else 1
    return _state["threads"]


def set_num_threads(n):
    """Use ``n`` threads (a positive int) from now on; with 1 the layers run in the calling thread and leave
    the products to OpenBLAS as the caller set it (results equal to rounding for any n)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    with _lock:
        if _state["pool"] is not None:
            _state["pool"].shutdown(wait=True)
            _state["pool"] = None
        _state["threads"] = int(n)


def _forget_pool_in_child():
    """After fork() the child has none of the parent's worker threads: start afresh (and unlock)."""
    global _lock
    _lock = threading.Lock()
    _state["pool"] = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_in_child)


def _pool():
    """The worker threads (one fewer than the thread count: the calling thread works too), all started now.

    They must start while OpenBLAS still has its own thread count: on this OpenBLAS (0.3.31) the products of
    a thread started while it was set to one thread run one at a time with the calling thread's, not at once.
    """
    with _lock:
        if _state["pool"] is None:
            workers = get_num_threads() - 1
            pool = ThreadPoolExecutor(workers, thread_name_prefix="numpy_densenet",
                                      initializer=setattr, initargs=(_worker, "busy", True))
            started = threading.Barrier(workers + 1)
            for _ in range(workers):
                pool.submit(started.wait)                # each waits for the others: one new thread each
            started.wait()
            _state["pool"] = pool
        return _state["pool"]


# -- sharing out work ----------------------------------------------------------------------------------------
def parallel_for(function, items):
    """``[function(item) for item in items]``, the items shared out between the threads.

    Each thread, the calling one included, takes the next item not yet taken until none is left, so uneven
    pieces balance out. The pieces must be independent (write to disjoint outputs). Results come back in the
    order of ``items``; an exception in any piece is raised here.
    """
    items = list(items)
    threads = min(get_num_threads(), len(items))
    if threads <= 1 or getattr(_worker, "busy", False):
        return [function(item) for item in items]
    results = [None] * len(items)
    counter, counter_lock = itertools.count(), threading.Lock()
    failed = []                                          # after an exception no thread takes a new piece

    def work():
        while not failed:
            with counter_lock:
                i = next(counter)
            if i >= len(items):
                return
            try:
                results[i] = function(items[i])
            except BaseException:
                failed.append(i)
                raise

    futures = [_pool().submit(work) for _ in range(threads - 1)]
    _worker.busy = True                                  # a piece that calls parallel_for runs it serially
    try:
        work()
    finally:
        _worker.busy = False
        for future in futures:
            future.result()
    return results


def split(n, parts, multiple=1):
    """``parts`` consecutive slices covering range(n), of near-equal lengths that are multiples of ``multiple``
    (except the last); fewer if n is small; ``[slice(0, 0)]`` for n = 0 (an empty batch)."""
    if n <= 0:
        return [slice(0, 0)]
    step = -(-n // parts)
    step = -(-step // multiple) * multiple
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def matmul(a, b, split_inner=False, out=None):
    """``a @ b`` for 2-D arrays, computed by all threads.

    a : (m, k), b : (k, n) -> (m, n), in the arrays' common dtype, written into ``out`` if given.

    By default b's (and the output's) columns are split between the threads. With ``split_inner=True`` the
    inner dimension k is split instead and the partial products are summed (in a fixed order): the better
    choice when k is long and m, n are small, as for a weight gradient summed over every pixel of a batch.
    """
    m, k = a.shape
    n = b.shape[1]
    if b.shape[0] != k:
        raise ValueError(f"matmul: inner dimensions differ, {a.shape} @ {b.shape}")
    length = k if split_inner else n
    parts = min(get_num_threads(), length // MIN_COLUMNS_PER_THREAD)
    if getattr(_worker, "busy", False) or get_num_threads() == 1:
        return np.matmul(a, b, out=out)                 # inside a piece (OpenBLAS already on one thread), or
    if parts <= 1 or 2 * m * n * k < MIN_FLOPS_TO_SPLIT:  # no threads of ours: OpenBLAS as the caller set it
        with blas_single_threaded():                    # small: one thread, and OpenBLAS's workers stay asleep
            return np.matmul(a, b, out=out)
    with blas_single_threaded():
        pieces = split(length, parts, multiple=16)
        if split_inner:
            partial = parallel_for(lambda s: a[:, s] @ b[s], pieces)              # each (m, n)
            total = partial[0]
            for p in partial[1:]:
                total += p
            if out is None:
                return total
            out[...] = total
            return out
        out = np.empty((m, n), dtype=np.result_type(a, b)) if out is None else out
        parallel_for(lambda s: np.matmul(a, b[:, s], out=out[:, s]), pieces)     # columns s of the output
        return out


def elementwise(function, *arrays):
    """``function(*arrays)`` for an element-wise function that writes its result into its last argument,
    run on pieces of the arrays (all of one shape) shared out between the threads: blocks of the flattened
    arrays if all are C-contiguous, else blocks of the first axis."""
    shape = arrays[0].shape
    size = arrays[0].size
    if size < MIN_ELEMENTS_TO_SPLIT or len(shape) == 0 or get_num_threads() == 1:
        function(*arrays)
        return
    if all(a.flags.c_contiguous for a in arrays):
        flat = [a.reshape(-1) for a in arrays]
        step = 1 << 18                                                          # values per piece
        parallel_for(lambda s: function(*(f[s] for f in flat)), [slice(i, i + step) for i in range(0, size, step)])
    else:
        rows = max(1, (1 << 18) * shape[0] // size)
        parallel_for(lambda r: function(*(a[r] for a in arrays)),
                     [slice(i, i + rows) for i in range(0, shape[0], rows)])


def add_into(a, b):
    """``a += b`` for arrays of the same shape, shared between the threads."""
    elementwise(lambda a_, b_, out: np.add(a_, b_, out=out), a, b, a)
    return a
