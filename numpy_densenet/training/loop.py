"""``train``: a whole run, from the options to the closing line, in a locked output folder, stoppable with
Ctrl-C and resumable bit-identically (the loop behind ``numpy-densenet train``)."""
from __future__ import annotations

import os
import time

from .distributed import get_comm
from .folder import OutputFolder, existing_run_files, write_or_explain
from .options import TrainConfig, TrainingError, check_options
from .report import Progress, closing_line, plot_curves, write_metrics
from .run import Run
from .stopping import SIGPIPE, StopRequest

__all__ = ["train"]


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
    RunInterrupted
        A ``KeyboardInterrupt`` with ``signum`` and ``exit_status`` (128 + signum): after SIGINT (Ctrl-C),
        SIGTERM or SIGHUP, or a write to a closed pipe (``log`` raising BrokenPipeError: SIGPIPE's number),
        once the current step is finished and a checkpoint saved (:mod:`numpy_densenet.training.stopping`);
        over MPI every rank stops after the same step. Before training starts, at once.
    TrainingError
        Bad options, unusable data, a model that does not fit the data, divergence (:class:`Diverged`: a
        non-finite loss, gradient, weight or output; nothing of the epoch is saved, the last checkpoint holds
        the last finite state), an output folder that holds an earlier run, or one that cannot be used
        (:class:`OutputError`: locked by another run, read-only, full, a lock file that is a link), different
        options or data on the MPI ranks (:class:`~numpy_densenet.training.distributed.RanksDisagree`); the
        last checkpoint is never damaged. The output folder is locked before anything in it is looked at, and
        until the last write.
    """
    stop = StopRequest()
    with stop.installed():
        log = stop.guarded(log)
        check_options(config.resolved())
        root = distributed is None or get_comm(distributed.get("comm")).Get_rank() == 0
        folder = OutputFolder(config.out, log) if root else None   # over MPI only rank 0 locks and writes
        if folder is not None:
            folder.acquire()                          # before any look at what the folder holds
        try:
            earlier = _earlier_run(config.out, resume, overwrite) if root else []
            run = Run(config, log, distributed)
            if resume:
                run.load_checkpoint(resume)
            if given_options is not None and not resume:
                run.given_options = list(given_options)
            if folder is not None:
                arrays = run.state_arrays()
                folder.probe(2 * sum(a.nbytes for a in arrays.values()) + 2 ** 20)   # a checkpoint, a best.npz
                del arrays
                for name in earlier:        # --overwrite: no file of the earlier run may mix with the new one
                    os.remove(os.path.join(config.out, name))
            return _train_locked(run, resume, log, progress, on_step, stop)
        finally:
            if folder is not None:
                folder.release(remove_empty=True)


def _earlier_run(out, resume, overwrite):
    """The files of an earlier run in ``out`` that this run would replace (called holding the lock): refused
    unless ``overwrite``; none when resuming into the checkpoint's own folder."""
    if resume and os.path.realpath(out) == os.path.dirname(os.path.realpath(resume)):
        return []
    earlier = existing_run_files(out)
    if earlier and not overwrite:
        checkpoint = os.path.join(out, "checkpoint.npz")
        how = (f"Continue it with --resume {checkpoint}, replace it" if "checkpoint.npz" in earlier else
               "It has no checkpoint to resume (it was stopped before its first one): replace it")
        raise TrainingError(f"--out {out!r} already holds a run ({', '.join(earlier)}); nothing was changed. "
                            f"{how} with --overwrite, or choose another --out")
    return earlier


def _train_locked(run, resume, log, progress, on_step, stop):
    cfg = run.config
    checkpoint = os.path.join(cfg.out, "checkpoint.npz")
    if resume:
        log(f"resumed from {resume} at epoch {run.epoch + 1}, step {run.step}")
        metrics = os.path.join(cfg.out, "metrics.jsonl")
        if run.is_root:                                                              # the rows up to the checkpoint
            write_or_explain(metrics, lambda: write_metrics(metrics, run.history), checkpoint)
    progress = progress or Progress()
    d = run.data
    log(f"training {cfg.model} ({run.model.num_parameters():,} parameters) on {d.name}: {len(run.y_train)} train / "
        f"{run.split.size} validation / {len(d.y_test)} test images {d.in_channels}x{d.image_size[0]}x{d.image_size[1]}, {cfg.epochs} epochs, "
        f"batch {cfg.batch_size}, {cfg.dtype}, augment={'on' if cfg.augment else 'off'}; output in {cfg.out}")

    def stop_requested():               # [signal number or 0, 1 if on_step asks for a stop], after every step
        asked = 0 if stop.requested else int(bool(on_step and on_step(run)))
        return [stop.signum or (SIGPIPE if stop.error else 0), asked]

    with stop.deferred():
        stopped = _epochs(run, progress, stop_requested, checkpoint, log)
    agreed = run.stop[0] if run.stop else 0         # over MPI: the signal any rank received, the same on every rank
    if agreed and stop.error is None:
        stop.signum = agreed
    if stopped:
        if stop.requested:
            raise _stopped(stop, run, stopped)
        return run.history
    log(closing_line(run.history, run.best_epoch, os.path.join(cfg.out, "best.npz")))
    if run.is_root:
        curves = os.path.join(cfg.out, "curves.png")
        write_or_explain(curves, lambda: plot_curves(run.history, curves, log), checkpoint)
    if stop.requested:                  # a signal during the last epoch's end: the run is complete
        raise _stopped(stop, run, f"the run had finished: every file is written ({checkpoint})")
    return run.history


def _stopped(stop, run, where):
    """The exception that ends a stopped run, marked for MPI: raised by every rank at once, printed by rank 0."""
    e = stop.exception(where)
    e.every_rank = run.dp is not None
    e.quiet = not run.is_root
    return e


def _epochs(run, progress, stop_requested, checkpoint, log):
    """Run the remaining epochs, logging one line each; when stopped early (the checkpoint saved), the line
    saying where, else None."""
    cfg = run.config
    while run.epoch < cfg.epochs:
        start = time.perf_counter()
        finished = run.run_epoch(progress, stop_requested)
        progress.end_line()
        if not finished:
            run.save_checkpoint(checkpoint)
            where = (f"stopped at epoch {run.epoch + 1}, step {run.step}: checkpoint saved to {checkpoint}; "
                     f"continue with --resume {checkpoint}")
            log(where)
            return where
        row = run.finish_epoch(time.perf_counter() - start)
        val = (f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  " if row["val_acc"] is not None
               else "")
        log(f"epoch {row['epoch']:3d}/{cfg.epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.4f}  {val}test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}  "
            f"{row['seconds']:.1f}s")
        if run.stop and run.epoch < cfg.epochs:     # requested during the epoch's last step
            where = f"stopped after epoch {run.epoch}: checkpoint saved to {checkpoint}; continue with --resume " \
                    f"{checkpoint}"
            log(where)
            return where
    return None
