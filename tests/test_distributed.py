"""Data-parallel training over MPI (numpy_densenet.training.distributed), run as ``mpiexec -n 2 python -m mpi4py`` in a
subprocess with a timeout; skipped when mpi4py or an ``mpiexec`` is missing (CI installs the ``mpi`` extra)."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mpi4py")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _mpiexec():
    """The mpiexec of the MPI mpi4py runs on (the MPICH wheel's own first), or None."""
    candidates = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), shutil.which("mpiexec")]
    return next((c for c in candidates if c and os.path.exists(c)), None)


MPIEXEC = _mpiexec()
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich, or a system MPI)")


def mpirun(args, n=2, timeout=120, env=None):
    """Run ``python -m mpi4py ARGS`` on n ranks (each with one thread); returns the CompletedProcess."""
    environment = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                       OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                       OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")   # Open MPI as root
    environment.update(env or {})
    return subprocess.run([MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi4py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=environment)


def case(name):
    proc = mpirun([os.path.join(HERE, "mpi_cases.py"), name])
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def grads():
    return case("grads")


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("n", [6, 7])           # 7: slices of 4 and 3 images, weighted to the whole batch's mean
def test_sync_bn_gradients_equal_one_process_on_the_whole_batch(grads, fast, n):
    r = grads[f"fast={fast} n={n} sync_bn=True"]
    assert r["grads"] < 1e-12                    # every parameter's gradient, relative to its largest entry
    assert r["running_stats"] < 1e-12            # running mean / var updated with the global statistics and count
    assert r["between_ranks"] == 0.0             # rank 0's initialisation was broadcast; the ranks agree exactly


@pytest.mark.parametrize("fast", [True, False])
def test_per_rank_batchnorm_visibly_differs(grads, fast):
    """sync_bn=False is PyTorch DDP's default: each rank's own statistics, so not one process's gradients, and
    running statistics that differ between the ranks until broadcast."""
    r = grads[f"fast={fast} n=6 sync_bn=False"]
    assert r["grads"] > 0.05
    assert r["between_ranks"] > 1e-3


@pytest.mark.parametrize("fast", [True, False])
def test_three_sgd_steps_equal_one_process(fast):
    r = case("sgd")[f"fast={fast}"]
    assert r["params"] < 1e-12 and r["buffers"] < 1e-12
    assert r["between_ranks"] == 0.0             # parameters and buffers bit-identical across the ranks


def test_divergence_on_one_rank_ends_the_job_with_the_diagnosis():
    proc = mpirun([os.path.join(HERE, "mpi_cases.py"), "diverge"], timeout=30)
    assert proc.returncode != 0 and "RESULT" not in proc.stdout
    assert "[rank 1 of 2] Diverged: the loss became nan; first non-finite output: none" in proc.stderr


@pytest.mark.parametrize("which", ["raise", "raise_uncaught"])
def test_a_failing_rank_ends_the_job_with_its_message(which):
    """Rank 0 waits in a Barrier that rank 1 never reaches: without an abort the job would hang, and the
    subprocess timeout (30 s; the abort takes well under a second) would fail the test."""
    proc = mpirun([os.path.join(HERE, "mpi_cases.py"), which], timeout=30)
    assert proc.returncode != 0
    assert "planted" in proc.stderr and "failure on rank 1" in proc.stderr
    assert "RESULT" not in proc.stdout


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="no affinity masks on this platform")
def test_threads_per_rank_share_the_cores_between_the_ranks_of_a_node():
    r = case("threads")                                          # mpiexec without binding: masks overlap
    assert r["threads"] == [max(1, r["cores"] // 2)] * 2
    assert r["given"] == 4


def test_shard_covers_the_batch_in_order():
    from numpy_densenet.training.distributed import shard
    for n in range(0, 12):
        for size in range(1, 5):
            pieces = [shard(n, r, size) for r in range(size)]
            assert np.concatenate([np.arange(n)[s] for s in pieces]).tolist() == list(range(n))
            assert max(s.stop - s.start for s in pieces) - min(s.stop - s.start for s in pieces) <= 1


# -- train --distributed ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_process_epoch(tmp_path_factory):
    """One float64 epoch of the default run (DenseNet-BC 16 on the digits, batch 64) in this process."""
    from numpy_densenet.training import TrainConfig, train
    out = tmp_path_factory.mktemp("one_process")
    train(TrainConfig(epochs=1, dtype="float64", out=str(out)), log=lambda line: None)
    return np.load(out / "checkpoint.npz")


def _weights_match(reference, path, tol=1e-9):
    other = np.load(path)
    keys = [k for k in reference.files if k.startswith(("model.", "optim.")) and reference[k].dtype.kind == "f"]
    assert keys and sorted(reference.files) == sorted(other.files)
    for k in keys:
        scale = max(float(np.abs(reference[k]).max()), 1e-300)
        assert float(np.abs(reference[k] - other[k]).max()) <= tol * scale, k


def test_train_distributed_epoch_ends_with_the_one_process_weights(one_process_epoch, tmp_path):
    proc = mpirun(["-m", "numpy_densenet", "train", "--distributed", "--epochs", "1", "--dtype", "float64",
                   "--out", str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch   1/1") == 1                   # only rank 0 logs
    _weights_match(one_process_epoch, tmp_path / "checkpoint.npz")
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    reference = json.loads(str(one_process_epoch["run.state"][()]))["history"]
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):   # summed over the ranks
        assert rows[0][key] == pytest.approx(reference[0][key], rel=1e-9)


def test_train_distributed_resumes_mid_epoch(one_process_epoch, tmp_path):
    proc = mpirun([os.path.join(HERE, "mpi_cases.py"), "train_resume", str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    assert json.loads(line[len("RESULT "):]) == {"stopped_at": 7, "epochs": 1}
    _weights_match(one_process_epoch, tmp_path / "checkpoint.npz")


def test_train_distributed_error_ends_every_rank_with_the_message(tmp_path):
    proc = mpirun(["-m", "numpy_densenet", "train", "--distributed", "--resume", str(tmp_path / "missing.npz")],
                  timeout=60)
    assert proc.returncode != 0
    assert re.search(r"\[rank [01] of 2\] error: .*missing\.npz", proc.stderr), proc.stderr[-2000:]  # first to fail
