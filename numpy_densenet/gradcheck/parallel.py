"""Gradient checks on any ``concurrent.futures.Executor``: the finite-difference probes of
:func:`numpy_densenet.gradcheck.gradcheck` evaluated on worker processes, possibly on other machines.

``gradcheck(module, x, executor=pool)`` accepts the standard library's ``ProcessPoolExecutor``, loky's
``get_reusable_executor()``, Dask's ``Client.get_executor()``, or anything with ``submit(fn, *args)`` returning a
future with ``result()`` (a Ray adapter is below). The result is the same :class:`GradcheckResult` as a serial run
with ``numpy_densenet.set_num_threads(1)``, bit for bit: only the perturbed losses L(x + delta e_i) (or L(x + delta u)) are
computed remotely, by the same code on the same float64 copy of the module; the reference loss, the analytic
gradients and every judgement (tolerances, the kink tests with their extra evaluations) stay in the calling
process, as in a serial run.

How the work is shared:

* **Ship the model, not the probe.** The float64 module copy, the inputs, the upstream gradient and the saved
  random states are pickled once per check (182 kB for densenet_bc(16, 8), 6.3 MB for densenet_bc(100, 12));
  the probe's forward caches and analytic gradients are left behind.
* **Coarse tasks.** The probes are split into tasks of at least ``MIN_PROBES_PER_TASK`` = 16 probes (32
  forwards), about ``TASKS_PER_WORKER`` per worker: per-task overhead is 0.2-0.4 ms on a process pool, ~1 ms on
  Ray and 5-27 ms on Dask, against milliseconds to seconds per forward. In modes ``full`` and ``sampled`` every
  probe is known before any is judged, so gradcheck sends them all at once (:meth:`ParallelLosses.prefetch`):
  tasks then span tensors, a BatchNorm's few dozen probes share a task with the next tensor's, and no worker
  waits for one tensor's row to be judged. In ``directional`` mode each tensor's few directions go out when
  its row is checked.
* **A worker-side evaluator cache.** Each task carries the pickled payload and a key; a worker unpickles it the
  first time it sees the key and keeps it (the two most recent keys, per thread), so later tasks of the same
  check only run forwards.
* **One thread per worker.** Each worker sets numpy_densenet's threads (``numpy_densenet.set_num_threads(1)``) and OpenBLAS's
  to one: with several workers per machine more would oversubscribe the cores (forked workers also inherit
  the parent's counts). Give each machine as many workers as cores. :func:`one_thread` can also be passed as
  a pool's ``initializer``.

Processes started with ``spawn`` or ``forkserver`` (the default on macOS and Windows, and Dask's) import the
calling script again: keep the gradcheck call under ``if __name__ == "__main__":``.

Ray, which is not a dependency, needs a five-line adapter::

    import ray

    class RayExecutor:
        def __init__(self):
            self._run = ray.remote(num_cpus=1)(lambda fn, *args: fn(*args))
        def submit(self, fn, *args):
            return self._run.remote(fn, *args).future()     # a concurrent.futures.Future

    gradcheck(model, x, executor=RayExecutor())

Command line: ``numpy-densenet gradcheck --model --workers 2`` (a local process pool) or
``--scheduler tcp://host:8786`` (a running Dask scheduler; needs ``pip install "dask[distributed]"``).
"""
from __future__ import annotations

import copy
import math
import multiprocessing
import os
import pickle
import threading
import uuid
from collections import OrderedDict, deque
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ..fast.threads import get_num_threads, set_blas_threads, set_num_threads

MIN_PROBES_PER_TASK = 16
TASKS_PER_WORKER = 4            # enough tasks to balance uneven workers, few enough to keep tasks coarse
_KEEP = 2                       # evaluators cached per worker thread

# What the calling process keeps: analytic gradients, notes and this module's own handle.
_PARENT_ONLY = ("input_grads", "param_grads", "notes", "parallel", "reentrant", "accumulates")


