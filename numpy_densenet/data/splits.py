"""Holding out a validation set for model selection.

The test set is for the final report only: ``train`` picks its best epoch on a *validation* set, which is either
the data set's own official validation split or a stratified, seeded fraction of the training images.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["stratified_split", "ValidationSplit", "validation_split"]


def stratified_split(labels, fraction, seed=0):
    """Indices of a seeded, stratified split of ``labels`` into a kept part and a held-out part.

    Every class gives ``round(fraction * n_c)`` of its ``n_c`` images to the held-out part, at least one when
    the class has two or more images (and never all of them), so the held-out part has the classes in the
    proportions of the whole.

    Parameters
    ----------
    labels : ndarray of int, shape (N,)
    fraction : float in [0, 1)
        Share held out; 0 holds out nothing.
    seed : int
        Seeds ``np.random.default_rng([seed, 2])``: the same seed gives the same split.

    Returns
    -------
    kept, held_out : ndarrays of int64 indices, sorted ascending, disjoint, together ``0 .. N-1``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    if not (isinstance(fraction, (int, float)) and 0 <= fraction < 1):
        raise ValueError(f"the validation fraction must be a number in [0, 1), got {fraction!r}")
    n = labels.shape[0]
    if fraction == 0 or n == 0:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([int(seed), 2])
    held = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) < 2:
            continue                                    # a lone image stays for training
        take = min(max(1, int(round(fraction * len(members)))), len(members) - 1)
        held.append(rng.permutation(members)[:take])
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[held_out] = False
    return np.flatnonzero(mask).astype(np.int64), held_out.astype(np.int64)


@dataclass(eq=False)
class ValidationSplit:
    """Training images after the validation set is taken out, and the validation set.

    Attributes
    ----------
    x_train, y_train : the images to train on (and to compute the normalisation statistics from)
    x_val, y_val : the validation images, or None when there is no validation set
    source : str
        ``"official"`` (the data set's own validation split), ``"held out"`` (a stratified fraction of the
        training set) or ``"none"``.
    """
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray | None
    y_val: np.ndarray | None
    source: str

    @property
    def size(self):
        """The number of validation images (0 without a validation set)."""
        return 0 if self.y_val is None else int(self.y_val.shape[0])

    def describe(self, fraction):
        """One phrase for the training log."""
        if self.source == "official":
            return f"{self.size} validation images (the data set's official validation split)"
        if self.source == "held out":
            return f"{self.size} validation images (held out, {fraction:g} of the training set, stratified)"
        return "no validation set (--val-fraction 0)"


def validation_split(dataset, fraction=0.1, seed=0):
    """The validation set for ``dataset``: its official one if it has one, else a stratified seeded fraction.

    Parameters
    ----------
    dataset : Dataset
        ``dataset.x_val`` / ``dataset.y_val`` (optional attributes) hold an official validation split.
    fraction : float in [0, 1)
        Share of the training images held out when there is no official split; 0 turns validation off (even
        an official split is then not used).
    seed : int

    Returns
    -------
    ValidationSplit
    """
    if not (isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 <= fraction < 1):
        raise ValueError(f"--val-fraction must be a number in [0, 1) (0 turns validation off), got {fraction!r}")
    x, y = dataset.x_train, dataset.y_train
    if fraction == 0:
        return ValidationSplit(x, y, None, None, "none")
    x_val = getattr(dataset, "x_val", None)
    if x_val is not None:
        return ValidationSplit(x, y, x_val, dataset.y_val, "official")
    kept, held = stratified_split(y, fraction, seed)
    if len(held) == 0 or len(kept) == 0:
        raise ValueError(f"--val-fraction {fraction:g} of {len(y)} training images leaves no validation or no "
                         f"training images; use more images or --val-fraction 0")
    return ValidationSplit(x[kept], y[kept], x[held], y[held], "held out")
