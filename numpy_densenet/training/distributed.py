"""Data-parallel training over MPI, with synchronised BatchNorm: :class:`DataParallel`.

P processes (ranks) each hold a full copy of the model and take a slice of every batch::

    mpiexec -n 4 python -m mpi4py my_script.py          # or: ... -m numpy_densenet train --distributed

    from numpy_densenet import densenet_bc, nn
    from numpy_densenet.training.distributed import DataParallel
    model = DataParallel(densenet_bc(100, 12, seed=0))   # rank 0's weights and buffers sent to every rank
    xb, yb = xb[model.shard(len(xb))], yb[model.shard(len(yb))]   # this rank's slice of the global batch
    logits = model(xb)                                   # BatchNorm with the whole batch's statistics
    loss = criterion(logits, yb)
    model.backward(criterion.backward())                 # gradients summed over the ranks, divided by P
    optimizer.step()                                     # the same update on every rank

What P ranks compute (``sync_bn=True``, the default) is what one process computes on the whole batch, to
rounding (tested to 1e-12 in float64):

* **Gradients.** Every parameter's ``.grad`` is a view into one flat buffer; after backward one in-place
  ``Allreduce`` (MPI's buffer API: no pickling) sums it over the ranks, and it is divided by P. Each rank's
  loss gradient is first weighted by ``P * n_rank / N`` (1 when the slices are equal), so that the result is the
  gradient of the mean loss over the whole batch of N images even when N is not a multiple of P.
* **Synchronised BatchNorm** (PyTorch's ``SyncBatchNorm``). In train mode every BatchNorm normalises with the
  whole batch's mean and biased variance: each rank's per-channel (count, mean, M2 = count * variance) are
  gathered and merged with Chan et al.'s formula, M2 = sum(M2_r) + sum(n_r * (mean_r - mean)^2), in rank order
  on every rank, so all ranks hold the same statistics. The running statistics are updated with the global
  mean, the unbiased global variance and the global count. Backward sums the per-channel sum(dy) and
  sum(dy * xhat) over the ranks (2C values) between its two passes. :func:`convert_sync_batchnorm` (as
  PyTorch's ``SyncBatchNorm.convert_sync_batchnorm``) turns every BatchNorm of both tiers into its synchronised
  subclass, which overrides the two places where a BatchNorm sees its whole batch (``batch_statistics`` and the
  backward sums); the fast tier's dense block, which computes each feature map's statistics once and shares
  them with all its consumers, synchronises them once the same way.

``sync_bn=False`` gives PyTorch DDP's default instead: each rank normalises with its own slice's statistics, so
the gradients differ from one process's on the whole batch (by up to 1.5x a tensor's largest entry for a tiny
DenseNet on 3 + 3 images, tests/test_distributed.py), and the running statistics, which then differ between
ranks, are rank 0's: :meth:`DataParallel.broadcast_buffers` sends them to every rank, which
:meth:`DataParallel.eval` and the training loop do before every evaluation and checkpoint.

Threads: each rank runs numpy_densenet's threads and OpenBLAS's; on a node with R ranks and C cores give each
rank at most C // R threads (:func:`threads_per_rank`, used by ``train --distributed``), or they oversubscribe
the cores. See docs/distributed.md for running on a cluster.

mpi4py is an optional dependency: ``pip install "numpy_densenet[mpi]"`` (mpi4py and the MPICH wheel); on a
cluster build mpi4py against the site's MPI instead.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from contextlib import contextmanager

import numpy as np

from .. import fast
from ..nn import BatchNorm2d
from .options import TrainingError
from .steps import evaluate as evaluate_one

__all__ = ["DataParallel", "convert_sync_batchnorm", "local_statistics", "get_comm", "threads_per_rank", "shard",
           "evaluate", "abort_on_error", "RanksDisagree", "agree", "wait_for_every_rank", "rank_timeout", "finish_mpi"]


def get_comm(comm=None):
    """``comm``, or MPI's COMM_WORLD; a clear ImportError when mpi4py is missing."""
    if comm is not None:
        return comm
    return _mpi().COMM_WORLD


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError('numpy_densenet.training.distributed needs mpi4py: pip install "numpy_densenet[mpi]" '
                          '(mpi4py and the MPICH wheel), or on a cluster mpi4py built against the site MPI') from None
    return MPI


