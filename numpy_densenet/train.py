"""Training and evaluation: the loop behind ``numpy-densenet train`` / ``evaluate``, usable from Python.

A run is described by a :class:`TrainConfig`; :func:`train` runs it, writing to ``config.out``:

* ``metrics.jsonl`` - one JSON object per epoch (epoch, lr, train_loss, train_acc, val_loss, val_acc, test_loss,
  test_acc, seconds; val_* are null without a validation set);
* ``checkpoint.npz`` - the latest state, written atomically after every epoch (and on Ctrl-C): weights, BatchNorm
  buffers, optimizer momentum, schedule position, RNG states, epoch and step - plain arrays, no pickle;
* ``best.npz`` - the weights of the epoch with the best *validation* accuracy so far (ties: the lower validation
  loss, then the earlier epoch), with the model config and the normalisation statistics, so ``evaluate``/``predict``
  can rebuild the model from the file alone. The validation set is the data set's official one or a stratified,
  seeded ``val_fraction`` of the training images; the test set never chooses anything. With ``val_fraction=0``
  there is nothing to select on and ``best.npz`` holds the last epoch's weights;
* ``curves.png`` - the learning curves, when matplotlib is installed.

Resuming from a checkpoint continues the run so that it ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import errno
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from .data import BatchIterator, DatasetError, channel_stats, load_dataset
from .data.files import format_bytes
from .data.splits import validation_split
from .io import (WeightsFileError, atomic_write, check_state_values, json_entry, load_npz, model_config_from_arrays,
                 remove_stale_temp_files, save_npz)
from .model import MODELS, DenseNet
from .nn import CrossEntropyLoss, no_grad
from .nn.module import restore_buffers
from .optim import SGD, CosineAnnealingLR, paper_schedule

CHECKPOINT_VERSION = 3          # 2: run.state records given_options; 3: validation (best_loss, best_epoch,
                                # val_fraction, val_loss/val_acc rows); versions 1 and 2 are still read
MAX_CONFUSION_CLASSES = 1024    # evaluate() builds the (K, K) confusion matrix up to this many classes


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
    val_fraction: float = 0.1           # held out of the training set for model selection (0: off)

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
    dict with loss, acc, per_class_acc (K,), per_class_count (K,) and confusion: (K, K) counts, rows = true
    class, or None when K is above ``MAX_CONFUSION_CLASSES`` (memory grows as K**2).
    """
    was_training = model.training
    model.eval()
    criterion = CrossEntropyLoss(reduction="sum")
    K = num_classes or model.config["num_classes"]
    confusion = np.zeros((K, K), dtype=np.int64) if K <= MAX_CONFUSION_CLASSES else None
    counts, hits = np.zeros(K, dtype=np.int64), np.zeros(K, dtype=np.int64)
    total_loss = 0.0
    it = BatchIterator(x, y, batch_size, shuffle=False, mean=mean, std=std, dtype=model.dtype)
    try:
        for xb, yb in it:
            with no_grad():
                logits = model(xb)
            total_loss += float(criterion(logits, yb))
            predicted = logits.argmax(axis=1)
            counts += np.bincount(yb, minlength=K)
            hits += np.bincount(yb[predicted == yb], minlength=K)
            if confusion is not None:
                np.add.at(confusion, (yb, predicted), 1)
    finally:
        model.train(was_training)
    n = max(int(counts.sum()), 1)
    return dict(loss=total_loss / n, acc=float(hits.sum()) / n, confusion=confusion,
                per_class_acc=hits / np.maximum(counts, 1), per_class_count=counts)


# -- checkpoints ----------------------------------------------------------------------------------------------
def _json_array(obj):
    return np.array(json.dumps(obj))                                     # a unicode scalar: no pickle needed


def _from_json_array(a):
    return json.loads(str(a[()]))


def metadata_arrays(model, config, mean, std, classes, inputs=None):
    """What, besides the weights, a file needs to rebuild and use the model (keys start with "_").

    ``inputs`` (optional) describes the training images for ``predict``: {"image_size": [H, W], "pixel_range":
    [lo, hi]} with the pixel range in [0, 1] units (8-bit pixels / 255); stored as ``_inputs``.
    """
    arrays = {"_model_config": _json_array(model.config), "_train_config": _json_array(asdict(config)),
              "_mean": np.asarray(mean), "_std": np.asarray(std), "_classes": _json_array(list(classes))}
    if inputs is not None:
        arrays["_inputs"] = _json_array(inputs)
    return arrays


