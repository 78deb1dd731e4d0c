"""benchmarks/bench_time_to_accuracy.py: its --help and a seconds-long smoke run on the bundled digits (no timing
is checked: only that both libraries ran every epoch and the report and JSON file are complete)."""
import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_time_to_accuracy.py")
HAVE_TORCH = importlib.util.find_spec("torch") is not None


def run(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=600, env=env,
                          cwd=ROOT)


def test_help_lists_every_setting():
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    for option in ("--dataset", "--data-dir", "--model", "--depth", "--growth-rate", "--epochs", "--batch-size",
                   "--lr", "--momentum", "--weight-decay", "--schedule", "--augment", "--no-augment",
                   "--val-fraction", "--seed", "--threads", "--libs", "--rounds", "--torch-init", "--targets",
                   "--limit", "--eval-limit", "--json", "--timeout", "--budget", "--src"):
        assert option in proc.stdout, option


def test_smoke_run_on_digits(tmp_path):
    libs = "numpy,torch" if HAVE_TORCH else "numpy"
    out = tmp_path / "tta.json"
    proc = run("--dataset", "digits", "--epochs", "2", "--limit", "200", "--eval-limit", "60", "--depth", "10",
               "--growth-rate", "4", "--batch-size", "32", "--threads", "1", "--libs", libs,
               "--targets", "0.1,0.999", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "CPU:" in proc.stdout and "kernel" in proc.stdout                     # the environment report
    assert "Time to validation accuracy" in proc.stdout
    report = json.loads(out.read_text())
    assert report["env"]["cpu"] and report["settings"]["epochs"] == 2
    assert [r["lib"] for r in report["results"]] == libs.split(",")
    for r in report["results"]:
        assert "error" not in r and r["done"] is not None and r["setup"]["test_images"] == 60
        assert r["setup"]["train_images"] + r["setup"]["val_images"] == 200 and r["setup"]["val_images"] >= 10
        assert [row["epoch"] for row in r["epochs"]] == [1, 2]
        for row in r["epochs"]:
            assert row["wall"] > 0 and row["cpu"] >= 0 and row["rss_mb"] > 0 and row["cum_wall"] > 0
            assert 0 <= row["val_acc"] <= 1 and 0 <= row["test_acc"] <= 1
    if HAVE_TORCH:                                  # the same schedule in both libraries: the same
        a, b = report["results"]                     # learning rates
        assert [row["lr"] for row in a["epochs"]] == [row["lr"] for row in b["epochs"]] == [0.1, 0.05]


def test_budget_stops_a_run_after_the_epoch_that_passes_it(tmp_path):
    """A budget of a millisecond: every run is past it when its first epoch ends, so it stops there, and the
    report says the targets were not reached in that time (not an error)."""
    out = tmp_path / "tta.json"
    proc = run("--dataset", "digits", "--epochs", "3", "--limit", "120", "--eval-limit", "40", "--depth", "10",
               "--growth-rate", "4", "--batch-size", "32", "--threads", "1", "--libs", "numpy",
               "--targets", "0.999", "--budget", "0.001", "--json", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (r,) = json.loads(out.read_text())["results"]
    assert "error" not in r and [row["epoch"] for row in r["epochs"]] == [1]
    assert r["stopped"]["epoch"] == 1 and r["stopped"]["budget"] == 0.001
    assert "stopped after epoch 1" in proc.stdout and "stopped at its budget" in proc.stdout


def test_budget_must_be_first_or_seconds():
    proc = run("--budget", "soon")
    assert proc.returncode != 0 and "--budget must be empty, 'first' or a number of seconds > 0, got 'soon'" \
        in proc.stderr