def shard(n, rank, size):
    """Rank ``rank``'s slice of a batch of ``n`` items split between ``size`` ranks: consecutive slices whose
    lengths differ by at most one (the first ``n % size`` ranks get one more)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


# -- synchronised BatchNorm ------------------------------------------------------------------------------------
def merged_statistics(comm, mean, var, count):
    """Each rank's (mean, biased var) per channel over ``count`` values -> the whole batch's, identical on every
    rank: (mean, var, total count).

    One ``Allgather`` of (count, mean, M2) from every rank, then Chan et al.'s merge in rank order:
    mean = sum(n_r mean_r) / n, M2 = sum(M2_r) + sum(n_r (mean_r - mean)^2), var = M2 / n.
    mean, var : (C,) -> (C,) in their own dtype (computed in float64); count : int -> int.
    """
    C = np.shape(mean)[0]
    mine = np.empty(2 * C + 1)
    mine[0] = count
    mine[1:C + 1] = mean
    mine[C + 1:] = np.asarray(var, dtype=np.float64) * count                 # M2 of this rank's values
    every = np.empty((comm.Get_size(), 2 * C + 1))
    comm.Allgather(mine, every)
    counts, means, m2 = every[:, :1], every[:, 1:C + 1], every[:, C + 1:]
    n = counts.sum()
    merged_mean = (counts * means).sum(axis=0) / n
    merged_m2 = m2.sum(axis=0) + (counts * (means - merged_mean) ** 2).sum(axis=0)
    return merged_mean.astype(np.result_type(mean)), (merged_m2 / n).astype(np.result_type(var)), int(n)


def summed_over_ranks(comm, sums):
    """(2, C) per-channel [sum(dy), sum(dy * xhat)] -> summed over the ranks (one Allreduce of 2C values)."""
    total = np.array(sums, dtype=np.float64)                                 # a contiguous copy to reduce in place
    comm.Allreduce(_mpi().IN_PLACE, total, op=_mpi().SUM)
    return total.astype(np.result_type(sums), copy=False)


class SyncBatchStatistics:
    """Mixin: the batch statistics are the whole batch's, over every rank of ``self.comm``."""

    comm = None

    def batch_statistics(self, x):
        return merged_statistics(self.comm, *super().batch_statistics(x))


class SyncBatchNorm2d(SyncBatchStatistics, BatchNorm2d):
    """The plain :class:`~numpy_densenet.nn.BatchNorm2d` over a batch that spans the ranks of ``comm``."""

    def input_gradient(self, dout, xhat, scale, dbias, dweight, M):
        dbias, dweight = summed_over_ranks(self.comm, np.stack([dbias, dweight]))
        return super().input_gradient(dout, xhat, scale, dbias, dweight, M)


class SyncFastBatchNorm2d(SyncBatchStatistics, fast.BatchNorm2d):
    """The fast :class:`~numpy_densenet.fast.BatchNorm2d` over a batch that spans the ranks of ``comm``."""

    def backward_cnhw(self, dout, out=None, reduce_sums=None):
        return super().backward_cnhw(dout, out, reduce_sums=lambda sums: summed_over_ranks(self.comm, sums))


class SyncFastBatchNormReLU2d(SyncFastBatchNorm2d, fast.BatchNormReLU2d):
    """The fast :class:`~numpy_densenet.fast.BatchNormReLU2d` over a batch that spans the ranks of ``comm``."""


class SyncFastDenseBlock(fast.DenseBlock):
    """The fast :class:`~numpy_densenet.fast.DenseBlock`, its shared feature statistics the whole batch's."""

    comm = None

    def feature_statistics(self, x):
        return merged_statistics(self.comm, *super().feature_statistics(x))


#: each layer class with statistics, and its synchronised subclass (most derived first)
SYNCHRONISED = ((fast.BatchNormReLU2d, SyncFastBatchNormReLU2d), (fast.BatchNorm2d, SyncFastBatchNorm2d),
                (BatchNorm2d, SyncBatchNorm2d), (fast.DenseBlock, SyncFastDenseBlock))


def _synchronised_class(module):
    for base, synced in SYNCHRONISED:
        if type(module) is base:
            return synced
    return None


