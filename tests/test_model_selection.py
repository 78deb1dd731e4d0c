"""Model selection on a validation split (never on the test set), and runs that refuse to overwrite a run."""
import hashlib
import json
import os

import numpy as np
import pytest

from numpy_densenet.data import load_dataset
from numpy_densenet.data.datasets import Dataset
from numpy_densenet.data.splits import stratified_split, validation_split
from numpy_densenet.io import load_model_file
from numpy_densenet.training import TrainConfig, TrainingError, closing_line, train
from test_train import cli, quiet, read_metrics, write_npz_dataset


# -- the split ----------------------------------------------------------------------------------------------
def test_stratified_split_is_seeded_disjoint_complete_and_keeps_class_shares():
    y = load_dataset("digits").y_train
    kept, held = stratified_split(y, 0.1, seed=3)
    assert np.intersect1d(kept, held).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(y)))
    for c in range(10):
        n_c = int((y == c).sum())
        assert int((y[held] == c).sum()) == round(0.1 * n_c)           # every class gives its share
    again, _ = stratified_split(y, 0.1, seed=3)
    other, _ = stratified_split(y, 0.1, seed=4)
    np.testing.assert_array_equal(kept, again)
    assert not np.array_equal(kept, other)


def test_stratified_split_edge_cases():
    kept, held = stratified_split(np.array([0, 0, 1, 2, 2, 2]), 0.01, seed=0)
    assert sorted(np.array([0, 0, 1, 2, 2, 2])[held].tolist()) == [0, 2]   # >= 1 per class; a lone image stays
    kept, held = stratified_split(np.array([0, 1, 1]), 0.0)
    assert held.size == 0 and kept.tolist() == [0, 1, 2]
    for bad in (-0.1, 1.0, 1.5, "0.1"):
        with pytest.raises(ValueError, match="fraction"):
            stratified_split(np.array([0, 1]), bad)


def _dataset(n=20, val=None):
    x = np.zeros((n, 1, 4, 4), np.uint8)
    y = np.arange(n) % 2
    extra = {} if val is None else dict(x_val=np.zeros((val, 1, 4, 4), np.uint8), y_val=np.arange(val) % 2)
    return Dataset("t", x, y, x[:4], y[:4], 2, **extra)


def test_validation_split_prefers_an_official_split_and_zero_turns_it_off():
    official = validation_split(_dataset(val=6), 0.1)
    assert official.source == "official" and official.size == 6 and len(official.y_train) == 20
    held = validation_split(_dataset(), 0.2)
    assert held.source == "held out" and held.size == 4 and len(held.y_train) == 16
    for d in (_dataset(), _dataset(val=6)):
        none = validation_split(d, 0)
        assert none.source == "none" and none.size == 0 and len(none.y_train) == 20
    with pytest.raises(ValueError, match="--val-fraction"):
        validation_split(_dataset(), 1.0)
    with pytest.raises(ValueError, match="x_val and y_val"):
        Dataset("t", np.zeros((2, 1, 4, 4)), np.arange(2), np.zeros((2, 1, 4, 4)), np.arange(2), 2,
                x_val=np.zeros((2, 1, 4, 4)))


def test_npz_file_with_an_official_validation_split(tmp_path):
    path = write_npz_dataset(tmp_path / "d.npz")
    with np.load(path) as z:
        arrays = dict(z)
    rng = np.random.default_rng(5)
    arrays["x_val"] = rng.integers(0, 255, (10, 3, 8, 8)).astype(np.uint8)
    arrays["y_val"] = rng.integers(0, 4, 10)
    np.savez(tmp_path / "v.npz", **arrays)
    d = load_dataset("npz", tmp_path / "v.npz")
    assert d.x_val.shape == (10, 3, 8, 8) and d.y_val.tolist() == arrays["y_val"].tolist()
    lines = []
    history = train(TrainConfig(dataset="npz", data_dir=str(tmp_path / "v.npz"), depth=10, growth_rate=2, epochs=1,
                                batch_size=32, out=str(tmp_path / "run")), log=lines.append)
    assert "64 train / 10 validation / 16 test images" in lines[0]               # x_train kept whole
    assert history[0]["val_acc"] is not None
    del arrays["y_val"]
    np.savez(tmp_path / "bad.npz", **arrays)
    from numpy_densenet.data import DatasetError
    with pytest.raises(DatasetError, match="x_val"):
        load_dataset("npz", tmp_path / "bad.npz")


