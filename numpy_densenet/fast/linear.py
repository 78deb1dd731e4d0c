"""Fast Linear: :class:`numpy_densenet.nn.Linear` (its specification) with its products split between the
library's threads (see :mod:`numpy_densenet.fast.threads`)."""
from __future__ import annotations

from ..nn import linear as plain
from ..nn.checks import check_grad, check_input, take_cache
from ..nn.module import saved
from .threads import matmul


class Linear(plain.Linear):
    """:class:`numpy_densenet.nn.Linear`, y = x W^T + b, its products on all threads.

    Shapes: x (N, in_features) -> y (N, out_features).
    """

    def forward(self, x):
        x = check_input(self, x, 2, "(N, in_features)", self.weight.dtype)
        if x.shape[1] != self.in_features:
            raise ValueError(f"Linear: input has {x.shape[1]} features, expected in_features="
                             f"{self.in_features} (input shape {x.shape})")
        y = matmul(x, self.weight.data.T)                                    # (N, out)
        if self.bias is not None:
            y += self.bias.data
        self._cache = saved(x)
        return y

    def backward(self, dout):
        x = take_cache(self)
        dout = check_grad(self, dout, (x.shape[0], self.out_features), self.weight.dtype)
        self.weight.grad += matmul(dout.T, x)                                # (out, in)
        if self.bias is not None:
            self.bias.grad += dout.sum(axis=0)                               # sum over the batch
        return matmul(dout, self.weight.data)                                # (N, in)
