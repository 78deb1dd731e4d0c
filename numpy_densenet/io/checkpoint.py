"""The checkpoint format: everything a training run needs to continue bit-identically, as plain arrays.

A ``checkpoint.npz`` holds, besides a weights file's metadata (:mod:`numpy_densenet.io.weights`):

``model.*``
    The model's ``state_dict``.
``optim.*`` / ``sched.*``
    The optimizer's momentum buffers and the learning-rate schedule's position.
``run.state``
    A JSON document (:data:`RUN_STATE_KEYS`): epoch and step, the running sums of the epoch so far, the
    per-epoch history (the rows of ``metrics.jsonl``), the selection of ``best.npz``, and the random generators'
    states.

Versions: 1, 2 (``given_options``, the options given on the command line), 3 (validation: ``best_loss``,
``best_epoch``, and val_loss / val_acc in every history row) and 4 (``data_digest``, the SHA-256 of the data the
run trains on, which a resume must read again) are read; 4 is written.
"""
from __future__ import annotations

import os

from .files import WeightsFileError, json_array, json_entry, load_npz
from .weights import check_metadata_keys

__all__ = ["CHECKPOINT_VERSION", "METRIC_KEYS", "RUN_STATE_KEYS", "checkpoint_arrays", "read_checkpoint",
           "run_state_from_arrays"]

CHECKPOINT_VERSION = 4
METRIC_KEYS = {"epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc", "seconds"}
OLD_METRIC_KEYS = METRIC_KEYS - {"val_loss", "val_acc"}          # rows of checkpoints before version 3
RUN_STATE_KEYS = {"version", "epoch", "step", "sums", "history", "best_acc", "epoch_rng_state",
                  "dropout_rng_states"}


def checkpoint_arrays(model_state, optimizer_state, schedule_state, run_state, metadata):
    """The arrays of a checkpoint: ``model.*``, ``optim.*``, ``sched.*``, ``run.state`` (``run_state``, a dict,
    with the current version added) and the ``_`` metadata."""
    arrays = {f"model.{k}": v for k, v in model_state.items()}
    arrays.update({f"optim.{k}": v for k, v in optimizer_state.items()})
    arrays.update({f"sched.{k}": v for k, v in schedule_state.items()})
    arrays["run.state"] = json_array(dict(version=CHECKPOINT_VERSION, **run_state))
    arrays.update(metadata)
    return arrays


def read_checkpoint(path):
    """Read a checkpoint and check its format: returns (arrays, run state dict).

    Raises :class:`WeightsFileError` for a file that is not a training checkpoint, is of a newer version or has
    malformed or unknown entries. What the run state must fit (epochs, steps, options) is checked by the run.
    """
    arrays = load_npz(path, what="checkpoint")
    if "run.state" not in arrays or "_train_config" not in arrays:
        raise WeightsFileError(f"checkpoint {os.fspath(path)!r} is not a training checkpoint (no run.state); "
                               f"weights-only files can be evaluated, not resumed")
    check_metadata_keys(arrays, path, "checkpoint")
    return arrays, run_state_from_arrays(arrays, path)


def run_state_from_arrays(arrays, path):
    """The ``run.state`` of a checkpoint, its version checked (1 to :data:`CHECKPOINT_VERSION`)."""
    where = f"checkpoint {os.fspath(path)!r}"
    state = json_entry(arrays, "run.state", path, "checkpoint", dict)
    version = state.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise WeightsFileError(f"{where}: run.state has no valid version ({version!r})")
    if version > CHECKPOINT_VERSION:
        raise WeightsFileError(f"{where} is checkpoint version {version}, written by a newer numpy_densenet; this "
                               f"one reads versions 1 to {CHECKPOINT_VERSION}: upgrade to resume it")
    required = RUN_STATE_KEYS | ({"best_loss", "best_epoch"} if version >= 3 else set()) | \
        ({"data_digest"} if version >= 4 else set())
    known = required | ({"given_options"} if version >= 2 else set())
    unknown, missing = sorted(set(state) - known), sorted(required - set(state))
    if unknown or missing:
        raise WeightsFileError(f"{where}: run.state " + "; ".join(
            p for p in (f"has unknown field(s) {', '.join(unknown)}" if unknown else "",
                        f"lacks {', '.join(missing)}" if missing else "") if p))
    if not (_counters_ok(state) and _history_ok(state, version)):
        raise WeightsFileError(f"{where}: run.state holds malformed values (epoch, step, sums, history, ...)")
    return state


def _counters_ok(state):
    return (isinstance(state["epoch"], int) and state["epoch"] >= 0 and isinstance(state["step"], int)
            and state["step"] >= 0 and isinstance(state["sums"], list) and len(state["sums"]) == 3
            and all(isinstance(v, (int, float)) for v in state["sums"])
            and isinstance(state["best_acc"], (int, float)) and isinstance(state["epoch_rng_state"], dict)
            and isinstance(state["dropout_rng_states"], list)
            and isinstance(state.get("data_digest", ""), str))


def _history_ok(state, version):
    history = state["history"]
    rows_ok = (isinstance(history, list) and all(isinstance(r, dict) for r in history)
               and len(history) == state["epoch"]
               and all(set(r) == (METRIC_KEYS if version >= 3 else OLD_METRIC_KEYS)
                       and all((isinstance(v, (int, float)) and not isinstance(v, bool))
                               or (v is None and k in ("val_loss", "val_acc")) for k, v in r.items())
                       for r in history))
    return rows_ok and (version < 3 or (isinstance(state["best_loss"], (int, float))
                                        and isinstance(state["best_epoch"], int)
                                        and 0 <= state["best_epoch"] <= state["epoch"]))
