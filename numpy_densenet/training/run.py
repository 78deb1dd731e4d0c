"""The state of a training run (:class:`Run`): its data, model, optimizer and schedule, one epoch at a time,
and its checkpoint."""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict

import numpy as np

from ..data import BatchIterator, DatasetError, channel_stats, load_dataset
from ..data.files import digest_arrays
from ..data.splits import validation_split
from ..io.checkpoint import checkpoint_arrays, read_checkpoint
from ..io.files import WeightsFileError, check_state_values, save_npz
from ..io.weights import describe_inputs, metadata_arrays
from ..nn import CrossEntropyLoss
from ..optim import SGD, CosineAnnealingLR, paper_schedule
from .distributed import DataParallel, agree, get_comm
from .distributed import evaluate as evaluate_shared
from .folder import write_or_explain
from .options import TrainConfig, TrainingError, check_options, config_from_checkpoint
from .report import write_metrics
from .steps import Diverged, check_fits, evaluate, make_model, train_step

__all__ = ["Run", "WHERE_FIELDS"]

WHERE_FIELDS = ("out", "data_dir")      # where things are, not what the run is: may differ on resume and on ranks


def dropout_generators(model):
    """The random generators of the model's Dropout layers, in module order."""
    return [m.generator for m in model.modules() if hasattr(m, "generator")]


