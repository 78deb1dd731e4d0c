"""Faults during training (issue 15): disk full, read-only output, kill -9 at every write, Ctrl-C, concurrent runs,
resume options, and the pickle canary.

Everything runs on the 64-image synthetic ``.npz`` set of ``test_train`` with a depth-10, k-4 DenseNet-BC
(4 steps per epoch, about a second per run). Runs that must die (kill -9, Ctrl-C) run in a subprocess; a
small driver patches the write or step function to kill itself at the chosen point.
"""
import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_train import write_npz_dataset

from numpy_densenet.cli import main
from numpy_densenet.io import CHECKPOINT_VERSION
from numpy_densenet.training import OutputFolder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OPENBLAS_NUM_THREADS="1")


def cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def train_argv(data, out, *extra, epochs=2):
    return ["train", "--dataset", "npz", "--data-dir", data, "--depth", 10, "--growth-rate", 4, "--batch-size", 16,
            "--epochs", epochs, "--drop-rate", 0.2, "--augment", "--out", out, *extra]


def arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def assert_same_run(out_a, out_b):
    """Final checkpoints bit-identical (weights, buffers, optimizer, schedule, RNG states, bookkeeping) and the
    same metrics rows except the seconds."""
    a, b = arrays(os.path.join(out_a, "checkpoint.npz")), arrays(os.path.join(out_b, "checkpoint.npz"))
    keys = sorted(k for k in a if k.startswith(("model.", "optim.", "sched.")))
    assert keys == sorted(k for k in b if k.startswith(("model.", "optim.", "sched.")))
    assert not [k for k in keys if not (a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]))]
    sa, sb = (json.loads(str(x["run.state"][()])) for x in (a, b))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(sa.pop("history")) == strip(sb.pop("history"))
    sa.pop("given_options"), sb.pop("given_options")
    assert sa == sb
    rows = [strip([json.loads(line) for line in open(os.path.join(o, "metrics.jsonl"))]) for o in (out_a, out_b)]
    assert rows[0] == rows[1]


def assert_clean_folder(out):
    names = sorted(os.listdir(out))
    assert not [n for n in names if n.startswith(".")], names            # no temporary files, no lock left


def error_line(code, stderr, *fragments):
    assert code == 2, stderr
    message = stderr.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message, message
    for f in fragments:
        assert f in message, (f, message)
    return message


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("faults") / "tiny.npz")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    code, _, stderr = cli(train_argv(data, out))
    assert code == 0, stderr
    return str(out)


# -- kill -9 at every write point ----------------------------------------------------------------------------------
KILL_DRIVER = textwrap.dedent("""
    import os, signal, sys
    import numpy_densenet.io.files as nio, numpy_densenet.training.report as nreport
    from numpy_densenet.cli import main
    target, mode = int(sys.argv[1]), sys.argv[2]
    original, calls = nio.atomic_write, []

    def atomic_write(path, write, mode_="wb"):
        calls.append(path)
        if len(calls) == target and mode == "before-rename":
            def write_then_die(f):
                write(f); f.flush(); os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)             # the temporary file is complete, not renamed
            return original(path, write_then_die, mode_)
        original(path, write, mode_)
        if len(calls) == target and mode == "after-rename":
            os.kill(os.getpid(), signal.SIGKILL)

    nio.atomic_write = nreport.atomic_write = atomic_write
    sys.exit(main(sys.argv[3:]))
""")


def write_points(data, tmp_path):
    """The files an uninterrupted 2-epoch run writes, in order (counted, not assumed)."""
    import numpy_densenet.io.files as nio
    import numpy_densenet.training.report as nreport
    seen, original = [], nio.atomic_write

    def counting(path, write, mode="wb"):
        seen.append(os.path.basename(path))
        return original(path, write, mode)

    nio.atomic_write = nreport.atomic_write = counting
    try:
        assert cli(train_argv(data, tmp_path / "count"))[0] == 0
    finally:
        nio.atomic_write = nreport.atomic_write = original
    return seen


