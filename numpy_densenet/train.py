"""Training and evaluation: the loop behind ``numpy-densenet train`` / ``evaluate``, usable from Python.

A run is described by a :class:`TrainConfig`; :func:`train` runs it, writing to ``config.out``:

* ``metrics.jsonl`` - one JSON object per epoch (epoch, lr, train_loss, train_acc, test_loss, test_acc, seconds);
* ``checkpoint.npz`` - the latest state, written atomically after every epoch (and on Ctrl-C): weights, BatchNorm
  buffers, optimizer momentum, schedule position, RNG states, epoch and step - plain arrays, no pickle;
* ``best.npz`` - the weights with the best test accuracy so far, with the model config and the normalisation
  statistics, so ``evaluate``/``predict`` can rebuild the model from the file alone;
* ``curves.png`` - the learning curves, when matplotlib is installed.

Resuming from a checkpoint continues the run so that it ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from .data import BatchIterator, DatasetError, channel_stats, load_dataset
from .nn.module import restore_buffers
from .io import WeightsFileError, load_npz, save_npz
from .model import MODELS, DenseNet
from .nn import CrossEntropyLoss, no_grad
from .optim import SGD, CosineAnnealingLR, paper_schedule

CHECKPOINT_VERSION = 1


class TrainingError(Exception):
    """A run that cannot start or cannot go on (bad options, a model that does not fit the data, divergence)."""


@dataclass
class TrainConfig:
    """Everything that defines a training run. Defaults: the bundled digits and a small DenseNet-BC.

    For CIFAR-style runs the defaults follow the paper: SGD, Nesterov momentum 0.9, weight decay 1e-4,
    lr 0.1 divided by 10 at 50% and 75% of the epochs, batch 64, "+" augmentation.
    """
    dataset: str = "digits"
    data_dir: str | None = None
    model: str = "densenet_bc"
    depth: int | None = None            # densenet_bc / densenet only; default 16 on digits, else 100 / 40
    growth_rate: int | None = None      # densenet_bc / densenet only; default 12
    drop_rate: float = 0.0
    epochs: int | None = None           # default 30 on digits, 300 otherwise (the paper's CIFAR recipe)
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "step"              # "step" (x0.1 at 50% and 75%) or "cosine"
    augment: bool | None = None         # default: on for CIFAR and npz, off for digits / MNIST
    seed: int = 0
    dtype: str = "float32"
    out: str = "runs/digits"

    def resolved(self):
        """A copy with every default that depends on the dataset filled in."""
        c = TrainConfig(**asdict(self))
        small = c.dataset in ("digits",)
        if c.model in ("densenet_bc", "densenet"):
            c.depth = c.depth if c.depth is not None else (16 if small else (100 if c.model == "densenet_bc" else 40))
            c.growth_rate = c.growth_rate if c.growth_rate is not None else 12
        if c.epochs is None:
            c.epochs = 30 if small else 300
        if c.augment is None:
            c.augment = c.dataset in ("cifar10", "cifar100", "npz")
        return c


def make_model(config, in_channels, num_classes):
    """Build the configured model (seeded by ``config.seed``)."""
    kwargs = dict(num_classes=num_classes, in_channels=in_channels, drop_rate=config.drop_rate,
                  dtype=np.dtype(config.dtype), seed=config.seed)
    if config.model not in MODELS:
        raise TrainingError(f"--model must be one of {', '.join(MODELS)}, got {config.model!r}")
    try:
        if config.model in ("densenet_bc", "densenet"):
            return MODELS[config.model](config.depth, config.growth_rate, **kwargs)
        if config.depth is not None or config.growth_rate is not None:
            raise TrainingError(f"--depth and --growth-rate apply to densenet_bc and densenet, not {config.model}")
        return MODELS[config.model](**kwargs)
    except ValueError as e:
        raise TrainingError(str(e)) from None


def _check_fits(model, image_shape):
    """Fail early, with a clear message, when the images are too small for the architecture."""
    model.eval()
    try:
        with no_grad():
            model(np.zeros((1,) + tuple(image_shape), dtype=model.dtype))
    except ValueError as e:
        raise TrainingError(f"the model cannot take {image_shape[1]}x{image_shape[2]} images: {e}. Use a model "
                            f"with fewer downsampling stages (e.g. --model densenet_bc) or larger images") from None
    finally:
        model.train()


# -- one epoch ----------------------------------------------------------------------------------------------
class Diverged(TrainingError):
    pass


def train_step(model, criterion, optimizer, x, y):
    """Forward, loss, backward, update. Returns (loss, number correct); raises :class:`Diverged` on NaN/inf."""
    optimizer.zero_grad()
    logits = model(x)                                                     # (B, K)
    loss = float(criterion(logits, y))
    if not math.isfinite(loss):
        raise Diverged(f"the loss became {loss}; first non-finite output: {first_nonfinite_output(model, x)}")
    model.backward(criterion.backward())
    for name, p in reversed(list(model.named_parameters())):            # backward order: head first
        if not np.isfinite(p.grad).all():
            raise Diverged(f"the gradient of {name} became non-finite (the first such layer in backward order)")
    optimizer.step()
    return loss, int((logits.argmax(axis=1) == y).sum())


def first_nonfinite_output(model, x):
    """Name the first stage of a forward pass whose output is not finite (BN buffers restored afterwards)."""
    buffers = {name: np.array(b, copy=True) for name, b in model.named_buffers()}
    try:
        with no_grad():
            for name, _, out in model.forward_stages(x):
                if not np.isfinite(out).all():
                    return name
        return "none (the logits are finite; the loss overflowed)"
    finally:
        restore_buffers(model, buffers)


def evaluate(model, x, y, batch_size=256, mean=None, std=None, num_classes=None):
    """Eval-mode loss, accuracy and confusion matrix over a whole split.

    Parameters
    ----------
    x : ndarray (N, C, H, W), raw (uint8 or [0, 1] floats); normalised with ``mean``/``std`` here.
    y : ndarray (N,)

    Returns
    -------
    dict with loss, acc, confusion ((K, K) counts, rows = true class) and per_class_acc (K,).
    """
    was_training = model.training
    model.eval()
    criterion = CrossEntropyLoss(reduction="sum")
    K = num_classes or model.config["num_classes"]
    confusion = np.zeros((K, K), dtype=np.int64)
    total_loss = 0.0
    it = BatchIterator(x, y, batch_size, shuffle=False, mean=mean, std=std, dtype=model.dtype)
    try:
        for xb, yb in it:
            with no_grad():
                logits = model(xb)
            total_loss += float(criterion(logits, yb))
            pairs = yb * K + logits.argmax(axis=1)                        # (true, predicted) as one index
            confusion += np.bincount(pairs, minlength=K * K).reshape(K, K)
    finally:
        model.train(was_training)
    n = max(int(confusion.sum()), 1)
    per_class = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
    return dict(loss=total_loss / n, acc=float(np.trace(confusion)) / n, confusion=confusion,
                per_class_acc=per_class)


# -- checkpoints ----------------------------------------------------------------------------------------------
def _json_array(obj):
    return np.array(json.dumps(obj))                                     # a unicode scalar: no pickle needed


def _from_json_array(a):
    return json.loads(str(a[()]))


def metadata_arrays(model, config, mean, std, classes):
    """What, besides the weights, a file needs to rebuild and use the model (keys start with "_")."""
    return {"_model_config": _json_array(model.config), "_train_config": _json_array(asdict(config)),
            "_mean": np.asarray(mean), "_std": np.asarray(std), "_classes": _json_array(list(classes))}


def weights_arrays(model, config, mean, std, classes):
    """The arrays of a weights file (best.npz): state_dict plus the metadata."""
    return {**model.state_dict(), **metadata_arrays(model, config, mean, std, classes)}


def load_model_file(path, dtype=None):
    """Rebuild a model saved by ``train`` (best.npz / checkpoint.npz / a weights file with ``_model_config``).

    Returns (model, metadata dict with mean, std, classes).
    """
    arrays = load_npz(path)
    if "_model_config" not in arrays:
        raise WeightsFileError(f"weights file {os.fspath(path)!r} has no model description (_model_config): it was "
                               f"not written by `numpy-densenet train`. Converted torchvision weights can be "
                               f"evaluated with --model, or loaded from Python with numpy_densenet.io.load_weights")
    cfg = _from_json_array(arrays["_model_config"])
    cfg["block_config"] = tuple(cfg["block_config"])
    dt = np.dtype(dtype) if dtype else arrays["classifier.weight"].dtype if "classifier.weight" in arrays \
        else np.dtype(np.float32)
    model = DenseNet(**cfg, dtype=dt)
    prefix = "model." if any(k.startswith("model.") for k in arrays) else ""
    state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix) and not k[len(prefix):].startswith("_")
             and not k.startswith(("optim.", "sched.", "run."))}
    try:
        model.load_state_dict(state)
    except ValueError as e:
        raise WeightsFileError(f"weights file {os.fspath(path)!r} does not fit its own model description: {e}") \
            from None
    meta = dict(mean=arrays.get("_mean"), std=arrays.get("_std"),
                classes=_from_json_array(arrays["_classes"]) if "_classes" in arrays else None)
    return model, meta


class Run:
    """The state of a training run: model, optimizer, schedule, data iterators and bookkeeping."""

    def __init__(self, config: TrainConfig, log=print, distributed=None):
        self.config = config = config.resolved()
        self.log = log
        if config.dtype not in ("float32", "float64"):
            raise TrainingError(f"--dtype must be float32 or float64, got {config.dtype!r}")
        for name in ("epochs", "batch_size"):
            v = getattr(config, name)
            if not isinstance(v, int) or v < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if not config.lr > 0:
            raise TrainingError(f"--lr must be positive, got {config.lr!r}")
        if config.schedule not in ("step", "cosine"):
            raise TrainingError(f"--schedule must be 'step' or 'cosine', got {config.schedule!r}")
        try:
            self.data = load_dataset(config.dataset, config.data_dir)
        except (DatasetError, ValueError) as e:
            raise TrainingError(str(e)) from None
        d = self.data
        self.mean, self.std = channel_stats(d.x_train)                   # per channel, training set only
        if (self.std == 0).any():                                        # a constant channel carries nothing:
            log(f"note: channel(s) {np.flatnonzero(self.std == 0).tolist()} of the training images are constant; "
                f"they are centred but not scaled")
            self.std = np.where(self.std == 0, 1.0, self.std)            # centre it, do not divide by 0
        self.model = make_model(config, d.in_channels, d.num_classes)
        _check_fits(self.model, d.x_train.shape[1:])
        self.dp = None                  # distributed: a DataParallel over the MPI ranks (see distributed.py)
        if distributed is not None:
            from .distributed import DataParallel
            self.dp = DataParallel(self.model, **distributed)
        self.is_root = self.dp is None or self.dp.is_root                 # the process that writes files
        self.criterion = CrossEntropyLoss()
        # BatchNorm cannot train on a batch of one image: drop a last batch that would hold just one (or, over
        # P ranks, fewer than P: every rank needs an image).
        last = len(d.y_train) % config.batch_size
        drop_last = (last == 1 and len(d.y_train) > 1) or (self.dp is not None and 0 < last < self.dp.world_size)
        try:
            self.optimizer = SGD(self.model.named_parameters(), lr=config.lr, momentum=config.momentum,
                                 weight_decay=config.weight_decay, nesterov=config.momentum > 0)
            self.scheduler = (paper_schedule(self.optimizer, config.epochs) if config.schedule == "step"
                              else CosineAnnealingLR(self.optimizer, config.epochs))
            self.batches = BatchIterator(d.x_train, d.y_train, config.batch_size, shuffle=True,
                                         augment=config.augment, mean=self.mean, std=self.std,
                                         dtype=np.dtype(config.dtype), seed=np.random.default_rng([config.seed, 1]),
                                         drop_last=drop_last)
        except ValueError as e:
            raise TrainingError(f"{e} (check --lr, --momentum, --weight-decay, --batch-size)") from None
        self.epoch = 0                  # epochs completed
        self.step = 0                   # steps completed within the current epoch
        self.epoch_rng_state = self.batches.rng.bit_generator.state
        self.sums = [0.0, 0, 0]         # loss * batch, correct, seen: this epoch so far
        self.history = []
        self.best_acc = -1.0
        self.stop = False               # a stop (Ctrl-C, on_step) was requested

    # -- state as plain arrays --------------------------------------------------------------------------------
    def state_arrays(self):
        arrays = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"optim.{k}": v for k, v in self.optimizer.state_dict().items()})
        arrays.update({f"sched.{k}": v for k, v in self.scheduler.state_dict().items()})
        dropout_states = [m.generator.bit_generator.state for m in self.model.modules() if hasattr(m, "generator")]
        arrays["run.state"] = _json_array(dict(
            version=CHECKPOINT_VERSION, epoch=self.epoch, step=self.step, sums=self.sums, history=self.history,
            best_acc=self.best_acc, epoch_rng_state=self.epoch_rng_state, dropout_rng_states=dropout_states))
        arrays.update(metadata_arrays(self.model, self.config, self.mean, self.std, self.data.classes))
        return arrays

    def save_checkpoint(self, path):
        """Write the checkpoint (only rank 0 writes; over MPI the other ranks' state is identical, with
        ``sync_bn=False`` once rank 0's running statistics are broadcast, done here)."""
        if self.dp is not None:
            self.dp.broadcast_buffers()
        if self.is_root:
            save_npz(path, self.state_arrays())
        if self.dp is not None:
            self.dp.comm.Barrier()                                      # written before any rank goes on

    def load_checkpoint(self, path):
        arrays = load_npz(path, what="checkpoint")
        if "run.state" not in arrays:
            raise WeightsFileError(f"checkpoint {os.fspath(path)!r} is not a training checkpoint (no run.state); "
                                   f"weights-only files can be evaluated, not resumed")
        state = _from_json_array(arrays["run.state"])
        saved = _from_json_array(arrays["_train_config"])
        mine = asdict(self.config)
        differ = [k for k in mine if k != "out" and saved.get(k) != mine[k]]
        if differ:
            raise TrainingError(f"checkpoint {os.fspath(path)!r} was made with different options: "
                                + ", ".join(f"{k}={saved.get(k)!r} (now {mine[k]!r})" for k in differ))

        def part(prefix):
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        try:
            self.model.load_state_dict(part("model."))
            self.optimizer.load_state_dict(part("optim."))
            self.scheduler.load_state_dict(part("sched."))
        except ValueError as e:
            raise WeightsFileError(f"checkpoint {os.fspath(path)!r} does not fit this run: {e}") from None
        gens = [m.generator for m in self.model.modules() if hasattr(m, "generator")]
        for g, s in zip(gens, state["dropout_rng_states"]):
            g.bit_generator.state = s
        if self.dp is not None:
            self.dp.decorrelate_dropout()                              # rank 0's masks were saved
        self.epoch, self.step, self.sums = state["epoch"], state["step"], state["sums"]
        self.history, self.best_acc = state["history"], state["best_acc"]
        self.epoch_rng_state = state["epoch_rng_state"]
        self.batches.rng.bit_generator.state = self.epoch_rng_state

    # -- the loop -----------------------------------------------------------------------------------------------
    def run_epoch(self, progress, stop_requested):
        """Train one epoch (or the rest of one, after a mid-epoch resume). Returns False if stopped early."""
        self.batches.rng.bit_generator.state = self.epoch_rng_state     # the epoch's order and augmentation
        self.model.train()
        start = time.perf_counter()
        total = len(self.batches)
        first_step, first_seen = self.step, self.sums[2]                 # after a resume: what this run did
        model = self.dp or self.model
        for i, (xb, yb) in enumerate(self.batches):
            if i < self.step:
                continue                                                # already done before the interruption
            if self.dp is not None:                                     # every rank drew the same batch:
                mine = self.dp.shard(len(yb))                           # take this rank's slice
                xb, yb = xb[mine], yb[mine]
            try:
                loss, correct = train_step(model, self.criterion, self.optimizer, xb, yb)
            except Diverged as e:
                raise Diverged(f"training diverged at epoch {self.epoch + 1}, step {i + 1}: {e}. Try a lower --lr")\
                    from None
            batch = [loss * len(yb), correct, len(yb)]
            if self.dp is not None:
                batch = self.dp.sum_over_ranks(batch)                   # the whole batch's loss, correct, count
            self.sums[0] += float(batch[0])
            self.sums[1] += int(batch[1])
            self.sums[2] += int(batch[2])
            self.step = i + 1
            progress.update(self, i + 1, total, time.perf_counter() - start, i + 1 - first_step,
                            self.sums[2] - first_seen)
            stop = stop_requested()
            if self.dp is not None:
                stop = self.dp.any_rank(stop)                           # all ranks stop after the same step
            if stop:
                self.stop = True
                if self.step < total:
                    return False
        return True

    def finish_epoch(self, seconds):
        cfg = self.config
        if self.dp is not None:                                         # the test set shared between the ranks
            from .distributed import evaluate as evaluate_shared
            test = evaluate_shared(self.dp, self.data.x_test, self.data.y_test, mean=self.mean, std=self.std)
        else:
            test = evaluate(self.model, self.data.x_test, self.data.y_test, mean=self.mean, std=self.std)
        loss_sum, correct, seen = self.sums
        row = dict(epoch=self.epoch + 1, lr=self.optimizer.lr, train_loss=loss_sum / max(seen, 1),
                   train_acc=correct / max(seen, 1), test_loss=test["loss"], test_acc=test["acc"],
                   seconds=round(seconds, 3))
        self.history.append(row)
        self.epoch += 1
        self.step = 0
        self.sums = [0.0, 0, 0]
        self.scheduler.step()
        self.epoch_rng_state = self.batches.rng.bit_generator.state    # the next epoch starts from here
        improved = test["acc"] > self.best_acc
        if improved:
            self.best_acc = test["acc"]
            if self.is_root:
                save_npz(os.path.join(cfg.out, "best.npz"),
                         weights_arrays(self.model, cfg, self.mean, self.std, self.data.classes))
        self.save_checkpoint(os.path.join(cfg.out, "checkpoint.npz"))
        if self.is_root:
            write_metrics(os.path.join(cfg.out, "metrics.jsonl"), self.history)
        return row


def write_metrics(path, history):
    """Rewrite metrics.jsonl (one JSON object per epoch) atomically."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


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


def train(config: TrainConfig, resume=None, log=print, progress=None, on_step=None, distributed=None):
    """Run (or resume) a training run. Returns the run's history (a list of per-epoch dicts).

    Parameters
    ----------
    config : TrainConfig
    resume : path, optional
        A ``checkpoint.npz`` to continue from; the run then ends bit-identical to an uninterrupted one.
    log : callable
        Receives one line per epoch and the messages.
    progress : Progress, optional
        Defaults to a progress bar when stderr is a terminal.
    on_step : callable, optional
        Called after every step with the :class:`Run`; returning True stops the run cleanly (a checkpoint is
        saved, as on Ctrl-C).
    distributed : dict, optional
        Train data-parallel over the MPI ranks running this same call (``mpiexec -n P``): the keyword arguments
        of :class:`numpy_densenet.distributed.DataParallel` (``{}`` for its defaults: COMM_WORLD,
        ``sync_bn=True``). ``config.batch_size`` is then the global batch; every rank draws the same order and
        augmentation and trains on its slice; metrics are summed over the ranks; only rank 0 writes files and
        the curves (pass a silent ``log`` on the other ranks).
    """
    run = Run(config, log, distributed)
    cfg = run.config
    try:
        os.makedirs(cfg.out, exist_ok=True)
    except OSError as e:
        raise TrainingError(f"--out {cfg.out!r} cannot be used as an output folder: {e.strerror}") from None
    if resume:
        run.load_checkpoint(resume)
        log(f"resumed from {resume} at epoch {run.epoch + 1}, step {run.step}")
    progress = progress or Progress()
    d = run.data
    log(f"training {cfg.model} ({run.model.num_parameters():,} parameters) on {d.name}: {len(d.y_train)} train / "
        f"{len(d.y_test)} test images {d.in_channels}x{d.image_size[0]}x{d.image_size[1]}, {cfg.epochs} epochs, "
        f"batch {cfg.batch_size}, {cfg.dtype}, augment={'on' if cfg.augment else 'off'}; output in {cfg.out}")

    interrupted = []

    def on_sigint(signum, frame):       # finish the current step, then save and stop
        interrupted.append(True)

    def stop_requested():
        return bool(interrupted) or bool(on_step and on_step(run))

    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    try:
        while run.epoch < cfg.epochs:
            start = time.perf_counter()
            finished = run.run_epoch(progress, stop_requested)
            progress.end_line()
            if not finished:
                path = os.path.join(cfg.out, "checkpoint.npz")
                run.save_checkpoint(path)
                log(f"stopped at epoch {run.epoch + 1}, step {run.step}: checkpoint saved to {path}; continue with "
                    f"--resume {path}")
                return run.history
            row = run.finish_epoch(time.perf_counter() - start)
            log(f"epoch {row['epoch']:3d}/{cfg.epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.4f}  test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}  "
                f"{row['seconds']:.1f}s")
            if run.stop and run.epoch < cfg.epochs:     # requested during the epoch's last step
                path = os.path.join(cfg.out, "checkpoint.npz")
                log(f"stopped after epoch {run.epoch}: checkpoint saved to {path}; continue with --resume {path}")
                return run.history
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    log(f"done: best test accuracy {run.best_acc:.4f}; weights in {os.path.join(cfg.out, 'best.npz')}")
    if run.is_root:
        plot_curves(run.history, os.path.join(cfg.out, "curves.png"), log)
    return run.history


def _main_thread():
    import threading
    return threading.current_thread() is threading.main_thread()


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
    ax1.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax1.plot(epochs, [r["test_loss"] for r in history], label="test")
    ax1.set_xlabel("epoch"), ax1.set_ylabel("loss"), ax1.legend()
    ax2.plot(epochs, [r["train_acc"] for r in history], label="train")
    ax2.plot(epochs, [r["test_acc"] for r in history], label="test")
    ax2.set_xlabel("epoch"), ax2.set_ylabel("accuracy"), ax2.legend()
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    log(f"learning curves: {path}")
    return path
