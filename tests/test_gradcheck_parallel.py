"""gradcheck(..., executor=...): the probes on worker processes give the rows of a serial run, bit for bit."""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import numpy as np
import pytest

from numpy_densenet import DenseNet, fast, gradcheck, nn
from numpy_densenet.gradcheck.parallel import MIN_PROBES_PER_TASK, ParallelLosses


class SkewedLinear(nn.Linear):
    """A planted bug: the input gradient 0.1 % too large (module level, so spawned workers can unpickle it)."""

    def backward(self, dout):
        return super().backward(dout) * 1.001


def small_net():
    rng = np.random.default_rng(2)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, generator=rng), nn.BatchNorm2d(3), nn.ReLU(),
                         nn.Flatten(), SkewedLinear(3 * 4 * 4, 3, generator=rng))


def tiny_densenet():
    return DenseNet(4, (2, 2), 8, bn_size=2, num_classes=5, stem="cifar", seed=1)


@pytest.fixture(scope="module")
def pool():
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


@pytest.fixture
def one_thread():
    previous = fast.get_num_threads()
    fast.set_num_threads(1)
    yield
    fast.set_num_threads(previous)


def _same(serial, parallel):
    assert parallel.rows == serial.rows                      # every field of every row, floats compared exactly
    assert parallel.table() == serial.table()
    assert (parallel.passed, parallel.reentrant, parallel.accumulates) == \
        (serial.passed, serial.reentrant, serial.accumulates)


def test_process_pool_gives_the_serial_rows_for_a_passing_densenet(pool, one_thread):
    model, x = tiny_densenet(), np.random.default_rng(0).standard_normal((3, 3, 8, 8))
    for kwargs in (dict(mode="sampled", samples=24), dict(mode="directional")):
        serial = gradcheck(model, x, **kwargs)
        parallel = gradcheck(model, x, executor=pool, **kwargs)
        assert serial.passed
        _same(serial, parallel)


def test_process_pool_gives_the_serial_rows_for_a_planted_bug(pool, one_thread):
    model, x = small_net(), np.random.default_rng(1).standard_normal((2, 2, 4, 4))
    serial = gradcheck(model, x, mode="full")
    parallel = gradcheck(model, x, mode="full", executor=pool)
    failed = [r.name for r in serial.failures]
    assert "input" in failed and "0.weight" in failed and "4.weight" not in failed  # upstream of the bug only
    _same(serial, parallel)


def test_tasks_are_coarse_span_tensors_and_keep_each_probe_pair_together():
    tasks = []                                               # the requests of each task, in submission order

    class Recorder(ThreadPoolExecutor):
        def submit(self, fn, key, payload, requests):
            tasks.append(requests)
            return super().submit(fn, key, payload, requests)

    model, x = tiny_densenet(), np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    with Recorder(2) as executor:
        result = gradcheck(model, x, mode="sampled", samples=12, executor=executor)
    assert result.passed
    # every coordinate probe sent once, before any was judged (sampled mode's one direction per tensor of more
    # than 12 entries runs in the calling process)
    probes = sum(min(12, int(np.prod(r.shape))) for r in result.rows)
    assert sum(len(t) for t in tasks) == 2 * probes
    for requests in tasks:                                   # +eps then -eps of the same coordinate
        assert len(requests) % 2 == 0
        assert all(a[:2] == b[:2] and a[2] == -b[2] for a, b in zip(requests[::2], requests[1::2]))
    assert all(len(t) >= 2 * MIN_PROBES_PER_TASK for t in tasks[:-1])   # coarse; only the last may be smaller
    assert max(len({name for name, _, _ in t}) for t in tasks) > 1      # small tensors share tasks


def test_executor_argument_is_checked():
    with pytest.raises(TypeError, match="executor must have a submit"):
        gradcheck(nn.ReLU(), np.ones((1, 1, 2, 2)), executor=object())
    with pytest.raises(ValueError, match="probes_per_task"):
        ParallelLosses(ThreadPoolExecutor(1), None, probes_per_task=0)


def test_dask_local_cluster_gives_the_serial_rows(one_thread):
    distributed = pytest.importorskip("distributed")
    model, x = small_net(), np.random.default_rng(1).standard_normal((2, 2, 4, 4))
    serial = gradcheck(model, x, mode="sampled", samples=20)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        parallel = gradcheck(model, x, mode="sampled", samples=20, executor=client.get_executor())
        cli = _cli_output(["gradcheck", "--model", "--scheduler", cluster.scheduler_address])
    assert not serial.passed
    _same(serial, parallel)
    assert cli == _cli_output(["gradcheck", "--model"])


def _cli_output(argv):
    """The report of ``numpy-densenet ARGV`` without its timings."""
    import contextlib
    import io

    from numpy_densenet.cli import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    assert code == 0
    return [line for line in out.getvalue().splitlines() if not line.startswith("==") and " in " not in line]


def test_cli_workers_gives_the_serial_report(one_thread):
    assert _cli_output(["gradcheck", "--model", "--workers", "2"]) == _cli_output(["gradcheck", "--model"])