def convert_sync_batchnorm(model, comm):
    """Turn every BatchNorm of ``model`` (both tiers, and the fast dense blocks' shared statistics) into its
    synchronised subclass, in place: the same parameters and buffers, with the statistics of the whole batch
    over the ranks of ``comm`` (PyTorch's ``SyncBatchNorm.convert_sync_batchnorm``). Returns ``model``.
    A layer of another class with statistics raises TypeError: it would silently use its own slice's."""
    for name, m in model.named_modules():
        synced = _synchronised_class(m)
        if synced is not None:
            m.__class__ = synced                    # a subclass with no state of its own: only its methods
            m.comm = comm
        elif isinstance(m, (BatchNorm2d, fast.DenseBlock)) and not isinstance(m, (SyncBatchStatistics,
                                                                                 SyncFastDenseBlock)):
            raise TypeError(f"convert_sync_batchnorm: {name or 'the model'} is a {type(m).__name__}, which has no "
                            f"synchronised version")
    return model


@contextmanager
def local_statistics(model):
    """Inside the block, every synchronised layer of ``model`` uses this rank's own statistics (no collective
    call); their synchronised classes are put back after."""
    unsynced = {synced: base for base, synced in SYNCHRONISED}
    changed = [(m, type(m)) for m in model.modules() if type(m) in unsynced]
    for m, cls in changed:
        m.__class__ = unsynced[cls]
    try:
        yield model
    finally:
        for m, cls in changed:
            m.__class__ = cls