class Run:
    """The state of a training run: model, optimizer, schedule, data iterators and bookkeeping.

    Parameters
    ----------
    config : TrainConfig
    log : callable receiving one line
    distributed : dict, optional
        The keyword arguments of :class:`~numpy_densenet.training.distributed.DataParallel` to train over MPI.
    """

    def __init__(self, config: TrainConfig, log=print, distributed=None):
        self.config = config = config.resolved()
        self.log = log
        check_options(config)
        self._prepare_data(config)
        self.model = make_model(config, self.data.in_channels, self.data.num_classes)
        check_fits(self.model, self.data.x_train.shape[1:])
        if distributed is not None:     # the same options and data on every rank, before any other collective
            agree(get_comm(distributed.get("comm")), self.description(distributed), "options and data")
        self.dp = DataParallel(self.model, **distributed) if distributed is not None else None   # over MPI
        self.is_root = self.dp is None or self.dp.is_root                 # the process that writes files
        self.criterion = CrossEntropyLoss()
        self._prepare_optimizer(config)
        self.epoch = 0                  # epochs completed
        self.step = 0                   # steps completed within the current epoch
        self.epoch_rng_state = self.batches.rng.bit_generator.state
        self.sums = [0.0, 0, 0]         # loss * batch, correct, seen: this epoch so far
        self.history = []
        self.best_acc = -1.0            # the selection score of best.npz: validation accuracy
        self.best_loss = math.inf       # its validation loss (breaks ties)
        self.best_epoch = 0
        self.stop = None                # a stop was requested: [signal number or 0, 1 if by on_step]
        self.given_options = []         # the options the run was started with explicitly (recorded, version 2)

    def _prepare_data(self, config):
        """The data set, its validation split and the normalisation statistics of the training part."""
        try:
            self.data = load_dataset(config.dataset, config.data_dir)
            self.split = validation_split(self.data, config.val_fraction, config.seed)
        except (DatasetError, ValueError) as e:
            raise TrainingError(str(e)) from None
        self.x_train, self.y_train = self.split.x_train, self.split.y_train
        self.data_digest = self.data.digest()                           # recorded: a resume must read the same
        self.mean, self.std = channel_stats(self.x_train)                # per channel, training images only
        self.inputs = describe_inputs(self.x_train)                     # for predict's checks
        if (self.std == 0).any():                                        # a constant channel carries nothing:
            self.log(f"note: channel(s) {np.flatnonzero(self.std == 0).tolist()} of the training images are "
                     f"constant; they are centred but not scaled")
            self.std = np.where(self.std == 0, 1.0, self.std)            # centre it, do not divide by 0

    def _prepare_optimizer(self, config):
        """SGD, the learning-rate schedule and the training batches."""
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
                                         augment=config.augment, **self.data.augmentation, mean=self.mean,
                                         std=self.std,
                                         dtype=np.dtype(config.dtype), seed=np.random.default_rng([config.seed, 1]),
                                         drop_last=drop_last)
        except ValueError as e:
            raise TrainingError(f"{e} (check --lr, --momentum, --weight-decay, --batch-size)") from None

    def description(self, distributed):
        """What every MPI rank must have alike: the options (not where things are), the data's digest and the
        BatchNorm mode."""
        options = {f"--{k.replace('_', '-')}": v for k, v in asdict(self.config).items() if k not in WHERE_FIELDS}
        return {**options, "--sync-bn": distributed.get("sync_bn", True), "data (SHA-256)": self.data_digest[:16]}

    # -- state as plain arrays --------------------------------------------------------------------------------
    def metadata(self):
        """The metadata of this run's weights files (numpy_densenet.io.weights)."""
        return metadata_arrays(self.model.config, asdict(self.config), self.mean, self.std, self.data.classes,
                               self.inputs)

    def state_arrays(self):
        """The checkpoint's arrays (numpy_densenet.io.checkpoint)."""
        run_state = dict(epoch=self.epoch, step=self.step, sums=self.sums, history=self.history,
                         best_acc=self.best_acc, best_loss=self.best_loss, best_epoch=self.best_epoch,
                         epoch_rng_state=self.epoch_rng_state,
                         dropout_rng_states=[g.bit_generator.state for g in dropout_generators(self.model)],
                         given_options=list(self.given_options), data_digest=self.data_digest)
        return checkpoint_arrays(self.model.state_dict(), self.optimizer.state_dict(), self.scheduler.state_dict(),
                                 run_state, self.metadata())

    def save_checkpoint(self, path):
        """Write the checkpoint (only rank 0 writes; over MPI the other ranks' state is identical, with
        ``sync_bn=False`` once rank 0's running statistics are broadcast, done here)."""
        if self.dp is not None:
            self.dp.broadcast_buffers()
        if self.is_root:
            write_or_explain(path, lambda: save_npz(path, self.state_arrays()),
                             os.path.join(self.config.out, "checkpoint.npz"))
        if self.dp is not None:
            self.dp.comm.Barrier()                                      # written before any rank goes on

    def load_checkpoint(self, path):
        """Restore the state saved by :meth:`save_checkpoint`, after checking the file fully.

        The checkpoint's version and fields are checked (a newer version or unknown fields are refused), its
        options must equal this run's (``out`` and ``data_dir`` may differ: they say where things are), its
        tensors must be finite; nothing is changed unless every check passes.
        """
        arrays, state = read_checkpoint(path)
        saved = config_from_checkpoint(arrays, path)
        mine = asdict(self.config)
        differ = [k for k in mine if k not in WHERE_FIELDS and saved.get(k) != mine[k]]
        if differ:
            raise TrainingError(f"checkpoint {os.fspath(path)!r} was made with different options: "
                                + ", ".join(f"{k}={saved.get(k)!r} (now {mine[k]!r})" for k in differ))
        if state.get("data_digest", self.data_digest) != self.data_digest:        # recorded since version 4
            where = f" from {self.config.data_dir!r}" if self.config.data_dir else ""
            raise TrainingError(f"checkpoint {os.fspath(path)!r} was made on other data (SHA-256 "
                                f"{state['data_digest'][:12]}...) than the {self.data.name} data read now{where} "
                                f"(SHA-256 {self.data_digest[:12]}...): resume with the data it was made on, or "
                                f"start a new run")
        check_state_values({k: v for k, v in arrays.items() if k.startswith("model.")}, path, "checkpoint")
        self._check_fits_this_run(state, path)
        if self.dp is not None:        # every rank resumes from the same state
            agree(self.dp.comm, {"checkpoint (epoch, step)": [state["epoch"], state["step"]],
                                 "checkpoint (SHA-256)": digest_arrays(sorted(arrays.items()))[:16]}, "checkpoints")
        gens = dropout_generators(self.model)

        def part(prefix):
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

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

    def _check_fits_this_run(self, state, path):
        if state["epoch"] > self.config.epochs or state["step"] > len(self.batches):
            raise WeightsFileError(f"checkpoint {os.fspath(path)!r} is at epoch {state['epoch']}, step "
                                   f"{state['step']}, outside this run's {self.config.epochs} epochs of "
                                   f"{len(self.batches)} steps")
        count = len(dropout_generators(self.model))
        if len(state["dropout_rng_states"]) != count:
            raise WeightsFileError(f"checkpoint {os.fspath(path)!r} has {len(state['dropout_rng_states'])} dropout "
                                   f"generator states for {count} dropout layers")

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
                raise self.diverged(f"at epoch {self.epoch + 1}, step {i + 1}", e) from None
            batch = [loss * len(yb), correct, len(yb)]
            if self.dp is not None:
                batch = self.dp.sum_over_ranks(batch)                   # the whole batch's loss, correct, count
            self.sums[0] += float(batch[0])
            self.sums[1] += int(batch[1])
            self.sums[2] += int(batch[2])
            self.step = i + 1
            progress.update(self, i + 1, total, time.perf_counter() - start, i + 1 - first_step,
                            self.sums[2] - first_seen)
            stop = stop_requested()                                     # [signal number or 0, 0 or 1]
            if self.dp is not None:
                stop = self.dp.max_over_ranks(stop).astype(int).tolist()  # all ranks stop after the same step
            if any(stop):
                self.stop = stop
                if self.step < total:
                    return False
        return True

    def diverged(self, where, e):
        """The :class:`Diverged` that ends a run: where, why, and that the last checkpoint is kept."""
        checkpoint = os.path.join(self.config.out, "checkpoint.npz")
        kept = (f"the last checkpoint, {checkpoint}, is kept: it holds the last finite state" if
                os.path.exists(checkpoint) else "no checkpoint was written")
        return Diverged(f"training diverged {where}: {e}; nothing of it was saved, {kept}. Start again with a "
                        f"lower --lr (with --overwrite, or another --out)")

    def finish_epoch(self, seconds):
        cfg = self.config
        split = self.split
        if self.dp is not None:                                         # the images shared between the ranks
            def score(x, y):
                return evaluate_shared(self.dp, x, y, mean=self.mean, std=self.std)
        else:
            def score(x, y):
                return evaluate(self.model, x, y, mean=self.mean, std=self.std)
        try:
            val = score(split.x_val, split.y_val) if split.size else dict(loss=None, acc=None)
            test = score(self.data.x_test, self.data.y_test)
        except Diverged as e:
            raise self.diverged(f"in epoch {self.epoch + 1} (evaluating it)", e) from None
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
                write_or_explain(best, lambda: save_npz(best, {**self.model.state_dict(), **self.metadata()}),
                                 checkpoint)
        self.save_checkpoint(checkpoint)
        if self.is_root:
            metrics = os.path.join(cfg.out, "metrics.jsonl")
            write_or_explain(metrics, lambda: write_metrics(metrics, self.history), checkpoint)
        return row
