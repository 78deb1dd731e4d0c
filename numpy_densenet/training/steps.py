"""One training step and evaluation: what a run repeats, usable on its own."""
from __future__ import annotations

import math

import numpy as np

from ..data import BatchIterator
from ..nn import CrossEntropyLoss, no_grad
from ..nn.module import restore_buffers
from ..zoo import build_model
from .options import TrainingError

__all__ = ["Diverged", "make_model", "check_fits", "train_step", "first_nonfinite_output", "evaluate",
           "MAX_CONFUSION_CLASSES"]

MAX_CONFUSION_CLASSES = 1024    # evaluate() builds the (K, K) confusion matrix up to this many classes


def make_model(config, in_channels, num_classes):
    """Build the configured model (seeded by ``config.seed``) for images of ``in_channels`` channels."""
    try:
        return build_model(config.model, config.depth, config.growth_rate, num_classes=num_classes,
                           in_channels=in_channels, drop_rate=config.drop_rate, dtype=np.dtype(config.dtype),
                           seed=config.seed)
    except ValueError as e:
        raise TrainingError(str(e)) from None


def check_fits(model, image_shape):
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


class Diverged(TrainingError):
    """The model produced a non-finite value: a loss, a gradient, a weight after an update, or an output."""


def train_step(model, criterion, optimizer, x, y):
    """Forward, loss, backward, update. Returns (loss, number correct); raises :class:`Diverged` on a NaN or
    inf loss or gradient, or when the update makes a weight non-finite."""
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
    for name, p in model.named_parameters():
        if not np.isfinite(p.data).all():
            raise Diverged(f"the update made {name} non-finite (the loss was {loss:.4g}; the step was too large)")
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

    Raises
    ------
    Diverged
        When the model's outputs for an image are not finite (NaN or inf weights or statistics): a loss and an
        accuracy computed from them would mean nothing.
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
            if not np.isfinite(logits).all():
                first = int(counts.sum()) + int(np.flatnonzero(~np.isfinite(logits).all(axis=1))[0])
                raise Diverged(f"the model's outputs for image {first} of the {len(y)} evaluated are not finite "
                               f"(NaN or inf): its weights or statistics are unusable")
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
