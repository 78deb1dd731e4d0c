"""Tests of the training loop (numpy_densenet.training) and the train / evaluate / predict commands (issue 4).

Everything runs on tiny settings: a DenseNet-BC of depth 10 and growth rate 4, on the bundled digits with batch
128 (the command-line run, shared by several tests) or on a synthetic 64-image ``.npz`` data set written to a
temporary folder (the resume / schedule / divergence runs, a few milliseconds per step).
"""
import contextlib
import io
import json
import math
import os
import re
import shutil
import signal

import numpy as np
import pytest

from numpy_densenet.cli import main
from numpy_densenet.data import load_dataset
from numpy_densenet.io import load_model_file
from numpy_densenet.training import Diverged, Progress, Run, TrainConfig, TrainingError, evaluate, train

METRIC_KEYS = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds"}


def chosen_epoch(rows):
    """The metrics row best.npz must hold: best val_acc, ties by lower val_loss, then the earlier epoch."""
    return max(rows, key=lambda r: (r["val_acc"], -r["val_loss"], -r["epoch"]))
RUN_FILES = {"checkpoint.npz", "best.npz", "metrics.jsonl", "curves.png"}


def quiet(_line):
    pass


# -- helpers ------------------------------------------------------------------------------------------------
def write_npz_dataset(path, n_train=64, n_test=16, classes=4, seed=0):
    """A small learnable uint8 RGB 8x8 data set: the class brightens one channel."""
    rng = np.random.default_rng(seed)

    def part(n):
        y = rng.integers(0, classes, n)
        x = rng.integers(0, 120, (n, 3, 8, 8))
        x[np.arange(n), y % 3] += 100 + 30 * (y // 3)[:, None, None]
        return x.astype(np.uint8), y.astype(np.int64)

    x, y = part(n_train)
    x_test, y_test = part(n_test)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    return str(path)


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory):
    return write_npz_dataset(tmp_path_factory.mktemp("data") / "tiny.npz")


def npz_config(data, out, **kw):
    """Depth 10, k 4, batch 16 on the 64-image set: 4 steps per epoch; augmentation (npz default) and dropout on."""
    base = dict(dataset="npz", data_dir=data, depth=10, growth_rate=4, batch_size=16, epochs=3, drop_rate=0.2,
                augment=True, out=str(out))
    base.update(kw)
    return TrainConfig(**base)


def read_arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def run_state(path):
    return json.loads(str(read_arrays(path)["run.state"][()]))


def without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f.read().splitlines()]


def assert_no_temporary_files(out):
    names = set(os.listdir(out))
    assert names <= RUN_FILES, f"unexpected files in {out}: {sorted(names - RUN_FILES)}"
    assert not [n for n in names if n.startswith(".") or "tmp" in n]


def assert_same_final_state(out_a, out_b):
    """Checkpoints of two runs: every model (incl. BN buffers), optimizer and schedule array bit-identical, same
    RNG states and bookkeeping, same history except the seconds."""
    a = read_arrays(os.path.join(out_a, "checkpoint.npz"))
    b = read_arrays(os.path.join(out_b, "checkpoint.npz"))
    keys = sorted(k for k in a if k.startswith(("model.", "optim.", "sched.")))
    assert keys == sorted(k for k in b if k.startswith(("model.", "optim.", "sched.")))
    assert any(k.endswith("running_var") for k in keys) and any(k.endswith("num_batches_tracked") for k in keys)
    assert any(k.startswith("optim.") for k in keys)
    differ = [k for k in keys if not (a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]))]
    assert not differ, f"arrays differ after resuming: {differ[:5]} ..."
    sa, sb = (json.loads(str(x["run.state"][()])) for x in (a, b))
    assert without_seconds(sa.pop("history")) == without_seconds(sb.pop("history"))
    assert sa == sb                                   # epoch, step, sums, best_acc, all RNG states


