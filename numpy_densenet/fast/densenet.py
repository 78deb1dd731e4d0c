"""The fast tier's DenseNet: :class:`numpy_densenet.model.DenseLayer`, ``DenseBlock``, ``Transition`` and
``DenseNet`` (their specifications, which they subclass) computed channel-major.

Inside the network every feature map is channel-major, (C, N, H, W): a slice of channels is then one
contiguous block of memory. A dense block allocates one buffer for all its k0 + L*k output channels; layer l
*reads* the first k0 + (l-1)*k channels as a view (that view is the concatenation [x0, x1, ..., x(l-1)], built
without copying anything) and *writes* its k new channels right after them::

    buffer channels:  [ x0 (k0) | x1 (k) | x2 (k) | ... | xL (k) ]
    layer l reads:    [ <------ k0 + (l-1)*k ------> ]
    layer l writes:                                    [ x_l ]

Backward runs the same picture in reverse. One gradient buffer of the same shape starts as the gradient of
the block output; layer l takes the slice at its own channels (complete by then: every later consumer has
added its share) and returns the gradient of its whole input, which is *added* into the channels it read:
the plain block's split-and-accumulate (``numpy_densenet/model.py``), done in place.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from .. import model
from ..nn import Dropout
from ..nn.checks import check_grad, check_input, take_cache
from ..nn.module import Module, is_grad_enabled, saved
from ..nn.module import Sequential as PlainSequential
from .activation import ReLU
from .conv import Conv2d
from .layout import ChannelMajor, Sequential, swap01
from .linear import Linear
from .norm import BatchNorm2d, BatchNormReLU2d, channel_statistics
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d
from .reuse import KeepsArrays, ReusedArrays, release_memory
from .threads import add_into, blas_single_threaded, get_num_threads, parallel_for, split


class DenseLayer(KeepsArrays, ChannelMajor, model.DenseLayer):
    """The fast :class:`numpy_densenet.model.DenseLayer` (its specification), channel-major.

    H_l: BN -> ReLU -> 1x1 conv to bn_size*k -> BN -> ReLU -> 3x3 conv to k (-> dropout).

    With ``bn_size=None`` it is the plain (non-bottleneck) layer BN -> ReLU -> 3x3 conv to k. It returns only
    its k new channels; the block places them after its input. Each BN -> ReLU pair (torchvision's norm1,
    relu1 and norm2, relu2) is one :class:`BatchNormReLU2d` named norm1 / norm2, so state_dict keys match.

    With ``memory_efficient=True`` (Pleiss et al. 2017) the output of the first BN -> ReLU, a tensor as large
    as the layer's whole input, is not kept for backward: backward recomputes it from the input (a view of the
    block buffer, alive anyway) and the batch statistics, without updating the running statistics again.
    Memory then grows linearly with depth instead of quadratically, for one extra BN -> ReLU per layer.

    Shapes (channel-major): x (C_in, N, H, W) -> new features (k, N, H, W).
    """

    def __init__(self, num_input_features, growth_rate, bn_size=4, drop_rate=0.0, dtype=np.float32, rng=None,
                 memory_efficient=False):
        Module.__init__(self)           # its own children: the plain layer's, with each BN -> ReLU fused
        rng = rng if rng is not None else np.random.default_rng()
        self.bottleneck = bn_size is not None
        self.memory_efficient = bool(memory_efficient)
        self.norm1 = BatchNormReLU2d(num_input_features, dtype=dtype)                 # norm1 -> relu1
        if self.bottleneck:
            self.conv1 = Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False, dtype=dtype, generator=rng)
            self.norm2 = BatchNormReLU2d(bn_size * growth_rate, dtype=dtype)            # norm2 -> relu2
            self.conv2 = Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False, dtype=dtype,
                                generator=rng)
        else:
            self.conv1 = Conv2d(num_input_features, growth_rate, 3, padding=1, bias=False, dtype=dtype,
                                generator=rng)
        self.drop_rate = float(drop_rate)
        if self.drop_rate > 0:
            self.dropout = Dropout(self.drop_rate, seed=rng.integers(2**63))
        self._recompute = None
        self._kept = ReusedArrays()                     # the bottleneck's two feature maps, step after step

    def forward_cnhw(self, x, stats=None, workspace=None, out=None):
        """x: (C_in, N, H, W), [x0, ..., x(l-1)] as a view of the block buffer -> (k, N, H, W).

        ``stats``: the batch (mean, var, count) of x's channels, if the block already has them (train mode).
        ``workspace``: with ``memory_efficient``, an array of x's shape shared by the block's layers, where the
        first BN -> ReLU output is written (forward) and recomputed (backward) instead of a new array each.
        ``out``: a C-contiguous (k, N, H, W) array (the block buffer's slice) that receives the new features.
        """
        t = self.norm1.forward_cnhw(x, stats, out=workspace)                  # BN -> ReLU: (C_in, N, H, W)
        last = out if self.drop_rate == 0 else None                          # where the last conv writes
        first = self._kept.empty("conv1", (self.conv1.out_channels,) + t.shape[1:], t.dtype) if self.bottleneck \
            else last
        h = self.conv1.forward_cnhw(t, keep_input=not self.memory_efficient, out=first)  # (4k or k, N, H, W)
        if self.memory_efficient:
            self.norm1.clear_cache()                                        # drop t; keep what recomputes it
            self._recompute = saved((x, stats, workspace))
        if self.bottleneck:                                                  # BN -> ReLU -> conv: (k, N, H, W)
            t2 = self.norm2.forward_cnhw(h, out=self._kept.empty("norm2", h.shape, h.dtype), keep_output=False)
            self._cache = saved(t2)                                          # backward writes conv2's dx over it
            h = self.conv2.forward_cnhw(t2, out=last)
        if self.drop_rate > 0:
            h = swap01(self.dropout(swap01(h)))                          # masks drawn in NCHW order, as plain
        if out is not None and h is not out:                                 # after dropout
            out[...] = h
            return out
        return h

    def clear_cache(self):
        """Also drop what a memory-efficient layer keeps to recompute its first BN -> ReLU (a cache too), and
        the arrays it keeps for the next step (:class:`KeepsArrays`)."""
        super().clear_cache()
        self._recompute = None

    def backward_cnhw(self, dout, workspace=None):
        """dout: (k, N, H, W), the gradient of the new features -> gradient of the input (C_in, N, H, W).

        Each convolution's input gradient is written over its input once it has used it for its weight
        gradient, and each BatchNorm's backward runs in place there (both BN -> ReLU pairs find their ReLU mask
        again from their input): conv2's over the second BN -> ReLU output; a memory-efficient layer's conv1's
        over the recomputed first BN -> ReLU output, in the block's workspace. A layer that is not
        memory-efficient computes its input gradient in ``workspace`` if given, a C-contiguous array of the
        input's shape (the block shares one between its layers), else in a new array.
        """
        d = swap01(self.dropout.backward(swap01(dout))) if self.drop_rate > 0 else dout
        if self.bottleneck:
            d = self.conv2.backward_cnhw(d, out=take_cache(self))            # over its input, after its dW
            d = self.norm2.backward_cnhw(d, out=d)                           # in place
        if self.memory_efficient:
            if not isinstance(self._recompute, tuple):
                raise RuntimeError("DenseLayer.backward called before forward, or after a forward inside no_grad()")
            x, stats, t = self._recompute
            self._recompute = None
            t = self.norm1.forward_cnhw(x, stats, update_stats=False, out=t, keep_output=False)  # BN -> ReLU again
            d = self.conv1.backward_cnhw(d, x=t, out=t)                      # dx written over t, after dW
        else:
            d = self.conv1.backward_cnhw(d, out=workspace)
        return self.norm1.backward_cnhw(d, out=d)                            # in place


class DenseBlock(KeepsArrays, ChannelMajor, model.DenseBlock):
    """The fast :class:`numpy_densenet.model.DenseBlock` (its specification): one buffer, channel-major.

    L dense layers; layer l (1-based) sees [x0, ..., x(l-1)] (k0 + (l-1)*k channels); the block outputs
    all k0 + L*k.

    Shapes (channel-major): x0 (k0, N, H, W) -> (k0 + L*k, N, H, W).

    Attributes
    ----------
    offsets : list of int
        Where each feature map starts in the block buffer: [0, k0, k0 + k, ..., k0 + L*k].
    memory_efficient : bool
        Whether the layers recompute their first BN -> ReLU in backward (see :class:`DenseLayer`).
    """

    DenseLayer = DenseLayer

    def __init__(self, num_layers, num_input_features, growth_rate, bn_size=4, drop_rate=0.0, dtype=np.float32,
                 rng=None, memory_efficient=False):
        super().__init__(num_layers, num_input_features, growth_rate, bn_size, drop_rate, dtype, rng)
        del self.concat                             # the buffer's slices are the concatenations
        self.memory_efficient = memory_efficient
        self._cache = None
        self._kept = ReusedArrays()                 # its buffers, workspaces and gradient buffers, step after step

    @property
    def memory_efficient(self):
        return all(layer.memory_efficient for layer in self.layers())

    @memory_efficient.setter
    def memory_efficient(self, value):
        for layer in self.layers():
            layer.memory_efficient = bool(value)

    def feature_statistics(self, x):
        """One feature map's batch statistics, computed once and shared by all its consumers' first BatchNorm:
        x (C, N, H, W) -> (mean, var, count), float64 (C,) each, over ``count`` = N*H*W values per channel."""
        return (*channel_statistics(x), x.size // x.shape[0])

    def forward_cnhw(self, x0, each_layer=None):
        """x0: (k0, N, H, W) -> the block buffer [x0 | x1 | ... | xL]: (k0 + L*k, N, H, W).

        ``each_layer(l, view)``, if given, is called after layer l (1-based) with the buffer's first
        k0 + l*k channels (:meth:`DenseNet.forward_stages` uses it).
        """
        x0 = self.checked(x0)
        k0, N, H, W = x0.shape
        buffer = self._kept.empty("buffer", (self.num_output_features, N, H, W), x0.dtype)  # [x0 | ... | xL]
        buffer[:k0] = x0
        # Each feature map's batch statistics are computed once, when it is written, and shared by all of
        # its consumers' first BatchNorm: O(L) statistics instead of O(L^2).
        share = self.training and N * H * W > 1
        mean, var = np.empty(self.num_output_features), np.empty(self.num_output_features)   # float64
        if share:
            mean[:k0], var[:k0], count = self.feature_statistics(x0)
        # Memory-efficient layers write their first BN -> ReLU output into one workspace shared by all.
        shared = self._kept.empty("workspace", (self.offsets[-2], N, H, W), x0.dtype) if self.memory_efficient \
            else None
        for l, (layer, start, stop) in enumerate(zip(self.layers(), self.offsets[1:-1], self.offsets[2:]), 1):
            stats = (mean[:start], var[:start], count) if share else None
            workspace = shared[:start] if shared is not None else None
            layer.forward_cnhw(buffer[:start], stats, workspace, out=buffer[start:stop])  # reads x0..x(l-1), writes x_l
            if share:
                mean[start:stop], var[start:stop], count = self.feature_statistics(buffer[start:stop])
            if each_layer is not None:
                each_layer(l, buffer[:stop])
        self._cache = saved((buffer.shape, buffer.dtype))
        return buffer

    def backward_cnhw(self, dout, out=None):
        """dout: (k0 + L*k, N, H, W), gradient of the block output -> gradient of x0, (k0, N, H, W).

        ``out``: a C-contiguous array of dout's shape and dtype in which the gradients of all the feature maps
        are accumulated, instead of a copy of dout; it may be dout itself (the network hands its blocks
        gradients that nothing else holds). The result is then a view of it.
        """
        shape, dtype = take_cache(self)
        dout = check_grad(self, dout, shape, dtype)
        if out is not None and (out.shape != shape or out.dtype != dtype or not out.flags.c_contiguous):
            raise ValueError(f"DenseBlock.backward: out must be a C-contiguous array of shape {shape} and dtype "
                             f"{dtype}, got {out.shape} {out.dtype}")
        grad = dout.copy() if out is None else out         # grad[c] collects every consumer of channel c
        if out is not None and out is not dout:
            grad[...] = dout
        layers = self.layers()
        # Each layer's input gradient: memory-efficient layers compute it in the forward workspace, others here.
        shared = None if self.memory_efficient else np.empty((self.offsets[-2],) + shape[1:], dtype=dtype)
        for j in reversed(range(self.num_layers)):
            start, stop = self.offsets[j + 1], self.offsets[j + 2]
            # x_j+1's gradient is complete: the block output and every later layer have added their slices.
            workspace = None if shared is None else shared[:start]
            dinput = layers[j].backward_cnhw(grad[start:stop], workspace)  # (start, N, H, W): d[x0..x_j]
            add_into(grad[:start], dinput)                          # concat backward: split, then add
        return grad[:self.offsets[1]]

    def checked(self, x0):
        """``x0`` checked: (k0, N, H, W), channel-major."""
        x0 = check_input(self, x0, 4, "(C, N, H, W)")
        if x0.shape[0] != self.num_input_features:
            raise ValueError(f"DenseBlock: input has {x0.shape[0]} channels, expected {self.num_input_features}")
        return x0


class Transition(KeepsArrays, Sequential, model.Transition):
    """The fast :class:`numpy_densenet.model.Transition` (its specification): BN -> ReLU -> 1x1 conv to
    ``num_output_features`` -> 2x2 average pool, stride 2 (torchvision's names; its norm -> relu pair is one
    :class:`BatchNormReLU2d` named norm, so state_dict keys match)."""

    def __init__(self, num_input_features, num_output_features, dtype=np.float32, rng=None):
        PlainSequential.__init__(self, OrderedDict([          # its own children: norm and relu fused
            ("norm", BatchNormReLU2d(num_input_features, dtype=dtype)),                  # norm -> relu
            ("conv", Conv2d(num_input_features, num_output_features, 1, bias=False, dtype=dtype, generator=rng)),
            ("pool", AvgPool2d(2, stride=2)),
        ]))
        self._kept = ReusedArrays()                 # the BN -> ReLU output, step after step

    def forward_cnhw(self, x):
        """x: (C, N, H, W) -> (num_output_features, N, H//2, W//2); the BN -> ReLU output (the largest array,
        kept for backward) is written into memory kept from the previous step when it is free."""
        x = self.norm.checked(x)
        t = self.norm.forward_cnhw(x, out=self._kept.empty("norm", x.shape, x.dtype), keep_output=False)
        self._cache = saved(t)
        return self.pool.forward_cnhw(self.conv.forward_cnhw(t))

    def backward_cnhw(self, dout):
        """dout: (num_output_features, N, H//2, W//2) -> dx: (C, N, H, W). The conv's input gradient is written
        over the BN -> ReLU output (once the conv has used it for its weight gradient) and BatchNorm's backward
        runs in place there: no new array of the input's size."""
        t = take_cache(self)
        d = self.conv.backward_cnhw(self.pool.backward_cnhw(dout), out=t)
        return self.norm.backward_cnhw(d, out=d)


class DenseNet(model.DenseNet):
    """The fast :class:`numpy_densenet.model.DenseNet` (its specification): the same network, parameters,
    initialisation and ``state_dict`` keys, built from the fast layers and run channel-major inside.

    Parameters
    ----------
    *args, **kwargs
        Those of :class:`numpy_densenet.model.DenseNet`.
    memory_efficient : bool
        Recompute each dense layer's first BN -> ReLU in backward instead of storing it (Pleiss et al. 2017):
        memory linear in depth, bit-identical results; see :class:`DenseLayer`. On by default (unlike
        torchvision, where it costs time): the recomputation is elementwise and its workspace is reused, so a
        step is no slower (benchmarks/README.md).

    Shapes
    ------
    x : (N, in_channels, H, W) -> logits : (N, num_classes), NCHW outside, as the plain tier's.
    """

    Conv2d, BatchNorm2d, ReLU, MaxPool2d = Conv2d, BatchNorm2d, ReLU, MaxPool2d
    AdaptiveAvgPool2d, Linear, Sequential = AdaptiveAvgPool2d, Linear, Sequential
    DenseBlock, Transition = DenseBlock, Transition
    fast = True

    def __init__(self, *args, memory_efficient=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.memory_efficient = memory_efficient

    @property
    def memory_efficient(self):
        return all(block.memory_efficient for block in self.blocks())

    @memory_efficient.setter
    def memory_efficient(self, value):
        for block in self.blocks():
            block.memory_efficient = value

    def train(self, mode=True):
        """Train mode (or eval mode with ``mode=False``, which also lets go of the memory the layers keep from
        one train step to the next: see :mod:`.reuse`)."""
        super().train(mode)
        if not mode:
            release_memory(self)
        return self

    def forward(self, x):
        """x: (N, C, H, W) -> logits (N, num_classes).

        Inference (eval mode inside :class:`~numpy_densenet.nn.no_grad`) with more than one thread runs in
        pieces of whole images: BatchNorm then uses its running statistics, so every image's path through the
        network is independent of the others', and each thread runs the *whole* network on a few images at a
        time (its products with OpenBLAS on one thread). One hand-off per forward instead of several per layer,
        and each piece's feature maps are small. The results agree with a batch forward's to rounding.
        """
        x = self.checked(x)
        pieces = self.inference_pieces(x.shape[0])
        if pieces is None:
            h = self.pooled_features(x)                          # (C, N, 1, 1)
        else:
            with blas_single_threaded():
                h = np.concatenate(parallel_for(lambda n: self.pooled_features(x[n]), pieces), axis=1)
        C, N = h.shape[:2]
        self._cache = saved((C, N))
        return self.classifier(h.reshape(C, N).T)                # (N, num_classes)

    def pooled_features(self, x):
        """x: (N, C, H, W) -> pooled features (C, N, 1, 1)."""
        h = self.features.forward_cnhw(swap01(x))                # (C, N, h, w), channel-major inside
        return self.pool.forward_cnhw(self.relu(h))              # (C, N, 1, 1)

    def inference_pieces(self, N):
        """The slices of a batch of N images that :meth:`forward` runs as separate pieces, or None for one batch
        forward: pieces are used inside no_grad() with more than one thread when *every* layer is in eval mode
        (a BatchNorm left in train mode needs the whole batch's statistics and updates its running ones once
        per forward; a Dropout in train mode, as in Monte Carlo dropout, draws its masks in order), if each
        thread gets the same number of pieces or at least two (two per thread where N allows)."""
        threads = get_num_threads()
        if is_grad_enabled() or threads == 1 or N < threads or (N % threads and N < 2 * threads):
            return None
        if any(m.training for m in self.modules()):
            return None
        return split(N, min(N, 2 * threads))

    def backward(self, dout):
        """dout: (N, num_classes), the gradient of the logits -> dx (N, C, H, W); adds into every .grad."""
        C, N = take_cache(self)
        dh = self.classifier.backward(dout)                      # (N, C)
        dh = np.ascontiguousarray(dh.T).reshape(C, N, 1, 1)
        dh = self.relu.backward(self.pool.backward_cnhw(dh))
        for stage in reversed(list(self.features.children())):
            # dh is an array nothing else holds: a block accumulates its gradient in it, BatchNorm and ReLU
            # write theirs over it
            in_place = isinstance(stage, (DenseBlock, BatchNorm2d, ReLU))
            dh = stage.backward_cnhw(dh, out=dh) if in_place else stage.backward_cnhw(dh)
        return swap01(dh)

    def forward_stages(self, x):
        """:meth:`numpy_densenet.model.DenseNet.forward_stages`, the outputs as NCHW views."""
        h = swap01(self.checked(x))
        for name, stage in self.features.named_children():
            if isinstance(stage, DenseBlock):
                seen = []
                h = stage.forward_cnhw(h, each_layer=lambda l, view: seen.append((l, view)))
                for l, view in seen:
                    yield f"features.{name}.denselayer{l}", getattr(stage, f"denselayer{l}"), swap01(view)
            else:
                h = stage.forward_cnhw(h)
                yield f"features.{name}", stage, swap01(h)
        pooled = self.pool.forward_cnhw(self.relu(h))
        yield "classifier", self.classifier, self.classifier(pooled.reshape(pooled.shape[0], -1).T)