class ParallelLosses:
    """Evaluates a gradcheck probe's perturbed losses on ``executor``.

    Parameters
    ----------
    executor : concurrent.futures.Executor or anything with ``submit(fn, *args) -> future``
    probe : numpy_densenet.gradcheck.probe.BaseProbe
        Built in this process; its module copy (or function), inputs, upstream gradient and saved states are
        shipped.
    probes_per_task : int, optional
        Probes (each two forwards, at +delta and -delta) per task; default: the probes split into about
        ``TASKS_PER_WORKER`` tasks per worker, at least ``MIN_PROBES_PER_TASK`` each.
    workers : int, optional
        How many workers the executor has, to size the tasks; found from the executor when it says.
    """

    def __init__(self, executor, probe, probes_per_task=None, workers=None):
        if not callable(getattr(executor, "submit", None)):
            raise TypeError(f"gradcheck: executor must have a submit(fn, *args) method (a "
                            f"concurrent.futures.Executor), got {type(executor).__name__}")
        if probes_per_task is not None and (not isinstance(probes_per_task, (int, np.integer)) or probes_per_task < 1):
            raise ValueError(f"gradcheck: probes_per_task must be a positive int, got {probes_per_task!r}")
        self.executor = executor
        self.probe = probe
        self.probes_per_task = probes_per_task
        self.workers = workers or worker_count(executor)
        self.key = uuid.uuid4().hex
        self._payload = None
        self.pending = deque()          # prefetched requests not yet taken, in order
        self._tasks = deque()           # their futures, in order
        self._values = deque()          # values of finished tasks not yet taken

    def payload(self):
        """The pickled probe without what only the caller needs (made once)."""
        if self._payload is None:
            self.probe.clear_caches()                                # no forward caches in the payload
            shipped = copy.copy(self.probe)                          # shallow: shares the module, inputs, ...
            for name in _PARENT_ONLY:
                shipped.__dict__.pop(name, None)
            shipped.targets = targets(self.probe)
            try:
                self._payload = pickle.dumps(shipped, protocol=pickle.HIGHEST_PROTOCOL)
            except (pickle.PicklingError, AttributeError, TypeError) as e:
                raise TypeError(f"executor: what is checked must be picklable to reach the workers (functions "
                                f"defined at module level, not lambdas or closures); pickling failed: {e}") from None
        return self._payload

    def losses(self, requests):
        """``requests``: a list of (target name, where, delta) with ``where`` an index tuple (one coordinate)
        or a direction array of the target's shape -> the list of L at each perturbed point, in order.

        Requests are kept in pairs (the +delta and -delta of one probe) when split into tasks. If they are the
        next ones :meth:`prefetch` sent, their values are taken from those tasks.
        """
        requests = list(requests)
        if not requests:
            return []
        if self._next_are(requests):
            return self._take(len(requests))
        self.pending.clear(), self._tasks.clear(), self._values.clear()    # not what was planned: drop it
        futures = self._submit(requests)
        values = []
        for f in futures:
            values += f.result()
        return values

    def prefetch(self, requests):
        """Send ``requests`` now, in coarse tasks across every tensor (all workers busy, however small each
        tensor), before any is needed; later :meth:`losses` calls asking for them in the same order wait only
        for their own tasks. gradcheck does this when every probe is known in advance (modes full, sampled)."""
        requests = list(requests)
        self.pending.extend(requests)
        self._tasks.extend(self._submit(requests))

    def _submit(self, requests):
        size = self.probes_per_task or max(MIN_PROBES_PER_TASK,
                                           math.ceil(len(requests) / 2 / (TASKS_PER_WORKER * self.workers)))
        size *= 2
        payload = self.payload()
        return [self.executor.submit(evaluate_task, self.key, payload, requests[i:i + size])
                for i in range(0, len(requests), size)]

    def _next_are(self, requests):
        if len(self.pending) < len(requests):
            return False
        for (name, where, delta), (name2, where2, delta2) in zip(requests, self.pending):
            same = where is where2 if isinstance(where, np.ndarray) else where == where2
            if name != name2 or delta != delta2 or not same:
                return False
        return True

    def _take(self, n):
        while len(self._values) < n:
            self._values.extend(self._tasks.popleft().result())
        for _ in range(n):
            self.pending.popleft()
        return [self._values.popleft() for _ in range(n)]


