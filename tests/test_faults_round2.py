"""Faults, round two (issue 22): the --out lock at each window of the race, lock files that are not plain files,
whose temporary files are removed, SIGTERM / SIGHUP / a closed stdout at several points with a bit-identical
resume, divergence, the data digest of a resume, and the command line's other edges.

Every race here is made deterministic by construction: a run that must be caught in a window runs in a
subprocess whose driver stops it there, says so on stdout and waits for a line on stdin (a barrier), or an
in-process hook does the other side's step at the exact point. Nothing sleeps or depends on timing. The tiny
data set and the reference 2-epoch run are test_faults.py's.
"""
import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_faults import data, reference  # noqa: F401 - the fixtures, shared with test_faults.py
from test_faults import ENV, arrays, assert_clean_folder, assert_same_run, cli, error_line, train_argv

import numpy_densenet.training.folder as nfolder
import numpy_densenet.training.loop as nloop
import numpy_densenet.training.run as nrun
from numpy_densenet import densenet_bc, nn
from numpy_densenet.gradcheck import gradcheck
from numpy_densenet.io import remove_stale_temp_files
from numpy_densenet.io.files import temp_prefix
from numpy_densenet.training import Diverged, OutputError, OutputFolder, TrainConfig, train, write_metrics

PAUSE_DRIVER = textwrap.dedent("""
    import sys
    import numpy_densenet.training.run as nrun
    from numpy_densenet.cli import main
    where, steps = sys.argv[1], []

    def pause():
        print("PAUSED", flush=True)             # the barrier: the test acts, then sends a line
        sys.stdin.readline()

    if where == "data":                         # while it loads its data, holding the folder
        load = nrun.load_dataset
        nrun.load_dataset = lambda *a, **k: (pause(), load(*a, **k))[1]
    else:                                       # at the end of its second step
        step = nrun.train_step
        def train_step(*args):
            result = step(*args)
            steps.append(1)
            if len(steps) == int(where):
                pause()
            return result
        nrun.train_step = train_step
    sys.exit(main(sys.argv[2:]))
""")


