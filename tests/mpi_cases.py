"""Run under MPI by tests/test_distributed.py: ``mpiexec -n 2 python -m mpi4py tests/mpi_cases.py CASE``.

Each case compares data-parallel training on the ranks with one process on the whole batch (every rank also
computes that reference itself, deterministically) and rank 0 prints one JSON line starting with "RESULT ".
"""
import json
import sys

import numpy as np

from numpy_densenet import DenseNet, nn, set_num_threads
from numpy_densenet.training.distributed import DataParallel, abort_on_error, get_comm
from numpy_densenet.optim import SGD


def tiny(fast, seed=1):
    return DenseNet(4, (2, 2), 8, bn_size=2, num_classes=5, stem="cifar", dtype=np.float64, seed=seed, fast=fast)


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, 8, 8)), rng.integers(0, 5, n)


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


def one_step(model, x, y, criterion):
    model.zero_grad()
    logits = model(x)
    loss = criterion(logits, y)
    model.backward(criterion.backward())
    return loss


def case_grads(comm):
    """The gradients (and running statistics) after one forward/backward, vs one process on the whole batch."""
    out = {}
    for fast in (True, False):
        for n in (6, 7):                                         # 7: unequal slices (4 + 3)
            x, y = batch(n)
            ref = tiny(fast)
            one_step(ref, x, y, nn.CrossEntropyLoss())
            for sync_bn in (True, False):
                seed = 1 if comm.Get_rank() == 0 else 100 + comm.Get_rank()          # the broadcast makes it 1
                dp = DataParallel(tiny(fast, seed=seed), comm, sync_bn=sync_bn)
                s = dp.shard(n)
                one_step(dp, x[s], y[s], nn.CrossEntropyLoss())
                grads = max(rel(p.grad, q.grad) for p, q in zip(dp.parameters(), ref.parameters()))
                stats = max(rel(b, rb) for (_, b), (_, rb)
                            in zip(dp.module.named_buffers(), ref.named_buffers()) if b.dtype.kind == "f")
                out[f"fast={fast} n={n} sync_bn={sync_bn}"] = dict(
                    grads=grads, running_stats=stats, between_ranks=dp.max_difference_between_ranks())
    return out


def case_sgd(comm):
    """Three SGD steps (Nesterov momentum, weight decay) vs one process on the whole batch."""
    out = {}
    for fast in (True, False):
        ref, dp = tiny(fast), DataParallel(tiny(fast), comm)
        opt_ref = SGD(ref.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
        opt_dp = SGD(dp.named_parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
        for step in range(3):
            x, y = batch(8, seed=step)
            one_step(ref, x, y, nn.CrossEntropyLoss())
            opt_ref.step()
            s = dp.shard(8)
            one_step(dp, x[s], y[s], nn.CrossEntropyLoss())
            opt_dp.step()
        params = max(rel(p.data, q.data) for p, q in zip(dp.parameters(), ref.parameters()))
        buffers = max(rel(b, rb) for (_, b), (_, rb) in zip(dp.named_buffers(), ref.named_buffers())
                      if b.dtype.kind == "f")
        out[f"fast={fast}"] = dict(params=params, buffers=buffers, between_ranks=dp.max_difference_between_ranks())
    return out


def case_threads(comm):
    """threads_per_rank on every rank: the node's cores (this rank's affinity mask) shared between the ranks."""
    import os

    from numpy_densenet.training.distributed import threads_per_rank
    return dict(threads=comm.allgather(threads_per_rank(comm)), cores=len(os.sched_getaffinity(0)),
                given=threads_per_rank(comm, cores=8))


def case_raise(comm):
    """Rank 1 fails before a collective that rank 0 is already waiting in."""
    with abort_on_error(comm):
        if comm.Get_rank() == 1:
            raise ValueError("planted failure on rank 1")
        comm.Barrier()                                           # rank 0 would wait here forever
    return {"unreachable": True}


def case_raise_uncaught(comm):
    """The same without abort_on_error: ``python -m mpi4py`` aborts the job on an unhandled exception."""
    if comm.Get_rank() == 1:
        raise ValueError("planted uncaught failure on rank 1")
    comm.Barrier()
    return {"unreachable": True}


def case_diverge(comm):
    """Rank 1's loss alone is NaN (as if it overflowed there): train_step's diagnosis on rank 1 runs the model's
    stages again, which must make no collective call (rank 0 is already in backward's), and the job must end
    with rank 1's message."""
    from numpy_densenet.training import train_step

    class Overflowing(nn.CrossEntropyLoss):
        def forward(self, logits, y):
            loss = super().forward(logits, y)
            return np.nan if comm.Get_rank() == 1 else loss

    dp = DataParallel(tiny(True), comm)                          # synchronised BatchNorm
    x, y = batch(6)
    s = dp.shard(6)
    with abort_on_error(comm):
        train_step(dp, Overflowing(), SGD(dp.named_parameters(), lr=0.1), x[s], y[s])
    return {"unreachable": True}


def case_train_resume(comm):
    """train(..., distributed={}) stopped after step 7 of the first epoch, then resumed from its checkpoint."""
    import os

    from numpy_densenet.training import TrainConfig, train
    out = sys.argv[2]
    cfg = TrainConfig(epochs=1, dtype="float64", out=out)
    log = print if comm.Get_rank() == 0 else (lambda line: None)
    train(cfg, log=log, distributed={}, on_step=lambda run: run.step == 7)
    stopped = np.load(os.path.join(out, "checkpoint.npz"))
    history = train(cfg, resume=os.path.join(out, "checkpoint.npz"), log=log, distributed={})
    return dict(stopped_at=int(json.loads(str(stopped["run.state"][()]))["step"]), epochs=len(history))


if __name__ == "__main__":
    set_num_threads(1)
    comm = get_comm()
    result = globals()[f"case_{sys.argv[1]}"](comm)
    if comm.Get_rank() == 0:
        print("RESULT " + json.dumps(result), flush=True)