def targets(probe):
    """{name: ("input", i) or ("param", k)}: where each checked tensor lives in a probe."""
    where = {}
    for name, array, _ in probe.input_targets():
        where[name] = ("input", next(i for i, a in enumerate(probe.inputs) if a is array))
    for k, (name, _) in enumerate(probe.params):
        where[name] = ("param", k)
    return where


def worker_count(executor):
    """How many workers ``executor`` runs, as far as it says (process pools, loky, Dask), else os.cpu_count()."""
    n = getattr(executor, "_max_workers", None)
    if n:
        return int(n)
    client = getattr(executor, "_client", None)                     # dask.distributed ClientExecutor
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # noqa: BLE001 - only a sizing hint
            pass
    return os.cpu_count() or 1


# -- the worker side ---------------------------------------------------------------------------------------
_cache = threading.local()


def one_thread():
    """Make this process compute on one thread: numpy_densenet's threads and OpenBLAS's (idempotent)."""
    if get_num_threads() != 1:
        set_num_threads(1)
    set_blas_threads(1)


def evaluate_task(key, payload, requests):
    """Run on a worker: the losses at ``requests`` (see :meth:`ParallelLosses.losses`) as Python floats."""
    one_thread()
    probe = _evaluator(key, payload)
    return [perturbed_loss(probe, name, where, delta) for name, where, delta in requests]


def _evaluator(key, payload):
    """The unpickled probe for ``key``: cached per thread (a Dask worker may run tasks on several threads, and a
    probe is perturbed in place)."""
    evaluators = getattr(_cache, "evaluators", None)
    if evaluators is None:
        evaluators = _cache.evaluators = OrderedDict()
    if key not in evaluators:
        evaluators[key] = pickle.loads(payload)
        while len(evaluators) > _KEEP:
            evaluators.popitem(last=False)
    evaluators.move_to_end(key)
    return evaluators[key]


def perturbed_loss(probe, name, where, delta):
    """L with tensor ``name`` perturbed by ``delta`` at index tuple ``where`` or along direction array ``where``,
    then restored; the same arithmetic as gradcheck's serial probes (x[i] = x[i] + delta; x = x0 + delta * u)."""
    kind, i = probe.targets[name]
    array = probe.inputs[i] if kind == "input" else probe.params[i][1].data
    if isinstance(where, tuple):
        original = array[where]
        array[where] = original + delta
        value = probe.loss()
        array[where] = original
    else:
        original = array.copy()
        np.add(original, delta * where, out=array)
        value = probe.loss()
        array[...] = original
    return value


# -- the command line's executors ----------------------------------------------------------------------------
class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def executor_for(workers=None, scheduler=None):
    """A context manager giving the executor of ``gradcheck --workers N`` / ``--scheduler ADDRESS`` (or None).

    ``workers``: a local ``ProcessPoolExecutor`` of that many one-thread workers (spawned: no inherited thread
    pools or locks). ``scheduler``: a running Dask scheduler's address (``tcp://host:8786``), through
    ``Client(address).get_executor()``; needs ``pip install "dask[distributed]"``. Raises ValueError for both, or
    for workers < 1, and ImportError naming the install for a missing Dask.
    """
    if workers is not None and scheduler is not None:
        raise ValueError("give --workers or --scheduler, not both")
    if scheduler is not None:
        try:
            from distributed import Client
        except ImportError:
            raise ImportError('--scheduler needs Dask: pip install "dask[distributed]"') from None
        return _DaskExecutor(Client(scheduler))
    if workers is None:
        return _Nothing()
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    return ProcessPoolExecutor(int(workers), mp_context=multiprocessing.get_context("spawn"), initializer=one_thread)


class _DaskExecutor:
    def __init__(self, client):
        self.client = client

    def __enter__(self):
        return self.client.get_executor()

    def __exit__(self, *exc):
        self.client.close()
        return False