def test_kill_9_at_every_write_point_resumes_bit_identically(data, reference, tmp_path):
    points = write_points(data, tmp_path)
    assert points[:3] == ["best.npz", "checkpoint.npz", "metrics.jsonl"] and "checkpoint.npz" in points[3:]
    tried = 0
    for target in range(1, len(points) + 1):
        for mode in ("before-rename", "after-rename"):
            out = tmp_path / f"kill{target}{mode}"
            proc = subprocess.run([sys.executable, "-c", KILL_DRIVER, str(target), mode,
                                   *map(str, train_argv(data, out))], env=ENV, capture_output=True, text=True,
                                  timeout=120)
            assert proc.returncode == -signal.SIGKILL, (target, mode, proc.stderr[-2000:])
            assert os.path.exists(out / ".lock")                         # the killed holder's lock is left ...
            ckpt = out / "checkpoint.npz"
            refused = ""
            if not ckpt.exists():                                        # killed before the first checkpoint
                again = train_argv(data, out)
                if any((out / name).exists() for name in ("best.npz", "metrics.jsonl")):
                    code, refused, stderr = cli(again)                   # an earlier run's files: refused ...
                    assert code == 2 and "no checkpoint to resume" in stderr and "--overwrite" in stderr, stderr
                    again = again + ["--overwrite"]                      # ... until replaced explicitly
                code, stdout, stderr = cli(again)
            else:                                                        # --augment is not repeated
                code, stdout, stderr = cli(["train", "--resume", ckpt])
            assert code == 0, (target, mode, stderr)
            assert_same_run(reference, out)
            assert_clean_folder(out)                                     # ... and taken over; temp files removed
            assert "stale lock" in refused + stdout                      # (by the first run to lock the folder)
            tried += 1
    print(f"\nkill -9: {tried} runs killed at {len(points)} write points x 2 (temporary file complete / renamed), "
          "all resumed bit-identically")


# -- Ctrl-C ------------------------------------------------------------------------------------------------------
SIGINT_DRIVER = textwrap.dedent("""
    import os, signal, sys
    import numpy_densenet.training.run as nrun
    from numpy_densenet.cli import main
    at, original, steps = int(sys.argv[1]), nrun.train_step, []

    def train_step(*args):
        steps.append(1)
        if len(steps) == at:
            os.kill(os.getpid(), signal.SIGINT)                  # as Ctrl-C in a terminal, during a step
        return original(*args)

    nrun.train_step = train_step
    sys.exit(main(sys.argv[2:]))
""")


@pytest.mark.parametrize("at_step", [2, 4, 6])
def test_ctrl_c_saves_exits_130_and_resumes_bit_identically(data, reference, tmp_path, at_step):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", SIGINT_DRIVER, str(at_step), *map(str, train_argv(data, out))],
                          env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "checkpoint saved" in proc.stdout and "Traceback" not in proc.stderr
    assert_clean_folder(out)
    code, _, stderr = cli(["train", "--resume", out / "checkpoint.npz"])
    assert code == 0, stderr
    assert_same_run(reference, out)