class DataParallel:
    """Data-parallel training of ``model`` over the ranks of ``comm`` (see the module docstring).

    Parameters
    ----------
    model : Module
        A DenseNet (either tier) or any module of the layer protocol; every rank builds it. Its parameters'
        ``.grad`` become views into one flat buffer: do not convert its dtype afterwards.
    comm : mpi4py communicator, optional
        Default MPI.COMM_WORLD.
    sync_bn : bool
        True: every BatchNorm normalises with the whole (global) batch's statistics, so P ranks compute what
        one process computes on the whole batch. False: per-rank statistics, as PyTorch DDP by default.

    Attributes
    ----------
    module : Module
        The wrapped model; ``state_dict``, ``train``/``eval``, ``named_parameters`` ... reach it through this
        wrapper too.
    rank, world_size : int
    grad_buffer : ndarray (num_parameters,)
        The flat gradient every parameter's ``.grad`` is a view of.

    Shapes: as the model's: x (n_rank, C, H, W) -> logits (n_rank, num_classes), n_rank this rank's slice.
    """

    def __init__(self, model, comm=None, sync_bn=True):
        if not hasattr(model, "named_parameters") or not hasattr(model, "backward"):
            raise TypeError(f"DataParallel: model must be a numpy_densenet Module, got {type(model).__name__}")
        if not isinstance(sync_bn, (bool, np.bool_)):
            raise TypeError(f"DataParallel: sync_bn must be True or False, got {sync_bn!r}")
        self.module = model
        self.comm = get_comm(comm)
        self.rank, self.world_size = self.comm.Get_rank(), self.comm.Get_size()
        self.sync_bn = bool(sync_bn)
        params = list(model.parameters())
        dtypes = {p.data.dtype for p in params}
        if len(dtypes) > 1:
            raise TypeError(f"DataParallel: every parameter must have one dtype, got {sorted(map(str, dtypes))}")
        self.grad_buffer = np.zeros(sum(p.data.size for p in params), dtype=dtypes.pop() if dtypes else np.float32)
        offset = 0
        for p in params:                                     # .grad becomes a view: backward adds into it
            view = self.grad_buffer[offset:offset + p.data.size].reshape(p.data.shape)
            view[...] = p.grad
            p.grad = view
            offset += p.data.size
        if self.sync_bn:
            convert_sync_batchnorm(model, self.comm)
        self.broadcast_parameters()
        self.broadcast_buffers()
        self.decorrelate_dropout()
        self._count = None

    @property
    def is_root(self):
        """True on rank 0, the rank that writes files and logs."""
        return self.rank == 0

    # -- the model's interface -------------------------------------------------------------------------------
    def __getattr__(self, name):                             # state_dict, named_parameters, train, eval, ...
        if name == "module":
            raise AttributeError(name)
        return getattr(self.module, name)

    def __call__(self, x):
        return self.forward(x)

    def eval(self):
        """Eval mode; with ``sync_bn=False`` rank 0's running statistics are broadcast first (a collective call:
        every rank must make it), so that every rank evaluates the same model."""
        if not self.sync_bn:
            self.broadcast_buffers()
        self.module.eval()
        return self

    def forward(self, x):
        """x: (n_rank, C, H, W), this rank's slice -> logits (n_rank, num_classes)."""
        self._count = np.shape(x)[0]
        return self.module(x)

    def backward(self, dlogits, sync=True):
        """dlogits: (n_rank, K), the gradient of the mean loss over this rank's slice -> dx (n_rank, C, H, W).

        Weights dlogits by ``P * n_rank / N`` (N the whole batch) unless every rank has the same n_rank, runs
        the model's backward, and with ``sync`` (the default) sums the gradients over the ranks and divides by
        P: every ``.grad`` then holds the gradient of the mean loss over the whole batch, on every rank.
        ``sync=False`` leaves the gradients local (to accumulate several backwards; the last one syncs).
        Call ``zero_grad`` before the next synced backward: a synced gradient is not summed again.
        """
        if self._count is None:
            raise RuntimeError("DataParallel.backward called before forward")
        counts = np.empty(self.world_size, dtype=np.int64)
        self.comm.Allgather(np.array([self._count], dtype=np.int64), counts)
        if (counts != counts[0]).any():
            dlogits = dlogits * (self.world_size * self._count / counts.sum())
        dx = self.module.backward(dlogits)
        if sync:
            self.allreduce_gradients()
        return dx

    def forward_stages(self, x):
        """The model's ``forward_stages`` with this rank's own BatchNorm statistics, making no collective call:
        it diagnoses a failure seen on one rank only (the training loop's first non-finite output), when the
        other ranks are elsewhere."""
        with local_statistics(self.module):
            yield from self.module.forward_stages(x)

    # -- collectives -----------------------------------------------------------------------------------------
    def allreduce_gradients(self):
        """Sum the flat gradient over the ranks (one in-place Allreduce), then divide by P."""
        MPI = _mpi()
        self.comm.Allreduce(MPI.IN_PLACE, self.grad_buffer, op=MPI.SUM)
        if self.world_size > 1:
            self.grad_buffer /= self.world_size

    def broadcast_parameters(self, root=0):
        """Every parameter's value from rank ``root`` to every rank."""
        for p in self.module.parameters():
            self.comm.Bcast(p.data, root=root)

    def broadcast_buffers(self, root=0):
        """Every buffer (BatchNorm running statistics, counters) from rank ``root`` to every rank; needed with
        ``sync_bn=False`` before evaluating or saving (with ``sync_bn=True`` they are equal already)."""
        for name, _ in self.module.named_buffers():
            owner, attr = self._owner(name)
            value = np.ascontiguousarray(getattr(owner, attr))
            self.comm.Bcast(value, root=root)
            getattr(owner, attr)[...] = value

    def decorrelate_dropout(self):
        """Give every rank but 0 its own Dropout masks: each generator is re-seeded from a draw of its current
        stream and the rank (rank 0's is left alone). Without this, ranks built from one seed would apply the
        same masks to their different slices. Dropout therefore makes a P-rank run differ from a one-process
        run (and a resumed run from an uninterrupted one: the checkpoint holds rank 0's generators, and this is
        called again after loading them)."""
        if self.rank == 0:
            return
        for m in self.module.modules():
            g = getattr(m, "generator", None)
            if isinstance(g, np.random.Generator):
                seed = np.random.SeedSequence([int(g.integers(2**63)), self.rank])
                g.bit_generator.state = type(g.bit_generator)(seed).state

    def any_rank(self, flag):
        """True on every rank if ``flag`` is true on any (e.g. a stop request, so that all stop at one step)."""
        return bool(self.sum_over_ranks([1.0 if flag else 0.0])[0] > 0)

    def max_over_ranks(self, values):
        """The largest of a few numbers over the ranks, element-wise: a float64 array, the same on every rank
        (a stop request and the signal behind it, so that all stop after one step for one reason)."""
        total = np.array(values, dtype=np.float64).ravel()
        self.comm.Allreduce(_mpi().IN_PLACE, total, op=_mpi().MAX)
        return total

    def _owner(self, dotted):
        *path, attr = dotted.split(".")
        owner = self.module
        for part in path:
            owner = getattr(owner, part)
        return owner, attr

    def shard(self, n):
        """This rank's slice of a batch of n: see :func:`shard`."""
        return shard(n, self.rank, self.world_size)

    def sum_over_ranks(self, values):
        """Sum a few numbers (e.g. loss * n, correct, n) over the ranks: float64 array, the same on every rank."""
        total = np.array(values, dtype=np.float64).ravel()
        self.comm.Allreduce(_mpi().IN_PLACE, total, op=_mpi().SUM)
        return total

    def max_difference_between_ranks(self):
        """The largest |difference| of any parameter or buffer from rank 0's (0.0 when all ranks agree)."""
        worst = 0.0
        arrays = [p.data for p in self.module.parameters()] + [b for _, b in self.module.named_buffers()]
        for a in arrays:
            mine = np.ascontiguousarray(a)
            root = mine.copy()
            self.comm.Bcast(root, root=0)
            worst = max(worst, float(np.max(np.abs(mine.astype(np.float64) - root), initial=0.0)))
        return self.comm.allreduce(worst, op=_mpi().MAX)


