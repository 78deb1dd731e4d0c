"""Synchronised BatchNorm (numpy_densenet.training.distributed) checked in one process: the gradient-check cases of
its layers, run through a one-process stand-in for an mpi4py communicator.

These cases live here, not in numpy_densenet.gradcheck.cases: the checker may not import the training package
(tests/test_layering.py). With one process the whole batch is this process's slice, so the synchronised layers
compute what the plain ones do, but through their own code: the merged statistics, and the backward's two passes
with the per-channel sums reduced between them. tests/test_gradcheck_cases.py checks them and counts them in its
coverage of the backward passes; benchmarks/bench_mutation.py adds them to the default cases it measures.
"""
import numpy as np

from numpy_densenet import fast, model, nn
from numpy_densenet.gradcheck import Case
from numpy_densenet.training import distributed
from numpy_densenet.zoo import DenseNet


class OneProcess:
    """What numpy_densenet.training.distributed asks of an mpi4py communicator, for a world of one process: the
    collectives on NumPy buffers return this process's own values."""

    def Get_size(self):  # noqa: N802 - mpi4py's names
        return 1

    def Get_rank(self):  # noqa: N802
        return 0

    def Allgather(self, sendbuf, recvbuf):  # noqa: N802
        recvbuf[...] = np.reshape(sendbuf, recvbuf.shape)

    def Allreduce(self, sendbuf, recvbuf, op=None):  # noqa: N802 - sendbuf may be MPI.IN_PLACE
        if isinstance(sendbuf, np.ndarray):
            recvbuf[...] = sendbuf

    def Bcast(self, buf, root=0):  # noqa: N802
        pass

    def allreduce(self, value, op=None):
        return value


def sync_cases(rng):
    """Case list: every synchronised layer class in train mode, through convert_sync_batchnorm, and a tiny DenseNet
    of each tier converted as a whole (its fast dense blocks share synchronised feature statistics)."""
    comm = OneProcess()

    def bn(layer):
        layer.weight.data[...] = rng.uniform(0.5, 1.5, layer.num_features)
        layer.bias.data[...] = rng.standard_normal(layer.num_features)
        return distributed.convert_sync_batchnorm(layer, comm)

    x = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    cases = [
        ("SyncBatchNorm2d (plain)", bn(nn.BatchNorm2d(3)), x(4, 3, 3, 3)),
        ("SyncFastBatchNorm2d", bn(fast.BatchNorm2d(3)), x(4, 3, 3, 3)),
        ("SyncFastBatchNormReLU2d", bn(fast.BatchNormReLU2d(3)), x(4, 3, 3, 3)),
        ("SyncFastDenseBlock", distributed.convert_sync_batchnorm(
            fast.DenseBlock(2, 3, 2, 2, rng=np.random.default_rng(1)), comm), x(2, 3, 4, 4)),
        ("plain DenseBlock, synchronised", distributed.convert_sync_batchnorm(
            model.DenseBlock(2, 3, 2, 2, rng=np.random.default_rng(2)), comm), x(2, 3, 4, 4)),
    ]
    for tier in (True, False):
        net = DenseNet(4, (2, 1), 6, bn_size=2, num_classes=3, stem="cifar", seed=3, fast=tier)
        cases.append((f"DenseNet fast={tier}, synchronised", distributed.convert_sync_batchnorm(net, comm),
                      x(2, 3, 6, 6)))
    return [Case(label, module, x_, {"mode": "directional"}) for label, module, x_ in cases]


def data_parallel_step(rng):
    """One forward and backward of a tiny DenseNet through DataParallel on the stand-in: its backward
    (gradients weighted, the model's backward, the gradients reduced) runs in this process. Returns the wrapper."""
    dp = distributed.DataParallel(DenseNet(4, (2,), 6, bn_size=2, num_classes=3, stem="cifar", seed=4),
                                  comm=OneProcess())
    logits = dp(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    criterion = nn.CrossEntropyLoss()
    criterion(logits, np.array([0, 2]))
    dp.backward(criterion.backward())
    return dp