def weights_arrays(model, config, mean, std, classes, inputs=None):
    """The arrays of a weights file (best.npz): state_dict plus the metadata."""
    return {**model.state_dict(), **metadata_arrays(model, config, mean, std, classes, inputs)}


def describe_inputs(x):
    """{"image_size": [H, W], "pixel_range": [lo, hi]} of training images x (N, C, H, W), in [0, 1] units."""
    scale = 255.0 if x.dtype.kind in "ui" else 1.0
    return {"image_size": [int(x.shape[2]), int(x.shape[3])],
            "pixel_range": [float(x.min()) / scale, float(x.max()) / scale]}


def _inputs_entry(arrays, path):
    """``_inputs`` of a file from train: {"image_size": [H, W], "pixel_range": [lo, hi]}, checked."""
    v = json_entry(arrays, "_inputs", path, kind=dict)
    size, rng = v.get("image_size"), v.get("pixel_range")
    ok = (set(v) == {"image_size", "pixel_range"} and isinstance(size, list) and len(size) == 2
          and all(isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 1024 for n in size)
          and isinstance(rng, list) and len(rng) == 2 and all(isinstance(r, (int, float)) and math.isfinite(r)
                                                              and not isinstance(r, bool) for r in rng))
    if not ok:
        raise WeightsFileError(f"weights file {os.fspath(path)!r}: '_inputs' should be {{\"image_size\": [H, W], "
                               f"\"pixel_range\": [lo, hi]}}, found {str(v)[:120]}")
    return v


def _preprocess_entry(arrays, path):
    """``_preprocess`` of a file from convert (resize, crop, scale, mean, std, interpolation), checked."""
    v = json_entry(arrays, "_preprocess", path, kind=dict)
    num = (int, float)
    ok = (set(v) <= {"resize", "crop", "interpolation", "scale", "mean", "std"}
          and all(isinstance(v.get(k), int) and not isinstance(v.get(k), bool) and 1 <= v[k] <= 4096
                  for k in ("resize", "crop"))
          and isinstance(v.get("scale"), num) and v["scale"] > 0
          and all(isinstance(v.get(k), list) and len(v[k]) == 3 and all(isinstance(x, num) and math.isfinite(x)
                                                                        for x in v[k]) for k in ("mean", "std"))
          and all(x > 0 for x in v["std"]) and v["crop"] <= v["resize"])
    if not ok:
        raise WeightsFileError(f"weights file {os.fspath(path)!r}: '_preprocess' is not a valid description of the "
                               f"ImageNet preprocessing, found {str(v)[:160]}")
    return v


def load_model_file(path, dtype=None, fast=True):
    """Rebuild a model saved by ``train`` (best.npz / checkpoint.npz / a weights file with ``_model_config``).

    The file is checked before the model is built: ``_model_config`` against the tensors present (so its
    sizes cannot make the model larger than the file), every tensor finite floating point with running
    variances >= 0, ``_mean`` / ``_std`` one finite value per input channel (std > 0), ``_classes`` one
    name per class. Every problem raises :class:`~numpy_densenet.io.WeightsFileError` naming the file.

    ``fast=False`` builds the model in the plain tier (same weights, same results to rounding).

    Returns (model, metadata dict with mean, std, classes, inputs, preprocess).
    """
    arrays = load_npz(path)
    if "_model_config" not in arrays:
        raise WeightsFileError(f"weights file {os.fspath(path)!r} has no model description (_model_config): it was "
                               f"neither written by `numpy-densenet train` nor by `numpy-densenet convert` (convert a "
                               f"torchvision .pth again to get a self-describing file); give --model to evaluate "
                               f"it, or load it from Python with numpy_densenet.io.load_weights")
    check_metadata_keys(arrays, path)
    prefix = "model." if any(k.startswith("model.") for k in arrays) else ""
    cfg = model_config_from_arrays(arrays, path, prefix=prefix)
    state = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix) and not k[len(prefix):].startswith("_")
             and not k.startswith(("optim.", "sched.", "run."))}
    check_state_values(state, path)
    where = f"weights file {os.fspath(path)!r}"
    stored = arrays[prefix + "classifier.weight"].dtype
    dt = np.dtype(dtype) if dtype else (stored if stored in (np.float32, np.float64) else np.dtype(np.float32))
    meta = dict(mean=None, std=None, classes=None)
    for key in ("_mean", "_std"):
        if key in arrays:
            a = arrays[key]
            if a.dtype.kind != "f" or a.shape != (cfg["in_channels"],) or not np.isfinite(a).all() or \
                    (key == "_std" and (a <= 0).any()):
                raise WeightsFileError(f"{where}: {key!r} should hold one finite value per input channel "
                                       f"({cfg['in_channels']}){', all > 0' if key == '_std' else ''}, found "
                                       f"{a.dtype} {a.shape}" + (f" {a.tolist()}" if a.size <= 8 else ""))
            meta[key[1:]] = a.astype(np.float64)
    if "_classes" in arrays:
        classes = json_entry(arrays, "_classes", path, kind=list)
        if len(classes) != cfg["num_classes"] or not all(isinstance(c, str) for c in classes):
            raise WeightsFileError(f"{where}: '_classes' should be a list of {cfg['num_classes']} names (one per "
                                   f"class), found {len(classes)} entries")
        meta["classes"] = classes
    try:
        model = DenseNet(**cfg, dtype=dt, fast=fast)
        model.load_state_dict(state)
    except (ValueError, TypeError) as e:
        raise WeightsFileError(f"{where} does not fit its own model description: {e}") from None
    meta["inputs"] = _inputs_entry(arrays, path) if "_inputs" in arrays else None
    meta["preprocess"] = _preprocess_entry(arrays, path) if "_preprocess" in arrays else None
    return model, meta