def evaluate(dp, x, y, **kwargs):
    """:func:`numpy_densenet.training.evaluate` of ``dp``'s model with the images shared between the ranks: each
    evaluates its slice, and the summed loss and confusion matrix are added up over the ranks. The same dict
    (loss, acc, confusion, per_class_acc) on every rank. Running statistics are rank 0's (broadcast first)."""
    dp.broadcast_buffers()
    s = dp.shard(len(y))
    mine = evaluate_one(dp.module, x[s], y[s], **kwargs)
    n = len(y[s])
    total = dp.sum_over_ranks(np.concatenate([[mine["loss"] * n], mine["confusion"].ravel()]))
    confusion = np.rint(total[1:]).astype(np.int64).reshape(mine["confusion"].shape)
    count = max(int(confusion.sum()), 1)
    return dict(loss=float(total[0]) / count, acc=float(np.trace(confusion)) / count, confusion=confusion,
                per_class_acc=np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1))


def threads_per_rank(comm=None, cores=None):
    """How many threads each rank should use so that threads per rank x ranks per node <= cores (at least 1).

    The ranks of a node are found with ``Split_type(COMM_TYPE_SHARED)``. Each rank may run on the cores of its
    affinity mask (``os.sched_getaffinity``: the whole node under a plain ``mpiexec``, its own cores under
    ``srun --cpus-per-task`` or ``--bind-to core``); those are divided between the ranks of the node whose masks
    overlap it. ``cores``: divide that many cores between the node's ranks instead.
    """
    comm = get_comm(comm)
    node = comm.Split_type(_mpi().COMM_TYPE_SHARED)
    try:
        if cores is not None:
            return max(1, int(cores) // node.Get_size())
        mine = set(os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1))
        masks = node.allgather(sorted(mine))
    finally:
        node.Free()
    sharing = sum(1 for m in masks if mine & set(m))                 # this rank included
    return max(1, len(mine) // sharing)


# -- checks that every rank runs the same thing, with a timeout ---------------------------------------------------
class RanksDisagree(TrainingError):
    """The ranks of a run were started with different options, read different data or resumed from different
    checkpoints. Raised on every rank at once (``every_rank``), so the job ends with rank 0's one message and no
    rank is left waiting; ``quiet`` on the other ranks."""

    def __init__(self, message, quiet=False):
        super().__init__(message)
        self.every_rank, self.quiet = True, quiet


def finish_mpi():
    """``MPI_Finalize``, when every rank ends at the same point with one outcome (ranks that disagree, a stop
    they agreed on): the job then ends with the ranks' exit status and no launcher's abort message."""
    MPI = _mpi()
    if not MPI.Is_finalized():
        MPI.Finalize()


def rank_timeout():
    """How long (seconds) a rank waits for the others at a check: ``$NUMPY_DENSENET_MPI_TIMEOUT``, default 120."""
    text = os.environ.get("NUMPY_DENSENET_MPI_TIMEOUT", "")
    try:
        value = float(text) if text else 120.0
    except ValueError:
        raise TrainingError(f"NUMPY_DENSENET_MPI_TIMEOUT must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise TrainingError(f"NUMPY_DENSENET_MPI_TIMEOUT must be positive, got {text!r}")
    return value


def wait_for_every_rank(comm, what, timeout=None):
    """A barrier with a timeout (a non-blocking ``Ibarrier``, polled): returns once every rank of ``comm`` has
    arrived; raises :class:`TrainingError` on this rank after ``timeout`` seconds (:func:`rank_timeout`), when a
    rank failed or runs something else. ``what`` names what the ranks meet to compare ("command lines")."""
    timeout = rank_timeout() if timeout is None else timeout
    request = comm.Ibarrier()
    deadline = time.monotonic() + timeout
    while not request.Test():
        if time.monotonic() > deadline:
            raise TrainingError(f"rank {comm.Get_rank()} of {comm.Get_size()} waited {timeout:g} s for the other "
                                f"ranks to compare their {what}, in vain: every rank must run the same command with "
                                f"--distributed (a rank that failed, or runs something else, leaves the others "
                                f"waiting); set NUMPY_DENSENET_MPI_TIMEOUT to wait longer")
        time.sleep(0.002)


def _broadcast_text(comm, text, root):
    """``text`` (a str on rank ``root``) on every rank, through the buffer interface (no pickling)."""
    data = np.frombuffer((text or "").encode(), dtype=np.uint8) if comm.Get_rank() == root else None
    size = np.array([0 if data is None else data.size], dtype=np.int64)
    comm.Bcast(size, root=root)
    buffer = data.copy() if data is not None else np.empty(int(size[0]), dtype=np.uint8)
    comm.Bcast(buffer, root=root)
    return buffer.tobytes().decode()


def agree(comm, description, what, timeout=None):
    """Check that every rank of ``comm`` has rank 0's ``description`` (a dict of JSON values, keyed by what
    they are, e.g. ``"--epochs"``), after :func:`wait_for_every_rank`. When any rank differs, every rank
    raises :class:`RanksDisagree` with one message naming the first differing entry of the lowest such rank and
    both values; nothing else is exchanged, so no rank waits."""
    wait_for_every_rank(comm, what, timeout)
    rank, size = comm.Get_rank(), comm.Get_size()
    root = json.loads(_broadcast_text(comm, json.dumps(description), 0))
    keys = list(root) + [k for k in description if k not in root]
    differ = next((k for k in keys if description.get(k) != root.get(k)), None)
    first = np.array([rank if differ is not None else size], dtype=np.int64)
    comm.Allreduce(_mpi().IN_PLACE, first, op=_mpi().MIN)
    if first[0] == size:
        return
    mine = None if differ is None else f"rank {rank} has {_entry(differ, description)}, rank 0 has {_entry(differ, root)}"
    message = _broadcast_text(comm, mine, int(first[0]))
    raise RanksDisagree(f"the ranks of this --distributed run differ in their {what}: {message}; every rank must run "
                        f"the same command and read the same data", quiet=rank != 0)


def _entry(key, description):
    return f"{key} {json.dumps(description[key])}" if key in description else f"no {key}"


@contextmanager
def abort_on_error(comm=None, stream=None, expected=()):
    """Inside the block, an exception on any rank prints its message (with the traceback, unless it is of one
    of the ``expected`` types or an interrupt) tagged with the rank, and calls ``MPI_Abort``, which ends every
    rank of the job: the others would otherwise wait forever in their next collective. ``SystemExit(0)`` and
    exceptions raised by every rank at once (``every_rank``: a stop all ranks agreed on, ranks that
    disagree) pass through."""
    comm = get_comm(comm)
    try:
        yield
    except SystemExit as e:
        if e.code in (0, None):
            raise
        _abort(comm, f"exited with status {e.code}", int(e.code) if isinstance(e.code, int) else 1, stream)
    except BaseException as e:  # noqa: BLE001
        if getattr(e, "every_rank", False):             # raised by every rank at once: nobody waits, no abort
            raise
        if isinstance(e, KeyboardInterrupt):            # a signal on this rank only, before the ranks could agree
            _abort(comm, f"{e or 'interrupted'}", getattr(e, "exit_status", 130), stream)
        elif isinstance(e, expected):
            _abort(comm, f"error: {e}", 2, stream)
        else:
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            _abort(comm, f"{type(e).__name__}: {e}\n{text}", 1, stream)


ABORT_GRACE = 0.5      # seconds between a rank's last words and MPI_Abort


def _abort(comm, message, code, stream=None):
    stream = stream or sys.stderr
    stream.write(f"[rank {comm.Get_rank()} of {comm.Get_size()}] {message.rstrip()}\n"
                 f"[rank {comm.Get_rank()}] aborting the MPI job\n")
    stream.flush()
    time.sleep(ABORT_GRACE)     # the launcher relays a rank's output on its own: an abort at once may lose it
    comm.Abort(code)
