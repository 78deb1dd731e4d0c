"""What a run shows and leaves behind besides its checkpoints: the progress bar, the closing line,
``metrics.jsonl`` and the learning curves (matplotlib, optional)."""
from __future__ import annotations

import json
import math
import sys

from ..io.files import atomic_write

__all__ = ["Progress", "closing_line", "write_metrics", "plot_curves"]


class Progress:
    """A progress bar on a terminal; otherwise nothing per step (one line per epoch is printed by ``train``)."""

    def __init__(self, stream=None, enabled=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled

    def update(self, run, step, total, seconds, steps_timed=None, images_timed=None):
        """Redraw the bar after ``step`` of ``total``; ``seconds`` covers the last ``steps_timed`` steps and
        ``images_timed`` images (fewer than ``step`` after a mid-epoch resume)."""
        if not self.enabled:
            return
        loss_sum, correct, seen = run.sums
        steps_timed = step if steps_timed is None else steps_timed
        images_timed = seen if images_timed is None else images_timed
        width = 24
        filled = int(width * step / total)
        rate = images_timed / seconds if seconds > 0 else 0.0
        eta = (total - step) * seconds / max(steps_timed, 1)
        self.stream.write(f"\repoch {run.epoch + 1}/{run.config.epochs} [{'#' * filled}{'.' * (width - filled)}] "
                          f"{step}/{total} loss {loss_sum / max(seen, 1):.4f} acc {correct / max(seen, 1):.3f} "
                          f"{rate:.0f} img/s ETA {eta:.0f}s ")
        self.stream.flush()

    def end_line(self):
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def closing_line(history, best_epoch, best_path):
    """The run's last line: the final epoch's test accuracy, then the epoch chosen on validation and its test
    accuracy (the test set chooses nothing)."""
    last = history[-1]
    line = f"done: final epoch {last['epoch']}: test accuracy {last['test_acc']:.4f}"
    if last.get("val_acc") is None:
        return line + f"; no validation set, so {best_path} holds the final epoch's weights"
    best = history[best_epoch - 1]
    return (line + f"; best validation accuracy {best['val_acc']:.4f} at epoch {best['epoch']}, test accuracy "
            f"{best['test_acc']:.4f} there; its weights in {best_path}")


def write_metrics(path, history):
    """Rewrite metrics.jsonl (one JSON object per epoch) atomically; strict JSON: a non-finite number is
    written as null (never NaN or Infinity, which strict parsers refuse)."""
    def strict(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    text = "".join(json.dumps({k: strict(v) for k, v in row.items()}, allow_nan=False) + "\n" for row in history)
    atomic_write(path, lambda f: f.write(text.encode()))


def plot_curves(history, path, log=print):
    """Save learning curves as a PNG when matplotlib is installed; otherwise say how to get them."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log('(no curves.png: matplotlib is not installed; pip install "numpy_densenet[plot]")')
        return None
    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    parts = [("train", "C0"), ("val", "C1"), ("test", "C2")]
    with_val = bool(history) and history[0].get("val_loss") is not None
    for part, colour in parts:
        if part == "val" and not with_val:
            continue
        label = "validation" if part == "val" else part
        ax1.plot(epochs, [r[f"{part}_loss"] for r in history], label=label, color=colour)
        ax2.plot(epochs, [r[f"{part}_acc"] for r in history], label=label, color=colour)
    if with_val:                                    # the epoch best.npz holds
        chosen = max(history, key=lambda r: (r["val_acc"], -r["val_loss"], -r["epoch"]))["epoch"]
        for ax in (ax1, ax2):
            ax.axvline(chosen, color="0.5", linestyle=":", linewidth=1, label=f"best.npz (epoch {chosen})")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend(fontsize=8)
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy"), ax2.legend(fontsize=8)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    log(f"learning curves: {path}")
    return path