TRAIN_CONFIG_FIELDS = tuple(f.name for f in fields(TrainConfig))
METRIC_KEYS = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds"}
OLD_METRIC_KEYS = METRIC_KEYS - {"val_loss", "val_acc"}          # rows of checkpoints before version 3
METADATA_KEYS = {"_model_config", "_train_config", "_mean", "_std", "_classes", "_inputs", "_preprocess"}
OLD_TRAIN_CONFIG_DEFAULTS = {"val_fraction": 0.0}                 # fields added since version 1, as before them


def check_metadata_keys(arrays, path, what="weights file"):
    """Refuse metadata (``_``-prefixed) or checkpoint entries this version does not know (a newer file)."""
    unknown = [k for k in arrays if (k.startswith("_") and k not in METADATA_KEYS)
               or (k.startswith("run.") and k != "run.state")]
    if unknown:
        raise WeightsFileError(f"{what} {os.fspath(path)!r} has entries this version does not know: "
                               f"{', '.join(unknown[:5])}; it was written by a newer numpy_densenet")
RUN_STATE_KEYS = {"version", "epoch", "step", "sums", "history", "best_acc", "epoch_rng_state",
                  "dropout_rng_states"}


def train_config_from_arrays(arrays, path):
    """The ``_train_config`` of a checkpoint as a dict of :class:`TrainConfig` fields; unknown fields refused."""
    saved = json_entry(arrays, "_train_config", path, "checkpoint", dict)
    unknown = [k for k in saved if k not in TRAIN_CONFIG_FIELDS]
    if unknown:
        raise WeightsFileError(f"checkpoint {os.fspath(path)!r} has training option(s) this version does not know: "
                               f"{', '.join(unknown)}; it was written by a newer numpy_densenet, upgrade to resume it")
    saved = {**{k: v for k, v in OLD_TRAIN_CONFIG_DEFAULTS.items() if k not in saved}, **saved}
    missing = [k for k in TRAIN_CONFIG_FIELDS if k not in saved]
    if missing:
        raise WeightsFileError(f"checkpoint {os.fspath(path)!r}: '_train_config' lacks {', '.join(missing)}")
    return saved


