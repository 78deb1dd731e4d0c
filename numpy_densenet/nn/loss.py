"""Softmax cross-entropy loss."""
from __future__ import annotations

import numpy as np
from scipy.special import log_softmax

from .checks import check_input, check_labels, take_cache
from .module import Module, saved


class CrossEntropyLoss(Module):
    """Mean (or summed) softmax cross-entropy, PyTorch's ``nn.CrossEntropyLoss`` with class-index targets.

    ``loss = criterion(logits, labels)`` returns the loss as a 0-d array of the logits' dtype;
    ``criterion.backward()`` returns d loss / d logits (scaled by ``dout``, default 1). Computed from
    SciPy's log-softmax, which subtracts each row's maximum first, so logits of +-1e4 are fine.

    With label smoothing e, the target distribution is (1 - e) * one_hot + e / K.

    Shapes
    ------
    logits : (N, K) float; labels : (N,) integers in [0, K) -> loss : () ; dlogits : (N, K).
    """

    def __init__(self, label_smoothing=0.0, reduction="mean"):
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"CrossEntropyLoss: reduction must be 'mean' or 'sum', got {reduction!r}")
        self.label_smoothing, self.reduction = float(label_smoothing), reduction
        self._cache = None

    def extra_repr(self):
        return f"label_smoothing={self.label_smoothing}, reduction={self.reduction!r}"

    def forward(self, logits, labels):
        """logits: (N, K), labels: (N,) integers in [0, K) -> loss: () in the logits' dtype."""
        logits = check_input(self, logits, 2, "(N, num_classes)")
        labels = check_labels(self, labels, logits.shape)
        N, K = logits.shape
        logp = log_softmax(logits, axis=1)                                   # (N, K): z - log(sum(exp(z)))
        e = self.label_smoothing
        rows = np.arange(N)
        per_sample = -(1.0 - e) * logp[rows, labels]
        if e:
            per_sample -= e * logp.mean(axis=1)
        total = per_sample.sum()
        loss = total / N if self.reduction == "mean" else total
        self._cache = saved((logp, labels))
        return np.asarray(loss, dtype=logits.dtype)

    def backward(self, dout=1.0):
        """Return d loss / d logits, (N, K): (softmax - target distribution) / N for the mean."""
        logp, labels = take_cache(self)
        N, K = logp.shape
        dout = np.asarray(dout, dtype=logp.dtype)
        if dout.shape != ():
            raise ValueError(f"CrossEntropyLoss.backward: the loss is a scalar, so dout must be a scalar, got "
                             f"shape {dout.shape}")
        e = self.label_smoothing
        grad = np.exp(logp)                                                  # softmax
        grad[np.arange(N), labels] -= 1.0 - e
        if e:
            grad -= e / K
        scale = dout / N if self.reduction == "mean" else dout
        grad *= scale
        return grad