def cli(argv):
    """Run ``numpy-densenet ARGV`` in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def assert_one_paragraph_error(code, stdout, stderr, command, *fragments):
    assert code == 2, (code, stdout, stderr)
    message = stderr.strip()
    assert message.startswith(f"numpy-densenet {command}: error:"), message
    assert "Traceback" not in stderr and "Traceback" not in stdout
    assert "\n\n" not in message and len(message.splitlines()) <= 3, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# -- the default configuration ----------------------------------------------------------------------------
def test_default_config_is_densenet_bc_16_12_on_digits_for_30_epochs(tmp_path):
    c = TrainConfig().resolved()
    assert (c.model, c.depth, c.growth_rate, c.epochs, c.dataset, c.augment) == \
        ("densenet_bc", 16, 12, 30, "digits", False)
    assert (c.batch_size, c.lr, c.momentum, c.weight_decay, c.schedule) == (64, 0.1, 0.9, 1e-4, "step")
    run = Run(TrainConfig(out=str(tmp_path / "run")), log=quiet)    # builds, does not train
    assert run.model.config["block_config"] == (2, 2, 2) and run.model.config["growth_rate"] == 12
    assert run.model.config["num_classes"] == 10 and run.model.in_channels == 1
    assert run.split.size == 143 and len(run.y_train) == 1438 - 143          # 10% held out, per class
    assert run.batches.augment is False and len(run.batches) == math.ceil((1438 - 143) / 64)
    assert run.scheduler.milestones == [15, 22]


def test_cli_train_without_options_uses_the_default_config(monkeypatch):
    import numpy_densenet.cli.train as train_module
    seen = []
    monkeypatch.setattr(train_module, "train",
                        lambda cfg, resume=None, log=None, given_options=None, overwrite=False:
                        seen.append((cfg, resume, overwrite)))
    code, _, stderr = cli(["train"])
    assert code == 0, stderr
    (cfg, resume, overwrite), = seen
    assert resume is None and overwrite is False and cfg.val_fraction == 0.1
    assert cfg.resolved() == TrainConfig(out=os.path.join("runs", "digits")).resolved()


# -- a short run on digits through the command line (shared by several tests) -------------------------------
@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "run"
    code, stdout, stderr = cli(["train", "--epochs", 2, "--depth", 10, "--growth-rate", 4, "--batch-size", 128,
                                "--out", out])
    return dict(code=code, stdout=stdout, stderr=stderr, out=str(out))


def test_cli_train_prints_one_line_per_epoch_without_a_progress_bar(digits_run):
    assert digits_run["code"] == 0, digits_run["stderr"]
    stdout, stderr = digits_run["stdout"], digits_run["stderr"]
    epoch_lines = [line for line in stdout.splitlines() if re.match(r"epoch\s+\d+/2\s", line)]
    assert [int(re.match(r"epoch\s+(\d+)", line).group(1)) for line in epoch_lines] == [1, 2]
    for line in epoch_lines:
        assert re.search(r"lr [\d.e-]+\s+train loss \d+\.\d+ acc \d\.\d+\s+val loss \d+\.\d+ acc \d\.\d+\s+"
                         r"test loss \d+\.\d+ acc \d\.\d+", line)
    rows = read_metrics(digits_run["out"])
    best = chosen_epoch(rows)
    assert stdout.splitlines()[-2 if "curves" in stdout.splitlines()[-1] else -1] == (
        f"done: final epoch 2: test accuracy {rows[-1]['test_acc']:.4f}; best validation accuracy "
        f"{best['val_acc']:.4f} at epoch {best['epoch']}, test accuracy {best['test_acc']:.4f} there; its weights "
        f"in {os.path.join(digits_run['out'], 'best.npz')}")
    assert "\r" not in stdout + stderr and "\x1b" not in stdout + stderr       # not a terminal: no bar
    assert "Traceback" not in stderr


def test_short_run_lowers_the_loss_and_writes_metrics_per_epoch(digits_run):
    rows = read_metrics(digits_run["out"])
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert set(r) == METRIC_KEYS
        assert all(isinstance(r[k], (int, float)) and math.isfinite(r[k]) for k in METRIC_KEYS)
        assert 0 <= r["train_acc"] <= 1 and 0 <= r["test_acc"] <= 1 and 0 <= r["val_acc"] <= 1 and r["seconds"] >= 0
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] or rows[-1]["test_loss"] < rows[0]["test_loss"]
    assert rows[0]["train_loss"] < 2.5                                 # not diverging either (ln 10 = 2.30)
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.001])       # epochs=2: milestones 1 and 1


def test_run_files_load_without_pickle_and_no_temporary_files_remain(digits_run):
    out = digits_run["out"]
    assert_no_temporary_files(out)
    for name in ("checkpoint.npz", "best.npz"):
        arrays = read_arrays(os.path.join(out, name))
        assert arrays and all(a.dtype != object for a in arrays.values())
    ckpt = read_arrays(os.path.join(out, "checkpoint.npz"))
    state = json.loads(str(ckpt["run.state"][()]))
    assert (state["epoch"], state["step"]) == (2, 0)
    assert without_seconds(state["history"]) == without_seconds(read_metrics(out))


def test_best_weights_rebuild_the_model_of_the_best_validation_epoch(digits_run):
    rows = read_metrics(digits_run["out"])
    model, meta = load_model_file(os.path.join(digits_run["out"], "best.npz"))
    assert meta["classes"] == [str(k) for k in range(10)]
    data = load_dataset("digits")
    r = evaluate(model, data.x_test, data.y_test, mean=meta["mean"], std=meta["std"])
    assert r["acc"] == pytest.approx(chosen_epoch(rows)["test_acc"], abs=1e-12)
    assert r["confusion"].sum() == len(data.y_test)


def test_cli_evaluate_prints_accuracy_per_class_accuracy_and_confusion_matrix(digits_run):
    code, stdout, stderr = cli(["evaluate", "--weights", os.path.join(digits_run["out"], "best.npz")])
    assert code == 0, stderr
    best = chosen_epoch(read_metrics(digits_run["out"]))["test_acc"]
    m = re.search(r"359 images, accuracy (\d\.\d{4})", stdout)
    assert m and float(m.group(1)) == pytest.approx(best, abs=6e-5)
    lines = stdout.splitlines()
    i = lines.index("per-class accuracy:")
    per_class = [re.match(r"\s+(\d)\s+(\d\.\d{4})\s+\((\d+) images\)$", line) for line in lines[i + 1:i + 11]]
    assert all(per_class) and [p.group(1) for p in per_class] == [str(k) for k in range(10)]
    j = next(k for k, line in enumerate(lines) if line.startswith("confusion matrix"))
    rows = [line.split() for line in lines[j + 2:j + 12]]
    cm = np.array([[int(v) for v in row[1:]] for row in rows])
    assert [row[0] for row in rows] == [str(k) for k in range(10)] and cm.shape == (10, 10)
    assert cm.sum() == 359 and np.trace(cm) / 359 == pytest.approx(best, abs=1e-12)
    counts = [int(p.group(3)) for p in per_class]
    assert counts == cm.sum(axis=1).tolist()


def test_cli_predict_prints_a_class_per_image(digits_run, tmp_path):
    weights = os.path.join(digits_run["out"], "best.npz")
    data = load_dataset("digits")
    batch = data.x_test[:5]                                            # (5, 1, 8, 8) floats in [0, 1]
    np.save(tmp_path / "five.npy", batch)
    np.save(tmp_path / "one.npy", data.x_test[7, 0])                   # (8, 8)
    code, stdout, stderr = cli(["predict", "--weights", weights, tmp_path / "five.npy", tmp_path / "one.npy"])
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 6
    got = []
    for line in lines:
        m = re.match(r"(.+): (\d) \((\d\.\d{3})\)$", line)
        assert m, line
        got.append(int(m.group(2)))
    assert [line.split(":")[0] for line in lines] == [f"{tmp_path / 'five.npy'}[{i}]" for i in range(5)] + \
        [str(tmp_path / "one.npy")]
    model, meta = load_model_file(weights)
    x = np.concatenate([batch, data.x_test[7:8]]).astype(np.float64)
    x = ((x - meta["mean"][None, :, None, None]) / meta["std"][None, :, None, None]).astype(model.dtype)
    model.eval()
    assert got == model(x).argmax(axis=1).tolist()


# -- command-line errors: exit code 2, one paragraph, no traceback ---------------------------------------------
def test_cli_missing_cifar10_data_dir(tmp_path):
    missing = tmp_path / "no-such-folder"
    result = cli(["train", "--dataset", "cifar10", "--data-dir", missing, "--epochs", 1, "--out", tmp_path / "o"])
    assert_one_paragraph_error(*result, "train", str(missing))
    result = cli(["train", "--dataset", "cifar10", "--epochs", 1, "--out", tmp_path / "o"])
    assert_one_paragraph_error(*result, "train", "cifar10")


def test_cli_corrupt_checkpoint_for_resume(digits_run, tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip archive\n" * 10)
    truncated = tmp_path / "truncated.npz"
    data = open(os.path.join(digits_run["out"], "checkpoint.npz"), "rb").read()
    truncated.write_bytes(data[:len(data) // 2])
    for bad in (garbage, truncated, tmp_path / "missing.npz"):
        result = cli(["train", "--epochs", 2, "--depth", 10, "--growth-rate", 4, "--batch-size", 128,
                      "--resume", bad, "--out", tmp_path / "o"])
        assert_one_paragraph_error(*result, "train", str(bad))


def test_cli_weights_file_that_is_not_npz(tmp_path):
    notes = tmp_path / "weights.npz"
    notes.write_text("just some text, not weights\n")
    np.save(tmp_path / "img.npy", np.zeros((8, 8)))
    assert_one_paragraph_error(*cli(["evaluate", "--weights", notes]), "evaluate", str(notes))
    assert_one_paragraph_error(*cli(["predict", "--weights", notes, tmp_path / "img.npy"]), "predict", str(notes))


def test_resume_with_different_options_is_refused(digits_run, tmp_path):
    ckpt = os.path.join(digits_run["out"], "checkpoint.npz")
    code, stdout, stderr = cli(["train", "--epochs", 2, "--depth", 10, "--growth-rate", 6, "--batch-size", 128,
                                "--resume", ckpt, "--out", tmp_path / "o"])
    assert_one_paragraph_error(code, stdout, stderr, "train", "different options", "--growth-rate 6",
                               "the checkpoint has --growth-rate 4")
    cfg = TrainConfig(depth=10, growth_rate=4, epochs=2, batch_size=128, drop_rate=0.1, out=str(tmp_path / "p"))
    with pytest.raises(TrainingError, match=r"different options.*drop_rate=0\.0"):
        train(cfg, resume=ckpt, log=quiet)
    assert not os.path.exists(tmp_path / "p" / "checkpoint.npz")


# -- the schedule -------------------------------------------------------------------------------------------------
def test_step_schedule_divides_by_10_at_50_and_75_percent(npz_data, tmp_path):
    cfg = npz_config(npz_data, tmp_path / "step", epochs=4, batch_size=64, drop_rate=0.0)
    history = train(cfg, log=quiet)
    assert [r["lr"] for r in history] == pytest.approx([0.1, 0.1, 0.01, 0.001], rel=1e-12)
    assert [r["lr"] for r in read_metrics(cfg.out)] == [r["lr"] for r in history]
    history = train(npz_config(npz_data, tmp_path / "step8", epochs=8, batch_size=64, lr=0.05), log=quiet)
    assert [r["lr"] for r in history] == pytest.approx([0.05] * 4 + [0.005] * 2 + [0.0005] * 2, rel=1e-12)


def test_cosine_schedule(npz_data, tmp_path):
    history = train(npz_config(npz_data, tmp_path / "cos", epochs=4, batch_size=64, schedule="cosine"), log=quiet)
    expected = [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [r["lr"] for r in history] == pytest.approx(expected, rel=1e-12)
    assert history[1]["lr"] == pytest.approx(0.0853553390593, rel=1e-9)


# -- resume: bit-identical to an uninterrupted run -------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_run(npz_data, tmp_path_factory):
    """An uninterrupted 3-epoch run with dropout 0.2 and augmentation: 12 steps."""
    out = tmp_path_factory.mktemp("reference") / "run"
    history = train(npz_config(npz_data, out), log=quiet)
    return dict(out=str(out), history=history)


def test_reference_run_uses_dropout_and_augmentation(reference_run):
    state = run_state(os.path.join(reference_run["out"], "checkpoint.npz"))
    assert len(state["dropout_rng_states"]) == 3                        # one per dense layer of BC-10 (1 x 3)
    cfg = json.loads(str(read_arrays(os.path.join(reference_run["out"], "checkpoint.npz"))["_train_config"][()]))
    assert cfg["drop_rate"] == 0.2 and cfg["augment"] is True
    assert [r["epoch"] for r in reference_run["history"]] == [1, 2, 3]
    assert_no_temporary_files(reference_run["out"])


def test_resume_after_a_stop_at_the_end_of_epoch_1_is_bit_identical(npz_data, reference_run, tmp_path):
    """The checkpoint on disk right after epoch 1 (as a crash during epoch 2 would leave it) resumes exactly."""
    saved = tmp_path / "after-epoch-1.npz"
    out = tmp_path / "first"

    def copy_at_epoch_boundary(run):
        if run.epoch == 1 and run.step == 1 and not saved.exists():
            shutil.copy(out / "checkpoint.npz", saved)             # still the end-of-epoch-1 checkpoint
        return False

    train(npz_config(npz_data, out), log=quiet, on_step=copy_at_epoch_boundary)
    assert (run_state(saved)["epoch"], run_state(saved)["step"]) == (1, 0)
    resumed = tmp_path / "resumed"
    lines = []
    history = train(npz_config(npz_data, resumed), resume=str(saved), log=lines.append)
    assert any("resumed" in line and "epoch 2" in line for line in lines)
    assert without_seconds(history) == without_seconds(reference_run["history"])
    assert without_seconds(read_metrics(resumed)) == without_seconds(reference_run["history"])
    assert_same_final_state(reference_run["out"], resumed)


@pytest.mark.parametrize("stop_after", [2, 6])                       # mid-epoch 1, mid-epoch 2
def test_resume_after_a_mid_epoch_stop_is_bit_identical(npz_data, reference_run, tmp_path, stop_after):
    out = tmp_path / "run"
    steps = []

    def stop(run):
        steps.append((run.epoch, run.step))
        return len(steps) == stop_after

    lines = []
    history = train(npz_config(npz_data, out), log=lines.append, on_step=stop)
    assert len(steps) == stop_after and len(history) == (stop_after - 1) // 4
    state = run_state(out / "checkpoint.npz")
    assert (state["epoch"], state["step"]) == steps[-1] and 0 < state["step"] < 4
    assert any("stopped" in line and "--resume" in line for line in lines)
    assert_no_temporary_files(out)
    history = train(npz_config(npz_data, out), resume=str(out / "checkpoint.npz"), log=quiet)
    assert without_seconds(history) == without_seconds(reference_run["history"])
    assert without_seconds(read_metrics(out)) == without_seconds(reference_run["history"])
    assert_same_final_state(reference_run["out"], out)
    best_ref, best = read_arrays(os.path.join(reference_run["out"], "best.npz")), read_arrays(out / "best.npz")
    weights = [k for k in best_ref if not k.startswith("_")]
    assert weights and all(np.array_equal(best_ref[k], best[k]) for k in weights)


@pytest.mark.parametrize("tamper", ["dropout_rng_states", "epoch_rng_state"])
def test_resume_identity_depends_on_the_restored_rng_states(npz_data, reference_run, tmp_path, tamper):
    """The identity tests above are meaningful: a checkpoint with other RNG states gives other weights."""
    out = tmp_path / "run"
    train(npz_config(npz_data, out), log=quiet, on_step=lambda run: (run.epoch, run.step) == (1, 2))
    arrays = read_arrays(out / "checkpoint.npz")
    state = json.loads(str(arrays["run.state"][()]))
    fresh = np.random.default_rng(12345).bit_generator.state
    if tamper == "dropout_rng_states":
        state[tamper] = [fresh] * len(state[tamper])
    else:
        state[tamper] = fresh
    arrays["run.state"] = np.array(json.dumps(state))
    np.savez(out / "checkpoint.npz", **arrays)
    train(npz_config(npz_data, out), resume=str(out / "checkpoint.npz"), log=quiet)
    with pytest.raises(AssertionError, match="arrays differ"):
        assert_same_final_state(reference_run["out"], out)


def test_on_step_stop_at_the_last_step_of_an_epoch_stops_the_run(npz_data, reference_run, tmp_path):
    out = tmp_path / "run"
    calls = []

    def stop_once_at_end_of_epoch_1(run):
        calls.append((run.epoch, run.step))
        return (run.epoch, run.step) == (0, 4)                          # True exactly once

    history = train(npz_config(npz_data, out), log=quiet, on_step=stop_once_at_end_of_epoch_1)
    assert len(history) <= 1 and len(calls) == 4, f"kept training after the stop request: {len(calls)} steps"
    train(npz_config(npz_data, out), resume=str(out / "checkpoint.npz"), log=quiet)
    assert_same_final_state(reference_run["out"], out)


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_resume_with_more_epochs_follows_the_new_schedule_or_is_refused(npz_data, tmp_path, schedule):
    out = tmp_path / "run"
    train(npz_config(npz_data, out, epochs=2, batch_size=64, schedule=schedule), log=quiet)
    try:
        history = train(npz_config(npz_data, out, epochs=4, batch_size=64, schedule=schedule),
                        resume=str(out / "checkpoint.npz"), log=quiet)
    except TrainingError as e:
        assert "epochs" in str(e)
        return
    expected = {"step": [0.01, 0.001], "cosine": [0.05, 0.1 * (1 + math.cos(3 * math.pi / 4)) / 2]}[schedule]
    assert [r["lr"] for r in history[2:]] == pytest.approx(expected, rel=1e-12)


# -- SIGINT ---------------------------------------------------------------------------------------------------
def test_sigint_stops_cleanly_with_a_checkpoint_and_resumes_bit_identically(npz_data, reference_run, tmp_path):
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)
    handlers, steps = [], []

    def interrupt_at_step_2(run):
        steps.append((run.epoch, run.step))
        if len(steps) == 2:
            handlers.append(signal.getsignal(signal.SIGINT))
            if handlers[0] not in (signal.default_int_handler, signal.SIG_DFL, None):
                os.kill(os.getpid(), signal.SIGINT)                     # as Ctrl-C in a terminal
        return False

    lines = []
    with pytest.raises(KeyboardInterrupt):                              # raised after the checkpoint is saved
        train(npz_config(npz_data, out), log=lines.append, on_step=interrupt_at_step_2)
    assert handlers and handlers[0] not in (signal.default_int_handler, signal.SIG_DFL, None), \
        "train() did not install its own SIGINT handler"
    assert signal.getsignal(signal.SIGINT) is before                     # restored afterwards
    assert len(steps) == 2                                               # on_step not called once interrupted
    state = run_state(out / "checkpoint.npz")
    assert state["epoch"] == 0 and state["step"] in (2, 3)               # at the end of a step, mid-epoch 1
    assert any("stopped" in line for line in lines)
    assert_no_temporary_files(out)
    history = train(npz_config(npz_data, out), resume=str(out / "checkpoint.npz"), log=quiet)
    assert without_seconds(history) == without_seconds(reference_run["history"])
    assert_same_final_state(reference_run["out"], out)


# -- divergence ---------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_absurd_learning_rate_raises_diverged_naming_epoch_step_and_layer(npz_data, tmp_path):
    cfg = npz_config(npz_data, tmp_path / "div", lr=1e6, drop_rate=0.0)
    with pytest.raises(Diverged) as info:
        train(cfg, log=quiet)
    assert isinstance(info.value, TrainingError)
    message = str(info.value)
    assert re.search(r"\bepoch 1\b", message) and re.search(r"\bstep \d+\b", message), message
    assert re.search(r"features\.\w+|classifier|gradient of \w+\.", message), message
    assert "lower --lr" in message


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_cli_divergence_is_a_one_paragraph_error(npz_data, tmp_path):
    result = cli(["train", "--dataset", "npz", "--data-dir", npz_data, "--depth", 10, "--growth-rate", 4,
                  "--batch-size", 16, "--epochs", 2, "--lr", "1e6", "--out", tmp_path / "o"])
    assert_one_paragraph_error(*result, "train", "diverged at epoch 1, step")


# -- the progress bar ---------------------------------------------------------------------------------------------
def test_progress_bar_writes_carriage_return_updates(npz_data, tmp_path):
    run = Run(npz_config(npz_data, tmp_path / "p"), log=quiet)
    run.sums = [2.5 * 32, 24, 32]                                        # mean loss 2.5, accuracy 0.75
    stream = io.StringIO()
    bar = Progress(stream=stream, enabled=True)
    bar.update(run, 2, 4, 0.5)
    text = stream.getvalue()
    assert text.startswith("\r") and "\n" not in text
    assert re.search(r"epoch 1/3", text) and "2/4" in text
    assert re.search(r"loss 2\.5000", text) and re.search(r"acc 0\.750", text)
    assert re.search(r"\b64 img/s", text) and re.search(r"ETA \d+s", text)
    bar.end_line()
    assert stream.getvalue().endswith("\r\033[K")

    silent = io.StringIO()                                               # not a terminal: nothing at all
    auto = Progress(stream=silent)
    auto.update(run, 2, 4, 0.5)
    auto.end_line()
    assert silent.getvalue() == ""


def test_train_feeds_the_progress_bar_once_per_step(npz_data, tmp_path):
    stream = io.StringIO()
    train(npz_config(npz_data, tmp_path / "p", epochs=2), log=quiet, progress=Progress(stream=stream, enabled=True))
    updates = [u for u in stream.getvalue().split("\r") if u.startswith("epoch")]
    assert len(updates) == 8                                             # 2 epochs x 4 steps
    assert [re.search(r" (\d)/4 ", u).group(1) for u in updates] == list("12341234")
    assert all("img/s" in u and "ETA" in u and "loss" in u and "acc" in u for u in updates)