def run_state_from_arrays(arrays, path):
    """The ``run.state`` of a checkpoint, its version checked (1 to ``CHECKPOINT_VERSION``)."""
    where = f"checkpoint {os.fspath(path)!r}"
    state = json_entry(arrays, "run.state", path, "checkpoint", dict)
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise WeightsFileError(f"{where}: run.state has no valid version ({version!r})")
    if version > CHECKPOINT_VERSION:
        raise WeightsFileError(f"{where} is checkpoint version {version}, written by a newer numpy_densenet; this "
                               f"one reads versions 1 to {CHECKPOINT_VERSION}: upgrade to resume it")
    required = RUN_STATE_KEYS | ({"best_loss", "best_epoch"} if version >= 3 else set())
    known = required | ({"given_options"} if version >= 2 else set())
    unknown, missing = sorted(set(state) - known), sorted(required - set(state))
    if unknown or missing:
        raise WeightsFileError(f"{where}: run.state " + "; ".join(
            p for p in (f"has unknown field(s) {', '.join(unknown)}" if unknown else "",
                        f"lacks {', '.join(missing)}" if missing else "") if p))
    ok = (isinstance(state["epoch"], int) and state["epoch"] >= 0 and isinstance(state["step"], int)
          and state["step"] >= 0 and isinstance(state["sums"], list) and len(state["sums"]) == 3
          and all(isinstance(v, (int, float)) for v in state["sums"]) and isinstance(state["history"], list)
          and all(isinstance(r, dict) for r in state["history"]) and len(state["history"]) == state["epoch"]
          and isinstance(state["best_acc"], (int, float)) and isinstance(state["epoch_rng_state"], dict)
          and isinstance(state["dropout_rng_states"], list)
          and all(set(r) == (METRIC_KEYS if version >= 3 else OLD_METRIC_KEYS)
                  and all((isinstance(v, (int, float)) and not isinstance(v, bool))
                          or (v is None and k in ("val_loss", "val_acc")) for k, v in r.items())
                  for r in state["history"])
          and (version < 3 or (isinstance(state["best_loss"], (int, float)) and isinstance(state["best_epoch"], int)
                               and 0 <= state["best_epoch"] <= state["epoch"])))
    if not ok:
        raise WeightsFileError(f"{where}: run.state holds malformed values (epoch, step, sums, history, ...)")
    return state


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
        for name, value, low, high, high_open in (("lr", config.lr, 0, math.inf, True),
                                                  ("momentum", config.momentum, 0, 1, True),
                                                  ("weight_decay", config.weight_decay, 0, math.inf, True),
                                                  ("drop_rate", config.drop_rate, 0, 1, True)):
            option = "--" + name.replace("_", "-")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or \
                    value < low or (value >= high if high_open else value > high) or (name == "lr" and value == 0):
                bounds = {"lr": "a positive finite number", "weight_decay": "a finite number >= 0",
                          "momentum": "in [0, 1)", "drop_rate": "in [0, 1)"}[name]
                raise TrainingError(f"{option} must be {bounds}, got {value!r}")
        if not isinstance(config.out, str) or not config.out.strip():
            raise TrainingError(f"--out must name an output folder, got {config.out!r}")
        if config.schedule not in ("step", "cosine"):
            raise TrainingError(f"--schedule must be 'step' or 'cosine', got {config.schedule!r}")
        try:
            self.data = load_dataset(config.dataset, config.data_dir)
        except (DatasetError, ValueError) as e:
            raise TrainingError(str(e)) from None
        d = self.data
        try:
            self.split = validation_split(d, config.val_fraction, config.seed)
        except ValueError as e:
            raise TrainingError(str(e)) from None
        self.x_train, self.y_train = self.split.x_train, self.split.y_train
        self.mean, self.std = channel_stats(self.x_train)                # per channel, training images only
        self.inputs = describe_inputs(self.x_train)                     # for predict's checks
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
        last = len(self.y_train) % config.batch_size
        drop_last = (last == 1 and len(self.y_train) > 1) or (self.dp is not None and 0 < last < self.dp.world_size)
        try:
            self.optimizer = SGD(self.model.named_parameters(), lr=config.lr, momentum=config.momentum,
                                 weight_decay=config.weight_decay, nesterov=config.momentum > 0)
            self.scheduler = (paper_schedule(self.optimizer, config.epochs) if config.schedule == "step"
                              else CosineAnnealingLR(self.optimizer, config.epochs))
            self.batches = BatchIterator(self.x_train, self.y_train, config.batch_size, shuffle=True,
                                         augment=config.augment, **d.augmentation, mean=self.mean, std=self.std,
                                         dtype=np.dtype(config.dtype), seed=np.random.default_rng([config.seed, 1]),
                                         drop_last=drop_last)
        except ValueError as e:
            raise TrainingError(f"{e} (check --lr, --momentum, --weight-decay, --batch-size)") from None
        self.epoch = 0                  # epochs completed
        self.step = 0                   # steps completed within the current epoch
        self.epoch_rng_state = self.batches.rng.bit_generator.state
        self.sums = [0.0, 0, 0]         # loss * batch, correct, seen: this epoch so far
        self.history = []
        self.best_acc = -1.0            # the selection score of best.npz: validation accuracy
        self.best_loss = math.inf       # its validation loss (breaks ties)
        self.best_epoch = 0
        self.stop = False               # a stop (Ctrl-C, on_step) was requested
        self.given_options = []         # the options the run was started with explicitly (recorded, version 2)

    # -- state as plain arrays --------------------------------------------------------------------------------
    def state_arrays(self):
        arrays = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        arrays.update({f"optim.{k}": v for k, v in self.optimizer.state_dict().items()})
        arrays.update({f"sched.{k}": v for k, v in self.scheduler.state_dict().items()})
        dropout_states = [m.generator.bit_generator.state for m in self.model.modules() if hasattr(m, "generator")]
        arrays["run.state"] = _json_array(dict(
            version=CHECKPOINT_VERSION, epoch=self.epoch, step=self.step, sums=self.sums, history=self.history,
            best_acc=self.best_acc, best_loss=self.best_loss, best_epoch=self.best_epoch,
            epoch_rng_state=self.epoch_rng_state, dropout_rng_states=dropout_states,
            given_options=list(self.given_options)))
        arrays.update(metadata_arrays(self.model, self.config, self.mean, self.std, self.data.classes, self.inputs))
        return arrays

    def save_checkpoint(self, path):
        """Write the checkpoint (only rank 0 writes; over MPI the other ranks' state is identical, with
        ``sync_bn=False`` once rank 0's running statistics are broadcast, done here)."""
        if self.dp is not None:
            self.dp.broadcast_buffers()
        if self.is_root:
            _write(path, lambda: save_npz(path, self.state_arrays()), os.path.join(self.config.out, "checkpoint.npz"))
        if self.dp is not None:
            self.dp.comm.Barrier()                                      # written before any rank goes on

    def load_checkpoint(self, path):
        """Restore the state saved by :meth:`save_checkpoint`, after checking the file fully.

        The checkpoint's version and fields are checked (a newer version or unknown fields are refused), its
        options must equal this run's (``out`` and ``data_dir`` may differ: they say where things are), its
        tensors must be finite; nothing is changed unless every check passes.
        """
        arrays = load_npz(path, what="checkpoint")
        if "run.state" not in arrays or "_train_config" not in arrays:
            raise WeightsFileError(f"checkpoint {os.fspath(path)!r} is not a training checkpoint (no run.state); "
                                   f"weights-only files can be evaluated, not resumed")
        check_metadata_keys(arrays, path, "checkpoint")
        state = run_state_from_arrays(arrays, path)
        saved = train_config_from_arrays(arrays, path)
        mine = asdict(self.config)
        differ = [k for k in mine if k not in ("out", "data_dir") and saved.get(k) != mine[k]]
        if differ:
            raise TrainingError(f"checkpoint {os.fspath(path)!r} was made with different options: "
                                + ", ".join(f"{k}={saved.get(k)!r} (now {mine[k]!r})" for k in differ))

        def part(prefix):
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

        check_state_values({k: v for k, v in arrays.items() if k.startswith("model.")}, path, "checkpoint")
        if state["epoch"] > self.config.epochs or state["step"] > len(self.batches):
            raise WeightsFileError(f"checkpoint {os.fspath(path)!r} is at epoch {state['epoch']}, step "
                                   f"{state['step']}, outside this run's {self.config.epochs} epochs of "
                                   f"{len(self.batches)} steps")
        gens = [m.generator for m in self.model.modules() if hasattr(m, "generator")]
        if len(state["dropout_rng_states"]) != len(gens):
            raise WeightsFileError(f"checkpoint {os.fspath(path)!r} has {len(state['dropout_rng_states'])} dropout "
                                   f"generator states for {len(gens)} dropout layers")
        try:
            self.model.load_state_dict(part("model."))
            self.optimizer.load_state_dict(part("optim."))
            self.scheduler.load_state_dict(part("sched."))
            for g, s in zip(gens, state["dropout_rng_states"]):
                g.bit_generator.state = s
            self.batches.rng.bit_generator.state = state["epoch_rng_state"]
        except (ValueError, TypeError, KeyError) as e:
            raise WeightsFileError(f"checkpoint {os.fspath(path)!r} does not fit this run: {e}") from None
        if self.dp is not None:
            self.dp.decorrelate_dropout()                              # rank 0's masks were saved
        self.epoch, self.step, self.sums = state["epoch"], state["step"], state["sums"]
        self.history, self.best_acc = state["history"], state["best_acc"]
        self.best_loss, self.best_epoch = state.get("best_loss", math.inf), state.get("best_epoch", 0)
        self.epoch_rng_state = state["epoch_rng_state"]
        self.given_options = state.get("given_options", self.given_options)

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
        split = self.split
        if self.dp is not None:                                         # the images shared between the ranks
            from .distributed import evaluate as evaluate_shared

            def score(x, y):
                return evaluate_shared(self.dp, x, y, mean=self.mean, std=self.std)
        else:
            def score(x, y):
                return evaluate(self.model, x, y, mean=self.mean, std=self.std)
        val = score(split.x_val, split.y_val) if split.size else dict(loss=None, acc=None)
        test = score(self.data.x_test, self.data.y_test)
        loss_sum, correct, seen = self.sums
        row = dict(epoch=self.epoch + 1, lr=self.optimizer.lr, train_loss=loss_sum / max(seen, 1),
                   train_acc=correct / max(seen, 1), val_loss=val["loss"], val_acc=val["acc"],
                   test_loss=test["loss"], test_acc=test["acc"], seconds=round(seconds, 3))
        self.history.append(row)
        self.epoch += 1
        self.step = 0
        self.sums = [0.0, 0, 0]
        self.scheduler.step()
        self.epoch_rng_state = self.batches.rng.bit_generator.state    # the next epoch starts from here
        if split.size:                  # select on validation accuracy, ties by validation loss
            improved = (val["acc"] > self.best_acc
                        or (val["acc"] == self.best_acc and val["loss"] < self.best_loss))
        else:                           # nothing to select on: best.npz is the latest epoch
            improved = True
        checkpoint = os.path.join(cfg.out, "checkpoint.npz")
        if improved:
            self.best_acc = val["acc"] if split.size else -1.0
            self.best_loss = val["loss"] if split.size else math.inf
            self.best_epoch = row["epoch"]
            if self.is_root:
                best = os.path.join(cfg.out, "best.npz")
                _write(best, lambda: save_npz(best, weights_arrays(self.model, cfg, self.mean, self.std,
                                                                    self.data.classes, self.inputs)), checkpoint)
        self.save_checkpoint(checkpoint)
        if self.is_root:
            metrics = os.path.join(cfg.out, "metrics.jsonl")
            _write(metrics, lambda: write_metrics(metrics, self.history), checkpoint)
        return row