@contextlib.contextmanager
def paused_run(where, argv):
    """A run in a subprocess, stopped at ``where`` ("data", or a step number) until the block ends; yields the
    process (its stdout read up to the barrier). The run then goes on and must finish."""
    proc = subprocess.Popen([sys.executable, "-c", PAUSE_DRIVER, where, *map(str, argv)], env=ENV, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.strip() == "PAUSED":
                break
        assert seen and seen[-1].strip() == "PAUSED", (seen, proc.stderr.read())
        yield proc
        proc.stdin.write("go\n")
        proc.stdin.flush()
        proc.stdout.read()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def lock_held(out):
    """Whether some open file holds the flock of ``out``/.lock (this process's own lock counts: another open
    file description conflicts with it)."""
    import fcntl
    try:
        fd = os.open(os.path.join(out, ".lock"), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def files(out):
    return {name: (out / name).read_bytes() for name in sorted(os.listdir(out)) if name != ".lock"}


# -- the lock, at each window ----------------------------------------------------------------------------------
def test_the_lock_is_held_before_the_folder_is_looked_at_and_until_the_last_write(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    checks = []

    def watching(name, function):
        def call(*args, **kwargs):
            checks.append((name, lock_held(out)))
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(nloop, "existing_run_files", watching("looks for an earlier run", nloop.existing_run_files))
    monkeypatch.setattr(nrun, "load_dataset", watching("loads the data", nrun.load_dataset))
    monkeypatch.setattr(nloop, "plot_curves", watching("writes curves.png, the last file", nloop.plot_curves))
    code, _, stderr = cli(train_argv(data, out, epochs=1))
    assert code == 0, stderr
    assert [name for name, _ in checks] == ["looks for an earlier run", "loads the data",
                                            "writes curves.png, the last file"]
    assert all(held for _, held in checks), checks
    assert not lock_held(out) and not (out / ".lock").exists()


@pytest.mark.parametrize("where", ["data", "2"])
def test_a_second_run_is_refused_while_the_first_loads_its_data_or_trains(data, tmp_path, where):
    """Issue 22: a second run whose data loaded slowly replaced a finished run, and one stopped by Ctrl-C left
    its checkpoint beside the first run's best.npz. The first run now holds the lock from its start."""
    out = tmp_path / "run"
    with paused_run(where, train_argv(data, out, "--seed", 1)) as first:
        before = files(out)
        code, stdout, stderr = cli(train_argv(data, out, "--seed", 2))
        error_line(code, stderr, f"another run (pid {first.pid})", str(out))
        assert "epoch" not in stdout and files(out) == before                # nothing written, nothing removed
    seeds = {json.loads(str(arrays(out / name)["_train_config"][()]))["seed"] for name in ("checkpoint.npz", "best.npz")}
    assert seeds == {1}
    assert_clean_folder(out)
    code, _, stderr = cli(train_argv(data, out, "--seed", 2))               # finished: its files are refused
    error_line(code, stderr, "already holds a run", "--overwrite")
    assert seeds == {json.loads(str(arrays(out / name)["_train_config"][()]))["seed"]
                     for name in ("checkpoint.npz", "best.npz")}


def test_a_run_that_locks_the_file_its_holder_is_releasing_locks_a_fresh_one(tmp_path, monkeypatch):
    """The window between a second run's open() of .lock and its flock(): the holder unlinks and closes the
    file there. The second run must not keep the unlinked file (a third run would then lock a new one beside
    it): it sees that the path is another file and opens again."""
    import fcntl
    out = str(tmp_path / "run")
    first = OutputFolder(out, log=lambda line: None).acquire()
    real, calls = fcntl.flock, []

    def flock(fd, operation):
        if not calls:
            first.release()                                                  # exactly in the window
        calls.append(os.fstat(fd).st_nlink)                                 # 0: the file was unlinked
        return real(fd, operation)

    monkeypatch.setattr(nfolder.fcntl, "flock", flock)
    second = OutputFolder(out, log=lambda line: None).acquire()
    monkeypatch.setattr(nfolder.fcntl, "flock", real)
    try:
        assert calls == [0, 1]                                               # locked the unlinked file, then retried
        lock = os.stat(os.path.join(out, ".lock"))
        assert (os.fstat(second.fd).st_ino, os.fstat(second.fd).st_nlink) == (lock.st_ino, 1)
        with pytest.raises(OutputError, match=f"another run \\(pid {os.getpid()}\\)"):
            OutputFolder(out, log=lambda line: None).acquire()
    finally:
        second.release()


# -- lock files that are not plain files -----------------------------------------------------------------------
def _symlink(out, other):
    other.write_text("precious\n")
    os.symlink(other, out / ".lock")


def _dangling(out, other):
    os.symlink(other, out / ".lock")


def _hardlink(out, other):
    other.write_text("precious\n")
    os.link(other, out / ".lock")


@pytest.mark.parametrize("make, kind", [(_symlink, "a symbolic link"), (_dangling, "a symbolic link"),
                                        (_hardlink, "a file with 2 hard links"),
                                        (lambda out, other: os.mkfifo(out / ".lock"), "not a regular file"),
                                        (lambda out, other: os.mkdir(out / ".lock"), "a folder")])
def test_a_lock_file_that_is_not_a_plain_file_is_refused_and_never_written_through(data, tmp_path, make, kind):
    out, other = tmp_path / "run", tmp_path / "elsewhere.txt"
    out.mkdir()
    make(out, other)
    before = other.read_text() if other.exists() else None
    code, stdout, stderr = cli(train_argv(data, out, epochs=1))              # a FIFO must not block either
    error_line(code, stderr, str(out / ".lock"), kind, "remove it")
    assert "epoch" not in stdout
    assert (other.read_text() if other.exists() else None) == before        # not created, truncated or written
    assert sorted(os.listdir(out)) == [".lock"]


def test_only_temporary_files_of_our_own_dead_writers_are_removed(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()                                                              # reaped: its pid runs nothing now
    ours_dead = f"{temp_prefix(dead.pid)}abc12345.checkpoint.npz"
    kept = [f"{temp_prefix(os.getpid())}abc12345.best.npz",                 # a live writer's (this process)
            ".checkpoint.npz.tmp-999999999-abc",                             # another program's names
            ".notes.txt.tmp-1-x", "report.tmp", ".tmp-123.npz"]
    for name in [ours_dead] + kept:
        (out / name).write_bytes(b"x")
    os.symlink(out / ours_dead, out / f"{temp_prefix(dead.pid)}link0000.metrics.jsonl")   # a link: not ours
    kept.append(f"{temp_prefix(dead.pid)}link0000.metrics.jsonl")
    code, stdout, stderr = cli(train_argv(data, out, epochs=1))
    assert code == 0, stderr
    assert "removed 1 temporary file(s)" in stdout
    assert sorted(n for n in os.listdir(out) if n.startswith(".") or n.endswith(".tmp")) == sorted(kept)
    assert remove_stale_temp_files(str(out)) == []


def test_the_stale_lock_note_does_not_call_a_live_pid_not_running(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(f"{os.getppid()}\n")                          # alive, but it holds no lock
    code, stdout, stderr = cli(train_argv(data, out, epochs=1))
    assert code == 0, stderr
    note = next(line for line in stdout.splitlines() if "stale lock" in line)
    assert "not running" not in note and "no process holds it" in note


# -- SIGTERM, SIGHUP, at several points, then a bit-identical resume -----------------------------------------------
SIGNAL_DRIVER = textwrap.dedent("""
    import os, signal, sys
    import numpy_densenet.io.files as nio, numpy_densenet.training.report as nreport
    import numpy_densenet.training.run as nrun
    from numpy_densenet.cli import main
    sig, where, at = getattr(signal, sys.argv[1]), sys.argv[2], int(sys.argv[3])
    counts = []

    def hook(original):
        def call(*args, **kwargs):
            counts.append(1)
            if len(counts) == at:
                os.kill(os.getpid(), sig)                # delivered here: during this step / write / load
            return original(*args, **kwargs)
        return call

    if where == "step":
        nrun.train_step = hook(nrun.train_step)
    elif where == "write":
        nio.atomic_write = nreport.atomic_write = hook(nio.atomic_write)
    else:
        nrun.load_dataset = hook(nrun.load_dataset)
    sys.exit(main(sys.argv[4:]))
""")


def signalled(data, out, sig, where, at):
    return subprocess.run([sys.executable, "-c", SIGNAL_DRIVER, sig, where, str(at), *map(str, train_argv(data, out))],
                          env=ENV, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("sig, where, at", [("SIGTERM", "step", 2), ("SIGTERM", "step", 4), ("SIGTERM", "step", 6),
                                            ("SIGHUP", "step", 3), ("SIGHUP", "step", 5),
                                            ("SIGTERM", "write", 2)])     # 2nd write: epoch 1's checkpoint
def test_sigterm_and_sighup_save_exit_128_plus_the_signal_and_resume_bit_identically(data, reference, tmp_path, sig,
                                                                                      where, at):
    out = tmp_path / "run"
    proc = signalled(data, out, sig, where, at)
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr[-2000:]
    assert "checkpoint saved" in proc.stdout
    message = proc.stderr.strip()
    assert len(message.splitlines()) == 1 and f"interrupted by {sig}" in message and "--resume" in message, message
    assert_clean_folder(out)                                                 # the lock released, no temp file
    code, _, stderr = cli(["train", "--resume", out / "checkpoint.npz"])
    assert code == 0, stderr
    assert_same_run(reference, out)


def test_sigterm_before_training_ends_at_once_and_leaves_nothing(data, tmp_path):
    out = tmp_path / "run"
    proc = signalled(data, out, "SIGTERM", "data", 1)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "before training started" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()                                                 # created to be locked, removed


# -- a closed stdout -------------------------------------------------------------------------------------------
def test_a_broken_pipe_during_training_saves_exits_141_and_resumes_bit_identically(data, reference, tmp_path):
    """`train | head -c 10`: the run stops at the step after the failed write, saves, exits 128 + SIGPIPE."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", PAUSE_DRIVER, "1", *map(str, train_argv(data, out))], env=ENV,
                            text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline().startswith("training ")                   # as head reads its bytes ...
    assert proc.stdout.readline().strip() == "PAUSED"
    proc.stdout.close()                                                     # ... and exits
    proc.stdin.write("go\n")
    proc.stdin.close()
    assert proc.wait(timeout=120) == 141
    message = proc.stderr.read().strip()
    proc.stderr.close()
    assert len(message.splitlines()) == 1 and "broken pipe" in message and "checkpoint saved" in message, message
    assert_clean_folder(out)
    code, _, stderr = cli(["train", "--resume", out / "checkpoint.npz"])
    assert code == 0, stderr
    assert_same_run(reference, out)


def test_predict_into_a_closed_pipe_ends_quietly_with_141(reference, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 3, 8, 8), dtype=np.float32))
    read, write = os.pipe()
    os.close(read)                                                          # nobody will ever read
    try:
        proc = subprocess.run([sys.executable, "-m", "numpy_densenet", "predict", "--weights",
                               os.path.join(reference, "best.npz"), str(tmp_path / "x.npy")], env=ENV,
                              stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full on this system")
def test_dev_full_as_stdout_is_reported_naming_stdout(data, reference, tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 3, 8, 8), dtype=np.float32))
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "numpy_densenet", "predict", "--weights",
                               os.path.join(reference, "best.npz"), str(tmp_path / "x.npy")], env=ENV,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
        error_line(proc.returncode, proc.stderr, "cannot write to stdout", "ENOSPC")
        out = tmp_path / "run"
        proc = subprocess.run([sys.executable, "-m", "numpy_densenet", *map(str, train_argv(data, out))], env=ENV,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    error_line(proc.returncode, proc.stderr, "cannot write to stdout", "checkpoint saved to", "--resume")
    assert (out / "checkpoint.npz").exists()
    assert_clean_folder(out)


# -- divergence ------------------------------------------------------------------------------------------------
def strict_json_rows(path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which strict JSON refuses")
    return [json.loads(line, parse_constant=refuse) for line in open(path)]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_an_absurd_learning_rate_exits_non_zero_without_done(data, tmp_path):
    """Issue 22: --lr 1e30 with one step per epoch printed "done" and exited 0 (the update made the weights
    non-finite after the epoch's only finite loss)."""
    out = tmp_path / "run"
    code, stdout, stderr = cli(train_argv(data, out, "--lr", "1e30", "--batch-size", 2000, "--drop-rate", 0,
                                          epochs=1))
    error_line(code, stderr, "training diverged", "epoch 1", "finite", "no checkpoint was written", "lower --lr")
    assert "done" not in stdout
    assert not out.exists() or not [n for n in os.listdir(out) if n.endswith(".npz")]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_keeps_the_last_finite_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(dataset="npz", data_dir=data, depth=10, growth_rate=4, batch_size=16, epochs=2,
                         out=str(out))

    def poison(run):                              # epoch 2's first step: a weight becomes inf
        if run.epoch == 1 and run.step == 1:
            run.model.classifier.weight.data[0, 0] = np.inf
        return False

    with pytest.raises(Diverged, match=r"epoch 2, step 2.*is kept: it holds the last finite state") as e:
        train(config, log=lambda line: None, on_step=poison)
    assert str(out / "checkpoint.npz") in str(e.value)
    checkpoint = arrays(out / "checkpoint.npz")
    assert json.loads(str(checkpoint["run.state"][()]))["epoch"] == 1
    assert all(np.isfinite(v).all() for k, v in checkpoint.items() if k.startswith("model.") and v.dtype.kind == "f")
    assert all(np.isfinite(v).all() for k, v in arrays(out / "best.npz").items() if v.dtype.kind == "f")
    assert len(strict_json_rows(out / "metrics.jsonl")) == 1
    assert_clean_folder(out)


def test_evaluate_and_predict_refuse_non_finite_outputs(reference, tmp_path):
    weights = arrays(os.path.join(reference, "best.npz"))
    weights["features.norm5.weight"][...] = 0                               # every feature 1 after norm5 ...
    weights["features.norm5.bias"][...] = 1
    weights["classifier.weight"][...] = 3e38                                # ... so each logit overflows
    np.savez(tmp_path / "huge.npz", **weights)
    np.save(tmp_path / "x.npy", np.full((2, 3, 8, 8), 0.5, dtype=np.float32))
    data = tmp_path / "tiny.npz"
    np.savez(data, x=np.full((8, 3, 8, 8), 0.5, np.float32), y=np.arange(8) % 4)
    with np.errstate(all="ignore"):
        error_line(*cli(["evaluate", "--weights", tmp_path / "huge.npz", "--dataset", "npz", "--data-dir",
                         data])[::2], "not finite", "image 0")
        error_line(*cli(["predict", "--weights", tmp_path / "huge.npz", tmp_path / "x.npy"])[::2], "not finite")


def test_metrics_jsonl_is_strict_json(tmp_path):
    rows = [dict(epoch=1, lr=0.1, train_loss=float("nan"), train_acc=0.5, val_loss=None, val_acc=None,
                 test_loss=float("inf"), test_acc=0.25, seconds=1.0)]
    write_metrics(str(tmp_path / "metrics.jsonl"), rows)
    assert strict_json_rows(tmp_path / "metrics.jsonl")[0]["train_loss"] is None


# -- consistency ---------------------------------------------------------------------------------------------
def test_a_resume_on_other_data_of_the_same_shape_is_refused(data, reference, tmp_path):
    with np.load(data) as z:
        changed = {k: z[k].copy() for k in z.files}
    changed["x"][0, 0, 0, 0] ^= 1                                            # one pixel
    other = tmp_path / "other.npz"
    np.savez(other, **changed)
    out = tmp_path / "run"
    code, _, stderr = cli(train_argv(data, out, epochs=1))
    assert code == 0, stderr
    code, _, stderr = cli(["train", "--resume", out / "checkpoint.npz", "--data-dir", other, "--epochs", 1])
    error_line(code, stderr, "other data", "SHA-256", "resume with the data it was made on")


def test_a_version_3_checkpoint_without_a_data_digest_still_resumes_bit_identically(data, reference, tmp_path):
    out = tmp_path / "run"
    config = TrainConfig(dataset="npz", data_dir=data, depth=10, growth_rate=4, batch_size=16, epochs=2,
                         drop_rate=0.2, augment=True, out=str(out))             # the reference run's options
    train(config, log=lambda line: None, on_step=lambda run: run.epoch == 1 and run.step == 1)
    a = arrays(out / "checkpoint.npz")
    state = json.loads(str(a["run.state"][()]))
    del state["data_digest"]                                                 # as version 3 wrote it
    a["run.state"] = np.array(json.dumps(dict(state, version=3)))
    np.savez(out / "checkpoint.npz", **a)
    code, _, stderr = cli(["train", "--resume", out / "checkpoint.npz"])
    assert code == 0, stderr
    assert_same_run(reference, out)


def test_evaluate_applies_predicts_checks_and_refuses_options_against_the_file(reference, tmp_path):
    best = os.path.join(reference, "best.npz")                               # a depth-10 k-4 model of 8x8 images
    big = tmp_path / "big.npz"
    np.savez(big, x=np.zeros((8, 3, 32, 32), np.uint8), y=np.arange(8) % 4)
    error_line(*cli(["evaluate", "--weights", best, "--dataset", "npz", "--data-dir", big])[::2],
               "trained on 8x8 images", "32x32")
    small = tmp_path / "small.npz"
    np.savez(small, x=np.full((8, 3, 8, 8), 200.0, np.float32), y=np.arange(8) % 4)    # floats far above [0, 1]
    code, _, stderr = cli(["evaluate", "--weights", best, "--dataset", "npz", "--data-dir", small])
    assert code == 0 and "outside the range of the training images" in stderr, stderr
    error_line(*cli(["evaluate", "--weights", best, "--dataset", "npz", "--data-dir", small, "--model", "densenet",
                     "--depth", 40])[::2], "--model densenet --depth 40", "block_config=(12, 12, 12)",
               "block_config=(1, 1, 1)", "drop")
    code, _, stderr = cli(["evaluate", "--weights", best, "--dataset", "npz", "--data-dir", small, "--depth", 10])
    assert code == 0, stderr                                                 # the same as the file's: accepted


# -- inputs and names ------------------------------------------------------------------------------------------
def test_predict_reads_npy_inputs_and_a_file_truncated_meanwhile_is_an_error(reference, tmp_path, monkeypatch):
    import numpy_densenet.cli.predict as npredict
    path = tmp_path / "x.npy"
    np.save(path, np.full((5, 3, 8, 8), 0.5, dtype=np.float32))
    monkeypatch.setattr(np, "memmap", None)                                 # never memory-mapped
    real, reads = npredict.read_npy_rows, []

    def read_then_truncate(*args, **kwargs):
        reads.append(1)
        rows = real(*args, **kwargs)
        if len(reads) == 1:                                                 # after the scan, before the batches
            with open(path, "r+b") as f:
                f.truncate(200)
        return rows

    monkeypatch.setattr(npredict, "read_npy_rows", read_then_truncate)
    error_line(*cli(["predict", "--weights", os.path.join(reference, "best.npz"), path, "--batch-size", 2])[::2],
               str(path), "changed while it was read")


def test_names_with_a_newline_stay_on_one_line(reference, tmp_path):
    path = tmp_path / "two\nlines.npy"
    np.save(path, np.full((2, 3, 8, 8), 0.5, dtype=np.float32))
    code, stdout, stderr = cli(["predict", "--weights", os.path.join(reference, "best.npz"), path])
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert len(lines) == 2 and all("two\\nlines.npy[" in line for line in lines), lines


def test_16_bit_and_float_images_are_scaled_by_their_range_and_nan_refused(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from numpy_densenet.data.files import FileFormatError, open_image
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(tmp_path / "grey16.png")
    Image.fromarray(np.full((4, 4), 128, np.uint8)).save(tmp_path / "grey8.png")
    grey16, grey8 = (open_image(tmp_path / f"grey{b}.png", "RGB") for b in (16, 8))
    assert grey16.shape == grey8.shape == (4, 4, 3)
    assert np.allclose(grey16, 32768 / 65535) and np.allclose(grey8 / 255, 128 / 255)      # mid-grey, not white
    photo = open_image(tmp_path / "grey16.png", "RGB", as_array=False)
    assert np.asarray(photo).max() == 128
    floats = np.full((4, 4), 0.25, np.float32)
    Image.fromarray(floats, mode="F").save(tmp_path / "f.tif")
    assert np.allclose(open_image(tmp_path / "f.tif", "L"), 0.25)
    floats[1, 2] = np.nan
    Image.fromarray(floats, mode="F").save(tmp_path / "nan.tif")
    with pytest.raises(FileFormatError, match="NaN or infinite"):
        open_image(tmp_path / "nan.tif", "L")
    Image.fromarray(np.full((4, 4), 70000, np.int32), mode="I").save(tmp_path / "i32.tif")
    with pytest.raises(FileFormatError, match="32-bit integer pixels"):
        open_image(tmp_path / "i32.tif", "L")


# -- API edges -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fast", [True, False])
def test_load_state_dict_of_a_list_is_a_clear_type_error(fast):
    with pytest.raises(TypeError, match="state_dict must be a mapping of name -> array, got list"):
        densenet_bc(10, 4, fast=fast).load_state_dict([("classifier.weight", np.zeros((4, 8)))])


def test_an_empty_batch_in_the_plain_tier_is_a_clear_error():
    with pytest.raises(ValueError, match=r"the batch holds no images \(input shape \(0, 3, 8, 8\)\)"):
        densenet_bc(10, 4, fast=False).eval()(np.zeros((0, 3, 8, 8), np.float32))


@pytest.mark.parametrize("module, x, options, message", [
    (nn.ReLU(), np.zeros((0, 3)), {}, "input 0 is empty"),
    (nn.Linear(3, 2), np.zeros((0, 3)), {"check_inputs": False}, "input 0 is empty"),
    (nn.Linear(3, 2), np.ones((2, 3)), {"check_inputs": False, "check_params": False}, "both False"),
    (nn.ReLU(), np.ones((2, 3)), {"check_inputs": False}, "no float input or parameter of ReLU")])
def test_gradcheck_with_nothing_to_check_does_not_pass(module, x, options, message):
    with pytest.raises(ValueError, match=f"gradcheck: .*{message}"):
        gradcheck(module, x, **options)


def test_simulated_eio_on_stdout_during_training_stops_with_the_checkpoint(data, tmp_path, monkeypatch):
    """A terminal that went away (EIO after SIGHUP) or a full disk behind stdout: the run stops at the next
    step with its checkpoint saved, and says so naming stdout."""
    out = tmp_path / "run"
    def log(line):                                  # the very first line cannot be written
        raise OSError(errno.EIO, os.strerror(errno.EIO), "stdout")

    config = TrainConfig(dataset="npz", data_dir=data, depth=10, growth_rate=4, batch_size=16, epochs=2,
                         out=str(out))
    with pytest.raises(OutputError, match=r"cannot write to stdout: .*\(EIO\); stopped at epoch 1, step 1"):
        train(config, log=log)
    assert json.loads(str(arrays(out / "checkpoint.npz")["run.state"][()]))["step"] == 1
    assert_clean_folder(out)


# -- sizes a resize or a conversion creates, under a memory limit; convert onto a good file ----------------------
def torch_state(model):
    import torch
    return {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}


def hostile_pth_files(folder):
    """name -> (.pth path, what its message must name): each would once allocate gigabytes or end in a
    traceback, or was converted before it was refused."""
    import zipfile

    import torch
    from numpy_densenet import DenseNet
    good = torch_state(DenseNet(4, (2, 2), 8, bn_size=2, num_classes=5, stem="cifar", fast=False, seed=0))
    cases = {
        "layer20000": ({"features.denseblock1.denselayer20000.norm1.weight": torch.ones(1)}, "layer 3 is missing"),
        "layers3000": ({f"features.denseblock1.denselayer{i}.norm1.weight": torch.ones(1) for i in range(3, 3001)},
                       "describes a model of"),
        "expanded": ({"classifier.weight": torch.ones(1, 5).expand(10 ** 9, 5)}, "expanded"),
        "int64": ({"classifier.weight": good["classifier.weight"].to(torch.int64)}, "int64"),
        "negative_count": ({"features.norm5.num_batches_tracked": torch.tensor(-1)}, "non-negative integer"),
        "nan": ({"classifier.bias": torch.full((5,), float("nan"))}, "finite"),
        "sparse": ({"classifier.weight": good["classifier.weight"].to_sparse()}, "sparse"),
        "int_key": ({7: torch.ones(1)}, "keys must be tensor names"),
        "not_a_tensor": ({"classifier.bias": [1.0, 2.0]}, "not a tensor"),
        "big_record": ({"extra": torch.zeros(2 ** 20)}, "memory budget"),     # 4 MiB over a 2 MiB budget
    }
    paths = {}
    for name, (change, fragment) in cases.items():
        paths[name] = (folder / f"{name}.pth", fragment)
        torch.save({**good, **change}, paths[name][0])
    torch.save({**good, "extra": torch.zeros(16 * 2 ** 20)}, folder / "plain.pth")      # then deflate its records
    with zipfile.ZipFile(folder / "plain.pth") as src, zipfile.ZipFile(folder / "deflated.pth", "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    os.remove(folder / "plain.pth")
    paths["deflated"] = (folder / "deflated.pth", "likely zip bomb")
    (folder / "text.pth").write_text("not a checkpoint")
    paths["text"] = (folder / "text.pth", "torch.load")
    torch.save(good, folder / "good.pth")
    return paths


BOMB_DRIVER = textwrap.dedent("""
    import contextlib, io, json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2 ** 30, 3 * 2 ** 30))   # a safety net: 3 GiB of address space
    from numpy_densenet.cli import main
    results = []
    for name, argv in json.load(open(sys.argv[1])):
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except BaseException as e:                      # anything escaping main() is a failure
                code = f"escaped {type(e).__name__}: {e}"
        results.append(dict(name=name, code=code, stderr=err.getvalue()))
    peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    json.dump(dict(results=results, peak_mb=peak), open(sys.argv[2], "w"))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc for the peak memory")
def test_resize_and_conversion_bombs_are_refused_in_bounded_memory(data, tmp_path):
    """Issue 22: a 257-byte 60000x1 PNG took 15.6 GB in predict (resized to 15,360,000x256), a .pth naming
    denselayer20000 7.4 GB, an expanded tensor 2 GB, a deflated storage 1.75 GB; --depth 1e9 6 GB. Each now
    ends in one line, in one process under a 3 GiB address-space limit whose peak resident memory stays low."""
    pytest.importorskip("torch")
    Image = pytest.importorskip("PIL.Image")
    from numpy_densenet import DenseNet
    from numpy_densenet.io import convert_torch_checkpoint, save_weights
    import torch
    torch.save(torch_state(DenseNet(4, (1, 1), 8, bn_size=2, num_classes=5, stem="imagenet", fast=False)),
               tmp_path / "photo_model.pth")
    convert_torch_checkpoint(tmp_path / "photo_model.pth", tmp_path / "photo_model.npz")   # ImageNet preprocessing
    Image.fromarray(np.full((1, 60000), 128, np.uint8)).save(tmp_path / "wide.png")
    Image.fromarray(np.full((60000, 1), 128, np.uint8)).save(tmp_path / "tall.png")
    layers = DenseNet(4, (1, 1), 8, bn_size=2, num_classes=5, stem="cifar", fast=False)   # a weights file whose
    save_weights(layers, tmp_path / "claims.npz")                                          # description claims
    claims = arrays(tmp_path / "claims.npz")                                               # 3000 tiny layers
    claims.update({f"features.denseblock1.denselayer{i}.norm1.weight": np.ones(1, np.float32) for i in range(2, 3001)})
    config = dict(layers.config, block_config=[3000, 1])
    claims["_model_config"] = np.array(json.dumps(config))
    np.savez(tmp_path / "claims.npz", **claims)
    pth = hostile_pth_files(tmp_path)
    cases = [[f"predict {p}", ["predict", "--weights", str(tmp_path / "photo_model.npz"), str(tmp_path / p)],
              [p, "aspect ratio"]] for p in ("wide.png", "tall.png")]
    cases += [[f"convert {name}", ["convert", str(path), str(tmp_path / "out.npz")], [path.name, fragment]]
              for name, (path, fragment) in pth.items()]
    cases += [["train --depth 1e9", ["train", "--dataset", "npz", "--data-dir", data, "--depth", "1000000000",
                                     "--out", str(tmp_path / "deep")], ["166666666", "memory"]],
              ["summary --depth 1e7", ["summary", "densenet_bc", "--depth", "10000006"], ["1666667", "memory"]],
              ["summary densenet --depth 3e9", ["summary", "densenet", "--depth", "3000000004"], ["memory"]],
              ["predict claims", ["predict", "--weights", str(tmp_path / "claims.npz"), str(tmp_path / "x.npy")],
               ["describes a model of", "claims.npz"]]]
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 8, 8), np.float32))
    (tmp_path / "cases.json").write_text(json.dumps([[name, argv] for name, argv, _ in cases]))
    env = dict(ENV, NUMPY_DENSENET_MAX_BYTES=str(2 * 2 ** 20))
    proc = subprocess.run([sys.executable, "-c", BOMB_DRIVER, str(tmp_path / "cases.json"),
                           str(tmp_path / "results.json")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "results.json").read_text())
    bad = []
    for (name, _, fragments), r in zip(cases, report["results"]):
        message = r["stderr"].strip()
        if r["code"] != 2 or len(message.splitlines()) != 1 or not all(f in message for f in fragments):
            bad.append((name, r["code"], message[:400]))
    assert not bad, "\n".join(map(str, bad))
    assert not (tmp_path / "out.npz").exists() and not (tmp_path / "deep").exists()
    print(f"\nbombs: {len(cases)} command lines, all one clean line, peak resident memory "
          f"{report['peak_mb']:.0f} MB (PyTorch imported)")
    assert report["peak_mb"] < 1024


def test_convert_never_replaces_a_good_file(tmp_path):
    """Issue 22: an int64 tensor or a negative num_batches_tracked was written over the destination, then
    refused, so the good file there was lost. Every bad .pth now leaves it byte for byte, and no temporary file."""
    pytest.importorskip("torch")
    pth = hostile_pth_files(tmp_path)
    dst = tmp_path / "weights" / "model.npz"
    dst.parent.mkdir()
    code, _, stderr = cli(["convert", tmp_path / "good.pth", dst])
    assert code == 0, stderr
    good = dst.read_bytes()
    for name, (path, fragment) in pth.items():
        if name == "big_record":
            continue                                                         # over the default budget only
        code, _, stderr = cli(["convert", path, dst])
        error_line(code, stderr, path.name, fragment)
        assert dst.read_bytes() == good, name
        assert os.listdir(dst.parent) == ["model.npz"], name
