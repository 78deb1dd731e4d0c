"""MPI mistakes and signals (issue 22): ranks started with different options, without --distributed, on other
data, or one that never arrives, end the job with one line and no hang; a signal on any rank stops every rank
after the same step, saves, exits 128 + the signal, and the run resumes bit-identically.

Each job runs as ``mpiexec`` in a subprocess with a timeout (a hang fails the test); ranks get different
command lines through mpiexec's ``-n 1 A : -n 1 B`` syntax. Skipped without mpi4py or an ``mpiexec``.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("mpi4py")

from test_distributed import MPIEXEC, ROOT  # noqa: E402
from test_faults import assert_same_run  # noqa: E402
from test_train import write_npz_dataset  # noqa: E402

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec (pip install mpich, or a system MPI)")

TIMEOUT = 120                      # a job that hangs fails here; each takes a few seconds


def job(*ranks, env=None):
    """Run one MPI job whose rank r runs ``python ranks[r]...`` (each a list of arguments after ``python``)."""
    environment = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.path.join(ROOT, "tests") + os.pathsep +
                       os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                       OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    environment.update(env or {})
    argv = [MPIEXEC]
    for i, args in enumerate(ranks):
        argv += ([":"] if i else []) + ["-n", "1", sys.executable, *map(str, args)]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, env=environment)


def train_args(data, out, *extra, distributed=True):
    return ["-m", "mpi4py", "-m", "numpy_densenet", "train", *(["--distributed"] if distributed else []),
            "--dataset", "npz", "--data-dir", data, "--depth", 10, "--growth-rate", 4, "--batch-size", 16,
            "--epochs", 2, "--out", out, *extra]


def one_line(proc, *fragments):
    """The job ended with exit status 2 and exactly one line on stderr holding every fragment."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
    assert lines[0].startswith("numpy-densenet train: error: "), lines
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("mpi_faults") / "tiny.npz")


def test_ranks_with_different_options_end_with_one_line_naming_both_values(data, tmp_path):
    out = tmp_path / "run"
    proc = job(train_args(data, out), train_args(data, out, "--epochs", 3))
    one_line(proc, "rank 1 has --epochs 3, rank 0 has --epochs 2")
    assert not out.exists()


def test_one_rank_without_distributed_ends_the_job_instead_of_hanging_it(data, tmp_path):
    out = tmp_path / "run"
    proc = job(train_args(data, out), train_args(data, out, distributed=False))
    one_line(proc, "rank 1 has --distributed false, rank 0 has --distributed true")


def test_ranks_none_of_which_has_distributed_are_refused_alike(data, tmp_path):
    out = tmp_path / "run"
    proc = job(train_args(data, out, distributed=False), train_args(data, out, distributed=False))
    one_line(proc, "--distributed was not given")
    assert not out.exists()


def test_ranks_reading_different_data_of_the_same_shape_end_with_one_line(data, tmp_path):
    with np.load(data) as z:
        other = {k: z[k].copy() for k in z.files}
    other["y"][0] = (other["y"][0] + 1) % 4                                  # one label
    np.savez(tmp_path / "other.npz", **other)
    out = tmp_path / "run"
    proc = job(train_args(data, out), train_args(tmp_path / "other.npz", out))
    one_line(proc, "differ in their options and data", "rank 1 has data (SHA-256)", "rank 0 has data (SHA-256)")


def test_a_rank_that_never_arrives_ends_the_job_after_the_timeout(data, tmp_path):
    """Rank 1 runs something else (it waits for input that never comes): rank 0 gives up after
    NUMPY_DENSENET_MPI_TIMEOUT seconds and aborts the job with its message."""
    proc = job(train_args(data, tmp_path / "run"), ["-c", "from mpi4py import MPI; import sys; sys.stdin.read()"],
               env={"NUMPY_DENSENET_MPI_TIMEOUT": "2"})
    assert proc.returncode != 0
    assert "[rank 0 of 2] error: rank 0 of 2 waited 2 s for the other ranks to compare their command lines" in \
        proc.stderr, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


SIGNAL_RANK = textwrap.dedent("""
    import os, signal, sys
    import numpy_densenet.training.run as nrun
    from numpy_densenet.cli import main
    rank, at, sig = sys.argv[1], int(sys.argv[2]), getattr(signal, sys.argv[3])
    step, steps = nrun.train_step, []

    def train_step(*args):
        steps.append(1)
        if len(steps) == at and rank in (os.environ.get("PMI_RANK"), "all"):
            os.kill(os.getpid(), sig)            # as mpiexec forwards it, or as a scheduler sends it to one rank
        return step(*args)

    nrun.train_step = train_step
    sys.exit(main(sys.argv[4:]))
""")


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi_reference") / "run"
    args = train_args(data, out)
    proc = job(args, args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return str(out)


@pytest.mark.parametrize("rank, sig", [("1", "SIGTERM"), ("all", "SIGINT")])
def test_a_signal_stops_every_rank_after_the_same_step_and_the_run_resumes_bit_identically(data, uninterrupted,
                                                                                          tmp_path, rank, sig):
    out = tmp_path / "run"
    args = ["-c", SIGNAL_RANK, rank, 2, sig, *train_args(data, out)[4:]]      # python -c DRIVER ... train ...
    proc = job(args, args)
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"numpy-densenet train: interrupted by {sig}: stopped at epoch 1, "
                                                   "step 2: checkpoint saved"), proc.stderr[-3000:]
    state = json.loads(str(np.load(out / "checkpoint.npz")["run.state"][()]))
    assert (state["epoch"], state["step"]) == (0, 2)
    assert sorted(os.listdir(out)) == ["checkpoint.npz"]                     # the lock released
    resume = ["-m", "mpi4py", "-m", "numpy_densenet", "train", "--distributed", "--resume", out / "checkpoint.npz"]
    proc = job(resume, resume)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(uninterrupted, out)
