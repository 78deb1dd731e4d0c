"""``numpy-densenet train --distributed``: what each MPI rank of a command-line run sets up, and how a failure on
one rank ends the whole job instead of leaving the others waiting."""
from __future__ import annotations

import os

from ..fast.threads import set_blas_threads, set_num_threads
from ..training.distributed import RanksDisagree, abort_on_error, agree, finish_mpi, get_comm, threads_per_rank

__all__ = ["CommandLineRank", "train_entry", "launched_ranks", "command_line"]


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


#: the environment variables in which MPI launchers (MPICH's and Intel's mpiexec, Open MPI, MVAPICH, srun with
#: PMI-2) tell a process how many ranks they started
MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
PATH_OPTIONS = ("out", "data_dir", "resume")     # where things are on each node: may differ between the ranks


def launched_ranks():
    """How many processes the MPI launcher started for this job (1 outside ``mpiexec``)."""
    for name in MPI_SIZE_VARIABLES:
        text = os.environ.get(name, "")
        if text.isdigit():
            return int(text)
    return 1


def command_line(args):
    """What every rank's command line must have alike: ``--distributed``, and with it every option given
    (but the paths, which may differ between nodes), as a dict ``{"--flag": value}``."""
    if not getattr(args, "distributed", False):
        return {"--distributed": False}
    given = {k: v for k, v in vars(args).items() if k not in PATH_OPTIONS + ("func", "command", "rank", "distributed")}
    return {"--distributed": True, **{"--" + k.replace("_", "-"): v for k, v in sorted(given.items())}}


def train_entry(command, args, *rest, expected=()):
    """Run a command-line function ``command(args, *rest)``; with ``args.distributed`` on every MPI rank, with
    ``args.rank`` set to a :class:`CommandLineRank`, and any rank's failure - a usage error included - printed
    with its rank and ending the whole job (MPI_Abort) instead of leaving the other ranks waiting. Exceptions
    of the ``expected`` types are printed as their message alone (no traceback).

    Under an MPI launcher every rank first compares its command line with rank 0's (:func:`command_line`,
    :func:`~numpy_densenet.training.distributed.agree`, with a timeout): a rank started without
    ``--distributed`` beside ranks with it, or with other options, ends the job on every rank with one line
    naming the option and both values; so does a launch of several ranks none of which has ``--distributed``
    (each would train the whole run alone)."""
    distributed = getattr(args, "distributed", False)
    if not distributed and launched_ranks() <= 1:
        return command(args, *rest)
    try:
        comm = get_comm()
    except ImportError:
        if distributed:
            raise
        return command(args, *rest)          # no MPI here to join: the other ranks cannot have it either
    try:
        with abort_on_error(comm, expected=expected):
            agree(comm, command_line(args), "command lines")
            if not distributed:              # on no rank: each would train the whole run alone, on one --out
                raise RanksDisagree(f"this process is one of the {comm.Get_size()} ranks an MPI launcher started, "
                                    f"but --distributed was not given: each rank would train the whole run alone; "
                                    f"add --distributed to train data-parallel, or start one process without "
                                    f"mpiexec", quiet=comm.Get_rank() != 0)
            args.rank = CommandLineRank(sync_bn=getattr(args, "sync_bn", True), comm=comm)
            code = command(args, *rest)
            if code:
                raise SystemExit(code)
            return code
    except BaseException as e:
        if getattr(e, "every_rank", False):  # every rank ends here alike: no abort, the exit status is the ranks'
            finish_mpi()
        raise
