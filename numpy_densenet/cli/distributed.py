"""``numpy-densenet train --distributed``: what each MPI rank of a command-line run sets up, and how a failure on
one rank ends the whole job instead of leaving the others waiting."""
from __future__ import annotations

import os

from ..fast.threads import set_blas_threads, set_num_threads
from ..training.distributed import abort_on_error, get_comm, threads_per_rank

__all__ = ["CommandLineRank", "train_entry"]


class CommandLineRank:
    """What ``numpy-densenet train --distributed`` sets up on each rank (see :func:`train_entry`).

    * threads: unless ``OMP_NUM_THREADS`` or ``OPENBLAS_NUM_THREADS`` is set, numpy_densenet's threads and
      OpenBLAS's are set to :func:`~numpy_densenet.training.distributed.threads_per_rank` (the node's cores / its
      ranks);
    * ``log``: prints (flushed) on rank 0 and is silent on the others;
    * ``options``: the ``distributed`` argument of :func:`numpy_densenet.training.train`.
    """

    def __init__(self, sync_bn=True, comm=None):
        self.comm = get_comm(comm)
        self.rank = self.comm.Get_rank()
        self.options = dict(comm=self.comm, sync_bn=sync_bn)
        if not (os.environ.get("OMP_NUM_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS")):
            n = threads_per_rank(self.comm)
            set_num_threads(n)
            set_blas_threads(n)

    def log(self, line):
        if self.rank == 0:
            print(line, flush=True)


def train_entry(command, args, *rest, expected=()):
    """Run a command-line function ``command(args, *rest)``; with ``args.distributed`` on every MPI rank, with
    ``args.rank`` set to a :class:`CommandLineRank`, and any rank's failure - a usage error included - printed
    with its rank and ending the whole job (MPI_Abort) instead of leaving the other ranks waiting. Exceptions
    of the ``expected`` types are printed as their message alone (no traceback)."""
    if not getattr(args, "distributed", False):
        return command(args, *rest)
    with abort_on_error(expected=expected):
        args.rank = CommandLineRank(sync_bn=getattr(args, "sync_bn", True))
        code = command(args, *rest)
        if code:
            raise SystemExit(code)
        return code