# -- selection ------------------------------------------------------------------------------------------------
def test_best_npz_is_the_epoch_with_the_best_validation_accuracy(tmp_path):
    data = write_npz_dataset(tmp_path / "d.npz", n_train=96, n_test=32)
    lines = []
    cfg = TrainConfig(dataset="npz", data_dir=str(data), depth=10, growth_rate=2, epochs=5, batch_size=16,
                      lr=0.05, val_fraction=0.25, out=str(tmp_path / "run"))
    history = train(cfg, log=lines.append)
    rows = read_metrics(tmp_path / "run")
    assert rows == json.loads(json.dumps(history))
    chosen = max(rows, key=lambda r: (r["val_acc"], -r["val_loss"], -r["epoch"]))
    model, meta = load_model_file(tmp_path / "run" / "best.npz")
    from numpy_densenet.training import evaluate
    d = load_dataset("npz", data)
    r = evaluate(model, d.x_test, d.y_test, mean=meta["mean"], std=meta["std"])
    assert r["acc"] == pytest.approx(chosen["test_acc"], abs=1e-12)
    assert "24 validation" in lines[0]
    assert lines[-2 if lines[-1].startswith(("learning curves", "(no curves")) else -1] == closing_line(
        rows, chosen["epoch"], os.path.join(cfg.out, "best.npz"))


def test_test_accuracy_chooses_nothing(tmp_path, monkeypatch):
    """Scripted accuracies that peak at different epochs on validation (2) and test (3): best.npz is epoch 2."""
    import numpy_densenet.training.run as tr
    data = write_npz_dataset(tmp_path / "d.npz", n_train=40, n_test=16)
    script = {"val": iter([0.5, 0.9, 0.7]), "test": iter([0.6, 0.5, 0.95])}

    def scripted(model, x, y, **kw):                        # 16 test images; the validation set is smaller
        return dict(loss=1.0, acc=next(script["test" if len(y) == 16 else "val"]))

    written = []
    real_save = tr.save_npz

    def recording_save(path, arrays):
        if os.path.basename(path) == "best.npz":            # metrics.jsonl is rewritten after best.npz
            metrics = tmp_path / "run" / "metrics.jsonl"
            written.append(len(read_metrics(tmp_path / "run")) + 1 if metrics.exists() else 1)
        real_save(path, arrays)

    monkeypatch.setattr(tr, "evaluate", scripted)
    monkeypatch.setattr(tr, "save_npz", recording_save)
    lines = []
    train(TrainConfig(dataset="npz", data_dir=str(data), depth=10, growth_rate=2, epochs=3, batch_size=16,
                      out=str(tmp_path / "run")), log=lines.append)
    assert written == [1, 2]                                # improved at epochs 1 and 2, not at 3
    done = next(line for line in lines if line.startswith("done:"))
    assert done.startswith("done: final epoch 3: test accuracy 0.9500; best validation accuracy 0.9000 at epoch 2, "
                           "test accuracy 0.5000 there")


def test_closing_line_reports_the_final_epoch_and_the_chosen_epoch_separately():
    rows = [dict(epoch=1, val_acc=0.9, val_loss=0.3, test_acc=0.95), dict(epoch=2, val_acc=0.8, val_loss=0.4,
                                                                          test_acc=0.97)]
    assert closing_line(rows, 1, "r/best.npz") == ("done: final epoch 2: test accuracy 0.9700; best validation "
                                                   "accuracy 0.9000 at epoch 1, test accuracy 0.9500 there; its "
                                                   "weights in r/best.npz")
    rows = [dict(r, val_acc=None, val_loss=None) for r in rows]
    assert closing_line(rows, 2, "r/best.npz") == ("done: final epoch 2: test accuracy 0.9700; no validation set, "
                                                   "so r/best.npz holds the final epoch's weights")