# -- disk full ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path, size):
    """Mount a tmpfs of ``size`` at ``path``, or skip when this platform does not allow it (not root)."""
    os.makedirs(path, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated ENOSPC test covers the error path")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_too_small_is_found_before_training(data, tmp_path):
    with tmpfs(tmp_path / "small", "256k") as mnt:
        code, stdout, stderr = cli(train_argv(data, mnt / "run"))
        error_line(code, stderr, str(mnt / "run"), "ENOSPC", "free disk space")
        assert "epoch" not in stdout                                     # before any training
        assert not os.path.exists(mnt / "run")                           # created to be locked, removed: empty


def test_disk_full_mid_run_keeps_the_checkpoint_and_resumes(data, reference, tmp_path):
    from numpy_densenet.training import OutputError, TrainConfig, train
    with tmpfs(tmp_path / "disk", "3m") as mnt:
        out = mnt / "run"
        filler = mnt / "filler"

        def fill_disk(run):                      # after epoch 1 is saved: fill what is left of the disk
            if run.epoch == 1 and not filler.exists():
                with open(filler, "wb") as f:
                    with contextlib.suppress(OSError):
                        while True:
                            f.write(bytes(2 ** 16))
                            f.flush()
            return False

        config = TrainConfig(dataset="npz", data_dir=data, depth=10, growth_rate=4, batch_size=16, epochs=2,
                             drop_rate=0.2, augment=True, out=str(out))
        with pytest.raises(OutputError, match="No space left on device.*ENOSPC.*intact") as e:
            train(config, log=lambda line: None, on_step=fill_disk)
        assert str(out / "checkpoint.npz") in str(e.value)
        state = json.loads(str(arrays(out / "checkpoint.npz")["run.state"][()]))
        assert state["epoch"] == 1                                       # epoch 1's checkpoint, intact
        assert_clean_folder(out)
        filler.unlink()
        code, _, stderr = cli(["train", "--resume", out / "checkpoint.npz"])
        assert code == 0, stderr
        assert_same_run(reference, out)


def test_simulated_enospc_through_the_command_line(data, reference, tmp_path, monkeypatch):
    """Without a tmpfs: fsync fails with ENOSPC from the 5th write on (epoch 2's writes; the probe is the 1st)."""
    out = tmp_path / "run"
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, stdout, stderr = cli(train_argv(data, out))
    monkeypatch.setattr(os, "fsync", real_fsync)
    error_line(code, stderr, "No space left on device (ENOSPC)", str(out / "checkpoint.npz"), "intact", "--resume")
    assert "epoch   1/2" in stdout
    assert_clean_folder(out)
    code, _, stderr = cli(["train", "--resume", out / "checkpoint.npz"])
    assert code == 0, stderr
    assert_same_run(reference, out)


# -- read-only ---------------------------------------------------------------------------------------------------
def test_read_only_out_and_read_only_resume_target(data, reference, tmp_path):
    with tmpfs(tmp_path / "ro", "4m") as mnt:
        shutil.copytree(reference, mnt / "run")
        before = (mnt / "run" / "checkpoint.npz").read_bytes()
        assert subprocess.run(["mount", "-o", "remount,ro", str(mnt)]).returncode == 0
        code, stdout, stderr = cli(train_argv(data, mnt / "new"))
        error_line(code, stderr, str(mnt / "new"), "EROFS", "read-only")
        code, stdout, stderr = cli(["train", "--resume", mnt / "run" / "checkpoint.npz"])
        error_line(code, stderr, str(mnt / "run"), "EROFS", "read-only")
        assert (mnt / "run" / "checkpoint.npz").read_bytes() == before
        code, stdout, stderr = cli(["inspect", "--out", mnt / "matrices"])
        error_line(code, stderr, str(mnt / "matrices"), "EROFS")


# -- concurrent runs ---------------------------------------------------------------------------------------------
def test_a_second_run_on_the_same_out_is_refused_naming_the_holder(data, tmp_path):
    out = tmp_path / "run"
    folder = OutputFolder(str(out), log=lambda line: None).acquire()
    try:
        code, stdout, stderr = cli(train_argv(data, out))
        error_line(code, stderr, f"another run (pid {os.getpid()})", str(out))
        assert sorted(os.listdir(out)) == [".lock"]
    finally:
        folder.release()
    assert os.listdir(out) == []


def test_a_stale_lock_is_taken_over(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text("999999999\n")                          # a killed run's lock: nobody holds it
    (out / ".numpy_densenet-tmp-999999999-abc.checkpoint.npz").write_bytes(bytes(1000))
    code, stdout, stderr = cli(train_argv(data, out, epochs=1))
    assert code == 0, stderr
    assert "stale lock of pid 999999999" in stdout and "removed 1 temporary file" in stdout
    assert_clean_folder(out)


def test_two_concurrent_runs_never_mix_their_outputs(data, tmp_path):
    """Two runs started at once on one --out: exactly one wins, whichever window the other hits. The loser is
    refused cleanly - "another run" while the winner holds the lock, "already holds a run" once it has
    finished - and the folder holds the winner's run alone (tests/test_faults_round2.py holds each window)."""
    out = tmp_path / "run"
    seeds = (1, 2)
    procs = [subprocess.Popen([sys.executable, "-m", "numpy_densenet", *map(str, train_argv(data, out, "--seed", s))],
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in seeds]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close(), p.stderr.close()
    winners = [i for i, (code, _) in enumerate(results) if code == 0]
    assert len(winners) == 1, results
    loser = error_line(*results[1 - winners[0]])
    assert "another run" in loser or "already holds a run" in loser, loser
    configs = {json.loads(str(arrays(out / name)["_train_config"][()]))["seed"] for name in ("checkpoint.npz", "best.npz")}
    assert configs == {seeds[winners[0]]}                                # both files from the winner
    history = json.loads(str(arrays(out / "checkpoint.npz")["run.state"][()]))["history"]
    assert [json.loads(line) for line in open(out / "metrics.jsonl")] == history
    assert_clean_folder(out)


# -- resume options ----------------------------------------------------------------------------------------------
def test_resume_keeps_options_refuses_conflicts_and_checks_the_version(data, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    ckpt = out / "checkpoint.npz"
    code, _, stderr = cli(["train", "--resume", ckpt, "--lr", 0.05])     # an explicit default is compared too
    error_line(code, stderr, "--lr 0.05", "the checkpoint has --lr 0.1")
    code, _, stderr = cli(["train", "--resume", ckpt, "--no-augment"])
    error_line(code, stderr, "--no-augment", "the checkpoint has --augment")
    code, stdout, stderr = cli(["train", "--resume", ckpt, "--augment", "--lr", 0.1, "--epochs", 2])
    assert code == 0, stderr                                             # the same values: accepted
    state = json.loads(str(arrays(ckpt)["run.state"][()]))
    assert state["version"] == CHECKPOINT_VERSION and "augment" in state["given_options"] and \
        "lr" not in state["given_options"]

    def edit(name, change):
        a = arrays(ckpt)
        change(a)
        path = tmp_path / name / "checkpoint.npz"
        path.parent.mkdir()
        np.savez(path, **a)
        return path

    def set_json(key, **kw):
        def change(a):
            d = json.loads(str(a[key][()]))
            d.update(kw)
            a[key] = np.array(json.dumps(d))
        return change

    newer = edit("newer", set_json("run.state", version=CHECKPOINT_VERSION + 1))
    error_line(*cli(["train", "--resume", newer])[::2], f"version {CHECKPOINT_VERSION + 1}", "newer numpy_densenet")
    unknown = edit("unknown", set_json("_train_config", colour="red"))
    error_line(*cli(["train", "--resume", unknown])[::2], "colour", "newer numpy_densenet")
    bad_state = edit("bad_state", set_json("run.state", epoch="two"))
    error_line(*cli(["train", "--resume", bad_state])[::2], "run.state")
    rows = edit("rows", set_json("run.state", history=[{"epoch": 1}, {"epoch": 2}]))
    error_line(*cli(["train", "--resume", rows])[::2], "run.state")
    step = edit("step", set_json("run.state", step=99))
    error_line(*cli(["train", "--resume", step])[::2], "step 99")
    extra = edit("extra", lambda a: a.__setitem__("_provenance", np.array("x")))
    error_line(*cli(["train", "--resume", extra])[::2], "_provenance", "newer numpy_densenet")
    error_line(*cli(["predict", "--weights", extra, tmp_path / "x.npy"])[::2], "_provenance")
    nan = edit("nan", lambda a: a["model.classifier.weight"].__setitem__((0, 0), np.nan))
    error_line(*cli(["train", "--resume", nan])[::2], "model.classifier.weight", "finite")


def test_metrics_are_rebuilt_from_the_checkpoint_on_resume(data, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')                 # a row lost by a kill, the other mangled
    code, _, stderr = cli(["train", "--resume", out / "checkpoint.npz"])
    assert code == 0, stderr
    assert_same_run(reference, out)


# -- the pickle canary -------------------------------------------------------------------------------------------
class Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_object_arrays_are_never_unpickled_on_any_path(data, reference, tmp_path):
    canary = tmp_path / "canary"
    bomb = np.array([Canary(canary)], dtype=object)
    weights = arrays(os.path.join(reference, "best.npz"))
    checkpoint = arrays(os.path.join(reference, "checkpoint.npz"))
    files = {}
    for name, base, key in (("weights", weights, "classifier.weight"), ("meta", weights, "_model_config"),
                            ("checkpoint", checkpoint, "run.state"), ("data", dict(x=np.zeros((4, 1, 4, 4)),
                                                                                  y=np.zeros(4, int)), "x")):
        a = dict(base)
        a[key] = bomb
        files[name] = tmp_path / f"{name}.npz"
        np.savez(files[name], **a)
    np.save(tmp_path / "input.npy", bomb, allow_pickle=True)
    good = os.path.join(reference, "best.npz")
    commands = [["predict", "--weights", files["weights"], tmp_path / "input.npy"],
                ["predict", "--weights", good, tmp_path / "input.npy"],
                ["predict", "--weights", files["meta"], tmp_path / "input.npy"],
                ["evaluate", "--weights", files["weights"]],
                ["evaluate", "--weights", files["meta"]],
                ["inspect", "--weights", files["weights"]],
                ["train", "--resume", files["checkpoint"]],
                ["train", "--dataset", "npz", "--data-dir", files["data"], "--out", tmp_path / "o"],
                ["evaluate", "--weights", good, "--dataset", "npz", "--data-dir", files["data"]]]
    for argv in commands:
        code, _, stderr = cli(argv)
        error_line(code, stderr, "object arrays")
    from numpy_densenet import densenet_bc
    from numpy_densenet.data import DatasetError, load_dataset
    from numpy_densenet.io import WeightsFileError, load_weights
    with pytest.raises(WeightsFileError, match="object arrays"):
        load_weights(densenet_bc(10, 4), files["weights"])
    with pytest.raises(DatasetError, match="object arrays"):
        load_dataset("npz", files["data"])
    assert not canary.exists()


# -- many classes ------------------------------------------------------------------------------------------------
def test_many_classes_train_and_evaluate_without_a_k_by_k_matrix(tmp_path):
    """Labels up to 2**16 - 1 are accepted; evaluate then keeps per-class counts, not a K x K matrix."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (24, 1, 6, 6)).astype(np.uint8)
    y = np.arange(24) % 3
    y[-1] = 2 ** 16 - 1
    np.savez(tmp_path / "many.npz", x=x, y=y)
    out = tmp_path / "run"
    code, _, stderr = cli(["train", "--dataset", "npz", "--data-dir", tmp_path / "many.npz", "--depth", 10,
                           "--growth-rate", 4, "--batch-size", 8, "--epochs", 1, "--out", out])
    assert code == 0, stderr
    code, stdout, stderr = cli(["evaluate", "--weights", out / "best.npz", "--dataset", "npz", "--data-dir",
                                tmp_path / "many.npz"])
    assert code == 0, stderr
    assert "no confusion matrix printed: 65536 classes" in stdout
    assert len(stdout.splitlines()) < 20                                 # only the classes present are listed
    y[-1] = 2 ** 16
    np.savez(tmp_path / "too_many.npz", x=x, y=y)
    code, _, stderr = cli(["train", "--dataset", "npz", "--data-dir", tmp_path / "too_many.npz", "--out",
                           tmp_path / "run2"])
    error_line(code, stderr, "65536", "too_many.npz")


# -- permission denied -------------------------------------------------------------------------------------------
def test_unreadable_files_and_unwritable_out_are_one_line(data, reference, tmp_path, monkeypatch):
    """Real permissions when not root; as root (who may read anything) EACCES is simulated at the system call."""
    weights = tmp_path / "weights.npz"
    shutil.copy(os.path.join(reference, "best.npz"), weights)
    locked_out = tmp_path / "locked"
    locked_out.mkdir()
    if os.getuid() != 0:
        weights.chmod(0)
        locked_out.chmod(0o500)
    else:
        real_access, real_open = os.access, os.open
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(weights)
                            else real_access(p, mode, **kw))

        def fake_open(path, flags, *args, **kw):
            if str(path).startswith(str(locked_out)):
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            return real_open(path, flags, *args, **kw)
        monkeypatch.setattr(os, "open", fake_open)
    try:
        error_line(*cli(["predict", "--weights", weights, tmp_path / "x.npy"])[::2], str(weights),
                   "permission denied")
        error_line(*cli(["evaluate", "--weights", weights])[::2], str(weights), "permission denied")
        error_line(*cli(train_argv(data, locked_out))[::2], str(locked_out), "EACCES")
    finally:
        weights.chmod(0o644)
        locked_out.chmod(0o755)