def write_metrics(path, history):
    """Rewrite metrics.jsonl (one JSON object per epoch) atomically."""
    text = "".join(json.dumps(row) + "\n" for row in history)
    atomic_write(path, lambda f: f.write(text.encode()))


_HINTS = {errno.ENOSPC: "free disk space or choose another --out", errno.EDQUOT: "free disk space (quota exceeded)",
          errno.EROFS: "the file system is read-only: choose another --out",
          errno.EACCES: "permission denied: choose a folder you can write to as --out",
          errno.EPERM: "permission denied: choose a folder you can write to as --out"}


def _write(path, write, checkpoint):
    """Run ``write()``; turn an OSError into a :class:`TrainingError` saying the last checkpoint is intact."""
    try:
        write()
    except OSError as e:
        hint = _HINTS.get(e.errno, "fix the problem")
        raise OutputError(f"cannot write {path}: {e.strerror or e} ({errno.errorcode.get(e.errno, e.errno)}). "
                          f"The last checkpoint, {checkpoint}, is intact if it exists: {hint}, then continue "
                          f"with --resume {checkpoint}") from None


class OutputError(TrainingError):
    """The output folder cannot be used or written (disk full, read-only, locked by another run)."""


LOCK_NAME = ".lock"


class OutputFolder:
    """Exclusive use of a run's output folder: a lock file holding the owner's pid, probed for space.

    :meth:`acquire` creates the folder, takes the lock (a second run on the same folder is refused naming the
    holder's pid; the lock of a killed run is stale and taken over), removes stale temporary files of killed
    writers and checks that ``probe_bytes`` can be written (disk full and read-only are found before training).
    The lock is an ``flock`` on ``<out>/.lock``, released by the kernel when the process dies, where available;
    elsewhere the lock file is created exclusively and a lock whose pid is not running is stale.
    """

    def __init__(self, out, log=print):
        self.out, self.log = out, log
        self.path = os.path.join(out, LOCK_NAME)
        self.fd = None

    def acquire(self, probe_bytes=0):
        out = self.out
        try:
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise OutputError(f"--out {out!r} cannot be used as an output folder: {e.strerror} "
                              f"({errno.errorcode.get(e.errno, e.errno)}); "
                              f"{_HINTS.get(e.errno, 'choose another --out')}") from None
        if not os.path.isdir(out):
            raise OutputError(f"--out {out!r} is not a folder")
        try:
            self._lock()
        except OSError as e:
            raise OutputError(f"--out {out!r} is not writable: cannot create {self.path}: {e.strerror} "
                              f"({errno.errorcode.get(e.errno, e.errno)}); "
                              f"{_HINTS.get(e.errno, 'choose another --out')}") from None
        try:
            removed = remove_stale_temp_files(out)
            if removed:
                self.log(f"note: removed {len(removed)} temporary file(s) left by a killed run in {out}")
            self._probe(probe_bytes)
        except BaseException:
            self.release()
            raise
        return self

    def _lock(self):
        try:
            import fcntl
        except ImportError:                                               # pragma: no cover - not POSIX
            return self._lock_exclusive()
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise OutputError(f"another run (pid {holder or 'unknown'}) is writing to --out {self.out!r}; "
                                  "wait for it to finish, or give this run another --out") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:                                  # the holder released (unlinked) it meanwhile: retry
                os.close(fd)
                continue
            stale = _read_pid(fd)
            if stale and stale != os.getpid():
                self.log(f"note: took over the stale lock of pid {stale} (not running) in {self.out}")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self.fd = fd
            return
        raise OutputError(f"could not lock --out {self.out!r}: the lock file keeps changing")  # pragma: no cover

    def _lock_exclusive(self):                                            # pragma: no cover - not POSIX
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                with open(self.path) as f:
                    text = f.read().strip()
                pid = int(text) if text.isdigit() else None
                if pid and _pid_running(pid):
                    raise OutputError(f"another run (pid {pid}) is writing to --out {self.out!r}; wait for it to "
                                      "finish, or give this run another --out") from None
                self.log(f"note: removed the stale lock of pid {pid} (not running) in {self.out}")
                os.unlink(self.path)
                continue
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return
        raise OutputError(f"could not lock --out {self.out!r}")

    def _probe(self, nbytes):
        """Write ``nbytes`` to a temporary file and delete it: disk full / quota found before training."""
        if nbytes <= 0:
            return
        path = os.path.join(self.out, f".probe.tmp-{os.getpid()}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, nbytes)
                except (AttributeError, OSError) as e:
                    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                        raise
                    block = bytes(2 ** 20)
                    left = nbytes
                    while left > 0:
                        left -= os.write(fd, block[:min(left, len(block))])
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(path)
        except OSError as e:
            raise OutputError(f"--out {self.out!r} cannot hold this run's files ({format_bytes(nbytes)} for a "
                              f"checkpoint and best.npz): {e.strerror} ({errno.errorcode.get(e.errno, e.errno)}); "
                              f"{_HINTS.get(e.errno, 'choose another --out')}") from None

    def release(self):
        if self.fd is None:
            return
        try:
            os.unlink(self.path)                          # unlink first: a waiting run then locks a fresh file
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _read_pid(fd):
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _pid_running(pid):                                                   # pragma: no cover - not POSIX
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


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


RUN_FILES = ("metrics.jsonl", "checkpoint.npz", "best.npz", "curves.png")


def existing_run_files(out):
    """The files of an earlier run in folder ``out`` (empty when there are none)."""
    return [name for name in RUN_FILES if os.path.exists(os.path.join(out, name))]


def train(config: TrainConfig, resume=None, log=print, progress=None, on_step=None, given_options=None,
          overwrite=False, distributed=None):
    """Run (or resume) a training run. Returns the run's history (a list of per-epoch dicts).

    Parameters
    ----------
    config : TrainConfig
    resume : path, optional
        A ``checkpoint.npz`` to continue from; the run then ends bit-identical to an uninterrupted one.
        ``metrics.jsonl`` is rewritten from the checkpoint's history first, so no row is ever lost.
    log : callable
        Receives one line per epoch and the messages.
    progress : Progress, optional
        Defaults to a progress bar when stderr is a terminal.
    on_step : callable, optional
        Called after every step with the :class:`Run`; returning True stops the run cleanly (a checkpoint is
        saved, as on Ctrl-C) and ``train`` returns.
    given_options : list of str, optional
        The options given explicitly on the command line, recorded in the checkpoint.
    overwrite : bool
        Without ``resume``, a ``config.out`` that already holds a run (metrics.jsonl, checkpoint.npz, best.npz)
        is refused, naming ``--resume`` and ``--overwrite``, before anything is written; with ``overwrite=True``
        the earlier run's files are deleted once the new run holds the folder's lock.
    distributed : dict, optional
        Train data-parallel over the MPI ranks running this same call (``mpiexec -n P``): the keyword arguments
        of :class:`numpy_densenet.distributed.DataParallel` (``{}`` for its defaults: COMM_WORLD,
        ``sync_bn=True``). ``config.batch_size`` is then the global batch; every rank draws the same order and
        augmentation and trains on its slice; metrics are summed over the ranks; only rank 0 locks the output
        folder and writes files and the curves (pass a silent ``log`` on the other ranks).

    Raises
    ------
    KeyboardInterrupt
        After Ctrl-C (SIGINT), once the current step is finished and a checkpoint saved.
    TrainingError
        Bad options, unusable data, a model that does not fit the data, divergence, an output folder that
        holds an earlier run, or one that cannot be used (:class:`OutputError`: locked by another run,
        read-only, full); the last checkpoint is never damaged.
    """
    earlier = [] if resume else existing_run_files(config.out)
    if earlier and not overwrite:
        checkpoint = os.path.join(config.out, "checkpoint.npz")
        how = (f"Continue it with --resume {checkpoint}, replace it" if "checkpoint.npz" in earlier else
               "It has no checkpoint to resume (it was stopped before its first one): replace it")
        raise TrainingError(f"--out {config.out!r} already holds a run ({', '.join(earlier)}); nothing was changed. "
                            f"{how} with --overwrite, or choose another --out")
    run = Run(config, log, distributed)
    cfg = run.config
    if resume:
        run.load_checkpoint(resume)
    if given_options is not None and not resume:
        run.given_options = list(given_options)
    if not run.is_root:                 # over MPI only rank 0 locks, probes and writes the output folder
        return _train_locked(run, resume, log, progress, on_step)
    folder = OutputFolder(cfg.out, log)
    arrays = run.state_arrays()
    probe = 2 * sum(a.nbytes for a in arrays.values()) + 2 ** 20          # a checkpoint, a best.npz and a margin
    del arrays
    folder.acquire(probe)
    try:
        for name in earlier:            # --overwrite: no file of the earlier run may mix with the new one
            os.remove(os.path.join(cfg.out, name))
        return _train_locked(run, resume, log, progress, on_step)
    finally:
        folder.release()


def _train_locked(run, resume, log, progress, on_step):
    cfg = run.config
    checkpoint = os.path.join(cfg.out, "checkpoint.npz")
    if resume:
        log(f"resumed from {resume} at epoch {run.epoch + 1}, step {run.step}")
        metrics = os.path.join(cfg.out, "metrics.jsonl")
        if run.is_root:                                                              # the rows up to the checkpoint
            _write(metrics, lambda: write_metrics(metrics, run.history), checkpoint)
    progress = progress or Progress()
    d = run.data
    log(f"training {cfg.model} ({run.model.num_parameters():,} parameters) on {d.name}: {len(run.y_train)} train / "
        f"{run.split.size} validation / {len(d.y_test)} test images {d.in_channels}x{d.image_size[0]}x{d.image_size[1]}, {cfg.epochs} epochs, "
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
                run.save_checkpoint(checkpoint)
                log(f"stopped at epoch {run.epoch + 1}, step {run.step}: checkpoint saved to {checkpoint}; continue "
                    f"with --resume {checkpoint}")
                if interrupted:
                    raise KeyboardInterrupt
                return run.history
            row = run.finish_epoch(time.perf_counter() - start)
            val = (f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  " if row["val_acc"] is not None
                   else "")
            log(f"epoch {row['epoch']:3d}/{cfg.epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.4f}  {val}test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}  "
                f"{row['seconds']:.1f}s")
            if run.stop and run.epoch < cfg.epochs:     # requested during the epoch's last step
                log(f"stopped after epoch {run.epoch}: checkpoint saved to {checkpoint}; continue with "
                    f"--resume {checkpoint}")
                if interrupted:
                    raise KeyboardInterrupt
                return run.history
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    log(closing_line(run.history, run.best_epoch, os.path.join(cfg.out, "best.npz")))
    if run.is_root:
        curves = os.path.join(cfg.out, "curves.png")
        _write(curves, lambda: plot_curves(run.history, curves, log), checkpoint)
    return run.history


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