def test_without_validation_best_npz_is_the_last_epoch(tmp_path):
    data = write_npz_dataset(tmp_path / "d.npz")
    out = tmp_path / "run"
    history = train(TrainConfig(dataset="npz", data_dir=str(data), depth=10, growth_rate=2, epochs=2, batch_size=32,
                                val_fraction=0, out=str(out)), log=quiet)
    assert [r["val_acc"] for r in history] == [None, None]
    best, _ = load_model_file(out / "best.npz")
    with np.load(out / "checkpoint.npz") as z:
        final = {k[len("model."):]: z[k] for k in z.files if k.startswith("model.")}
    for k, v in best.state_dict().items():
        np.testing.assert_array_equal(v, final[k])


def test_cli_val_fraction_is_checked():
    code, _, stderr = cli(["train", "--val-fraction", "1.5"])
    assert code == 2 and "--val-fraction" in stderr and "[0, 1)" in stderr


# -- an existing run is never replaced silently ---------------------------------------------------------------
def _fingerprint(folder):
    return {n: (hashlib.sha256((folder / n).read_bytes()).hexdigest(), os.stat(folder / n).st_mtime_ns)
            for n in sorted(os.listdir(folder))}


def test_train_into_a_folder_with_a_run_refuses_and_changes_nothing(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--depth", 10, "--growth-rate", 2, "--epochs", 1, "--batch-size", 256, "--out", out]
    code, _, stderr = cli(args)
    assert code == 0, stderr
    before = _fingerprint(out)
    assert {"metrics.jsonl", "checkpoint.npz", "best.npz"} <= set(before)
    code, stdout, stderr = cli(args + ["--epochs", 2])
    assert code == 2 and stdout == ""
    assert "already holds a run" in stderr and "--resume" in stderr and "--overwrite" in stderr, stderr
    assert _fingerprint(out) == before
    with pytest.raises(TrainingError, match="--overwrite"):
        train(TrainConfig(depth=10, growth_rate=2, epochs=1, out=str(out)), log=quiet)
    assert _fingerprint(out) == before


def test_overwrite_replaces_the_earlier_run(tmp_path):
    out = tmp_path / "run"
    base = ["train", "--depth", 10, "--growth-rate", 2, "--batch-size", 256, "--out", out]
    assert cli(base + ["--epochs", 2])[0] == 0
    (out / "curves.png").write_bytes(b"stale")                 # even without matplotlib: nothing old remains
    code, _, stderr = cli(base + ["--epochs", 1, "--overwrite"])
    assert code == 0, stderr
    assert [r["epoch"] for r in read_metrics(out)] == [1]
    assert not (out / "curves.png").exists() or (out / "curves.png").read_bytes() != b"stale"


def test_a_checkpoint_from_before_validation_splits_resumes_without_one(tmp_path):
    """Old checkpoints have no val_fraction in their options: they ran without validation, and resume so."""
    data = write_npz_dataset(tmp_path / "d.npz")
    out = tmp_path / "run"
    cfg = TrainConfig(dataset="npz", data_dir=str(data), depth=10, growth_rate=2, epochs=2, batch_size=32,
                      val_fraction=0, out=str(out))
    train(cfg, log=quiet, on_step=lambda run: (run.epoch, run.step) == (1, 1))
    with np.load(out / "checkpoint.npz", allow_pickle=False) as z:
        arrays = dict(z)
    options = json.loads(str(arrays["_train_config"][()]))
    del options["val_fraction"]
    arrays["_train_config"] = np.array(json.dumps(options))
    np.savez(out / "checkpoint.npz", **arrays)
    code, stdout, stderr = cli(["train", "--resume", out / "checkpoint.npz"])
    assert code == 0, stderr
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2] and "no validation set" in stdout
