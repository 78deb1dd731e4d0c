"""DenseNet (Huang et al., CVPR 2017), compatible with torchvision.models.densenet.

Four small pieces, as in torchvision: the dense layer, the dense block, the transition, and the network.

Inside the network every feature map is channel-major, (C, N, H, W): a slice of channels is then one
contiguous block of memory. A dense block allocates one buffer for all its k0 + L*k output channels; layer l
*reads* the first k0 + (l-1)*k channels as a view (that view is the concatenation [x0, x1, ..., x(l-1)], built
without copying anything) and *writes* its k new channels right after them::

    buffer channels:  [ x0 (k0) | x1 (k) | x2 (k) | ... | xL (k) ]
    layer l reads:    [ <------ k0 + (l-1)*k ------> ]
    layer l writes:                                    [ x_l ]

Backward runs the same picture in reverse. One gradient buffer of the same shape starts as the gradient of
the block output; layer l takes the slice at its own channels (complete by then: every later consumer has
added its share) and returns the gradient of its whole input, which is *added* into the channels it read.
That addition is the backward of the concatenation: the input gradient splits at the channel offsets, and
each earlier feature map's gradient becomes the sum over all of its consumers.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict

import numpy as np

from .nn import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, BatchNormReLU2d, Conv2d, Dropout, Linear, MaxPool2d,
                 ReLU)
from .nn._checks import check_grad, check_input, take_cache
from .nn.module import Module, Sequential, check_float_dtype, is_grad_enabled, saved
from .nn.threads import add_into, blas_single_threaded, get_num_threads, parallel_for, split


def _kaiming_normal_(conv, rng):
    """torchvision's init: kaiming_normal_ with fan_in and ReLU gain, std = sqrt(2 / fan_in)."""
    w = conv.weight.data
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    w[...] = rng.standard_normal(w.shape) * math.sqrt(2.0 / fan_in)


class DenseLayer(Module):
    """H_l: BN -> ReLU -> 1x1 conv to bn_size*k -> BN -> ReLU -> 3x3 conv to k (-> dropout).

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
        super().__init__()
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

    def forward_cnhw(self, x, stats=None, workspace=None):
        """x: (C_in, N, H, W), [x0, ..., x(l-1)] as a view of the block buffer -> (k, N, H, W).

        ``stats``: the batch (mean, var) of x's channels, if the block already has them (train mode).
        ``workspace``: with ``memory_efficient``, an array of x's shape shared by the block's layers, where the
        first BN -> ReLU output is written (forward) and recomputed (backward) instead of a new array each.
        """
        t = self.norm1.forward_cnhw(x, stats, out=workspace)                  # BN -> ReLU: (C_in, N, H, W)
        h = self.conv1.forward_cnhw(t, keep_input=not self.memory_efficient)  # (4k or k, N, H, W)
        if self.memory_efficient:
            self.norm1._clear_cache()                                        # drop t; keep what recomputes it
            self._recompute = saved((x, stats, workspace))
        if self.bottleneck:
            h = self.conv2.forward_cnhw(self.norm2.forward_cnhw(h))          # BN -> ReLU -> conv: (k, N, H, W)
        if self.drop_rate > 0:
            h = self.dropout(h)
        return h

    def backward_cnhw(self, dnew, workspace=None):
        """dnew: (k, N, H, W), the gradient of the new features -> gradient of the input (C_in, N, H, W).

        ``workspace``: a C-contiguous array of the input's shape where the input gradient is computed and
        returned, instead of new arrays (the block shares one between its layers).
        """
        d = self.dropout.backward(dnew) if self.drop_rate > 0 else dnew
        if self.bottleneck:
            d = self.norm2.backward_cnhw(self.conv2.backward_cnhw(d))
        dinput = workspace
        if self.memory_efficient:
            if not isinstance(self._recompute, tuple):
                raise RuntimeError("DenseLayer.backward called before forward, or after a forward inside no_grad()")
            x, stats, workspace = self._recompute
            self._recompute = None
            t = self.norm1.forward_cnhw(x, stats, update_stats=False, out=workspace)  # BN -> ReLU again
            d = self.conv1.backward_cnhw(d, x=t, out=dinput)
        else:
            d = self.conv1.backward_cnhw(d, out=dinput)
        return self.norm1.backward_cnhw(d, out=dinput)                      # in place when dinput is given

    def forward(self, x):
        """x: (N, C_in, H, W) -> (N, k, H, W)."""
        return self.forward_cnhw(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)

    def backward(self, dnew):
        return self.backward_cnhw(dnew.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)


class DenseBlock(Module):
    """L dense layers; layer l (1-based) sees [x0, ..., x(l-1)] (k0 + (l-1)*k channels); the block outputs
    all k0 + L*k.

    Shapes (channel-major): x0 (k0, N, H, W) -> (k0 + L*k, N, H, W).

    Attributes
    ----------
    offsets : list of int
        Where each feature map starts in the block buffer: [0, k0, k0 + k, ..., k0 + L*k].
    flow : list or None
        Set ``block.record_flow = True`` to have backward store, for each layer j, the gradient it sends to
        the channels it read (``flow[j]`` has shape (k0 + j*k, N, H, W)); the study tools use it.
    """

    def __init__(self, num_layers, num_input_features, growth_rate, bn_size=4, drop_rate=0.0, dtype=np.float32,
                 rng=None, memory_efficient=False):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        self.num_layers, self.num_input_features, self.growth_rate = num_layers, num_input_features, growth_rate
        for i in range(num_layers):
            layer = DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate, dtype, rng,
                               memory_efficient)
            setattr(self, f"denselayer{i + 1}", layer)
        self.offsets = [0] + [num_input_features + i * growth_rate for i in range(num_layers + 1)]
        self.memory_efficient = bool(memory_efficient)
        self.record_flow = False
        self.flow = None
        self._cache = None

    @property
    def num_output_features(self):
        return self.offsets[-1]

    def layers(self):
        return [getattr(self, f"denselayer{i + 1}") for i in range(self.num_layers)]

    def forward_cnhw(self, x0):
        x0 = check_input(self, x0, 4, "(C, N, H, W)")
        k0, N, H, W = x0.shape
        if k0 != self.num_input_features:
            raise ValueError(f"DenseBlock: input has {k0} channels, expected {self.num_input_features}")
        buffer = np.empty((self.num_output_features, N, H, W), dtype=x0.dtype)  # [x0 | x1 | ... | xL]
        buffer[:k0] = x0
        # Each feature map's batch statistics are computed once, when it is written, and shared by all of
        # its consumers' first BatchNorm: O(L) statistics instead of O(L^2).
        share = self.training and N * H * W > 1
        mean = np.empty(self.num_output_features)                     # float64, as BatchNorm2d.batch_statistics
        var = np.empty(self.num_output_features)
        if share:
            mean[:k0], var[:k0] = BatchNorm2d.batch_statistics(x0)
        # Memory-efficient layers write their first BN -> ReLU output into one workspace shared by all.
        shared = np.empty((self.offsets[-2], N, H, W), dtype=x0.dtype) if self.memory_efficient else None
        for layer, start, stop in zip(self.layers(), self.offsets[1:-1], self.offsets[2:]):
            stats = (mean[:start], var[:start]) if share else None
            workspace = shared[:start] if shared is not None else None
            buffer[start:stop] = layer.forward_cnhw(buffer[:start], stats, workspace)  # reads [x0..x(l-1)], writes x_l
            if share:
                mean[start:stop], var[start:stop] = BatchNorm2d.batch_statistics(buffer[start:stop])
        self._cache = saved((buffer.shape, buffer.dtype))
        return buffer

    def backward_cnhw(self, dout):
        """dout: (k0 + L*k, N, H, W), gradient of the block output -> gradient of x0, (k0, N, H, W)."""
        shape, dtype = take_cache(self)
        grad = check_grad(self, dout, shape, dtype).copy()  # grad[c] collects every consumer of channel c
        self.flow = [None] * self.num_layers if self.record_flow else None
        layers = self.layers()
        shared = np.empty((self.offsets[-2],) + grad.shape[1:], dtype=grad.dtype)  # each layer's input gradient
        for j in reversed(range(self.num_layers)):
            start, stop = self.offsets[j + 1], self.offsets[j + 2]
            # x_j+1's gradient is complete: the block output and every later layer have added their slices.
            dinput = layers[j].backward_cnhw(grad[start:stop], shared[:start])  # (start, N, H, W): d[x0..x_j]
            add_into(grad[:start], dinput)                          # concat backward: split, then add
            if self.record_flow:
                self.flow[j] = dinput.copy()                        # the workspace is reused by the next layer
        return grad[:self.offsets[1]]

    def forward(self, x):
        return self.forward_cnhw(x.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)

    def backward(self, dout):
        return self.backward_cnhw(dout.transpose(1, 0, 2, 3)).transpose(1, 0, 2, 3)


class Transition(Sequential):
    """BN -> ReLU -> 1x1 conv to ``num_output_features`` -> 2x2 average pool, stride 2 (torchvision's names;
    its norm -> relu pair is one :class:`BatchNormReLU2d` named norm, so state_dict keys match)."""

    def __init__(self, num_input_features, num_output_features, dtype=np.float32, rng=None):
        super().__init__(OrderedDict([
            ("norm", BatchNormReLU2d(num_input_features, dtype=dtype)),                  # norm -> relu
            ("conv", Conv2d(num_input_features, num_output_features, 1, bias=False, dtype=dtype, generator=rng)),
            ("pool", AvgPool2d(2, stride=2)),
        ]))


_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def rename_old_keys(state_dict):
    """Rename old torchvision keys such as ``...denselayer1.norm.1.weight`` to ``...denselayer1.norm1.weight``."""
    out = OrderedDict()
    for key, value in state_dict.items():
        m = _OLD_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


class DenseNet(Module):
    """DenseNet-BC (and plain DenseNet), with torchvision's structure, names and initialisation.

    Parameters
    ----------
    growth_rate : int
        k, channels each dense layer adds.
    block_config : tuple of int
        Dense layers per block.
    num_init_features : int
        Channels out of the stem.
    bn_size : int or None
        Bottleneck width factor (the 1x1 conv outputs bn_size*k); None for plain layers (BN-ReLU-3x3 conv).
    drop_rate : float
        Dropout after each dense layer.
    num_classes : int
    compression : float
        theta; a transition outputs floor(theta * C) channels.
    stem : {"imagenet", "cifar"}
        "imagenet": 7x7 conv stride 2 pad 3, BN, ReLU, 3x3 max pool stride 2 pad 1 (conv0/norm0/relu0/pool0);
        "cifar": one 3x3 conv stride 1 pad 1 (conv0), no BN, no pool.
    in_channels : int
        Image channels (3 for RGB, 1 for grey).
    dtype : float32 or float64
    seed : int or None
        Seeds the initialisation (and dropout masks).
    memory_efficient : bool
        Recompute each dense layer's first BN -> ReLU in backward instead of storing it (Pleiss et al. 2017):
        memory linear in depth, bit-identical results; see :class:`DenseLayer`. On by default here (unlike
        torchvision, where it costs time): the recomputation is elementwise and its workspace is reused, so a
        step is no slower (benchmarks/README.md). ``False`` keeps every layer's BN -> ReLU output instead.

    Shapes
    ------
    x : (N, in_channels, H, W) -> logits : (N, num_classes).
    """

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4,
                 drop_rate=0.0, num_classes=1000, compression=0.5, stem="imagenet", in_channels=3,
                 dtype=np.float32, seed=None, memory_efficient=True):
        super().__init__()
        for arg, v in (("growth_rate", growth_rate), ("num_init_features", num_init_features),
                       ("num_classes", num_classes), ("in_channels", in_channels)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"DenseNet: {arg} must be a positive int, got {v!r}")
        if not block_config or any(not isinstance(n, (int, np.integer)) or n < 1 for n in block_config):
            raise ValueError(f"DenseNet: block_config must be a non-empty sequence of positive ints, got "
                             f"{block_config!r}")
        if bn_size is not None and (not isinstance(bn_size, (int, np.integer)) or bn_size < 1):
            raise ValueError(f"DenseNet: bn_size must be a positive int or None, got {bn_size!r}")
        if not 0 < compression <= 1:
            raise ValueError(f"DenseNet: compression must be in (0, 1], got {compression!r}")
        if not 0 <= drop_rate < 1:
            raise ValueError(f"DenseNet: drop_rate must be in [0, 1), got {drop_rate!r}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"DenseNet: stem must be 'imagenet' or 'cifar', got {stem!r}")
        dt = check_float_dtype(dtype)
        rng = np.random.default_rng(seed)
        self.config = dict(growth_rate=int(growth_rate), block_config=tuple(int(n) for n in block_config),
                           num_init_features=int(num_init_features), bn_size=bn_size, drop_rate=float(drop_rate),
                           num_classes=int(num_classes), compression=float(compression), stem=stem,
                           in_channels=int(in_channels))
        self.in_channels = int(in_channels)

        stages = OrderedDict()
        if stem == "imagenet":
            stages["conv0"] = Conv2d(in_channels, num_init_features, 7, stride=2, padding=3, bias=False, dtype=dt,
                                     generator=rng)
            stages["norm0"] = BatchNorm2d(num_init_features, dtype=dt)
            stages["relu0"] = ReLU(inplace=True)
            stages["pool0"] = MaxPool2d(3, stride=2, padding=1)
        else:
            stages["conv0"] = Conv2d(in_channels, num_init_features, 3, padding=1, bias=False, dtype=dt,
                                     generator=rng)
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, num_features, growth_rate, bn_size, drop_rate, dt, rng, memory_efficient)
            stages[f"denseblock{i + 1}"] = block
            num_features = block.num_output_features
            if i != len(block_config) - 1:
                out_features = int(math.floor(compression * num_features + 1e-9))   # 0.29 * 100 -> 29
                if out_features < 1:
                    raise ValueError(f"DenseNet: compression {compression} leaves transition {i + 1} with "
                                     f"floor({compression} * {num_features}) = 0 channels")
                stages[f"transition{i + 1}"] = Transition(num_features, out_features, dt, rng)
                num_features = out_features
        stages["norm5"] = BatchNorm2d(num_features, dtype=dt)
        self.features = Sequential(stages)
        self.relu = ReLU(inplace=True)
        self.pool = AdaptiveAvgPool2d(1)
        self.classifier = Linear(num_features, num_classes, dtype=dt, generator=rng)
        self.num_features = num_features

        for m in self.modules():                                 # torchvision's initialisation
            if isinstance(m, Conv2d):
                _kaiming_normal_(m, rng)
        self.classifier.bias.data[...] = 0
        self._cache = None

    @property
    def dtype(self):
        return self.classifier.weight.dtype

    def blocks(self):
        """The dense blocks, in order."""
        return [m for name, m in self.features.named_children() if name.startswith("denseblock")]

    def forward(self, x):
        """x: (N, C, H, W) float -> logits (N, num_classes).

        Inference (eval mode inside :class:`~numpy_densenet.nn.no_grad`) with more than one thread runs in
        pieces of whole images: BatchNorm then uses its running statistics, so every image's path through the
        network is independent of the others', and each thread runs the *whole* network on a few images at a
        time (its products with OpenBLAS on one thread). One hand-off per forward instead of several per layer,
        and each piece's feature maps are small. The results agree with a batch forward's to rounding.
        """
        x = check_input(self, x, 4, "(N, C, H, W)", self.dtype)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"DenseNet: input has {x.shape[1]} channels, expected in_channels={self.in_channels} "
                             f"(input shape {x.shape})")
        pieces = self.inference_pieces(x.shape[0])
        if pieces is None:
            h = self._pooled_features(x)                         # (C, N, 1, 1)
        else:
            with blas_single_threaded():
                h = np.concatenate(parallel_for(lambda n: self._pooled_features(x[n]), pieces), axis=1)
        C, N = h.shape[:2]
        self._cache = saved((C, N))
        return self.classifier(h.reshape(C, N).T)                 # (N, num_classes)

    def _pooled_features(self, x):
        """x: (N, C, H, W) -> pooled features (C, N, 1, 1)."""
        h = self.features.forward_cnhw(x.transpose(1, 0, 2, 3))  # (C, N, h, w), channel-major inside
        return self.pool.forward_cnhw(self.relu(h))              # (C, N, 1, 1)

    def inference_pieces(self, N):
        """The slices of a batch of N images that :meth:`forward` runs as separate pieces, or None for one
        batch forward: pieces are used inside no_grad() with more than one thread when *every* layer is in
        eval mode (a BatchNorm left in train mode needs the whole batch's statistics and updates its running
        ones once per forward; a Dropout in train mode, as in Monte Carlo dropout, draws its masks in order),
        if each thread gets the same number of pieces or at least two (two per thread where N allows)."""
        threads = get_num_threads()
        if is_grad_enabled() or threads == 1 or N < threads or (N % threads and N < 2 * threads):
            return None
        if any(m.training for m in self.modules()):
            return None
        return split(N, min(N, 2 * threads))

    def backward(self, dlogits):
        """dlogits: (N, num_classes) -> dx (N, C, H, W); adds into every parameter's .grad."""
        C, N = take_cache(self)
        dh = self.classifier.backward(dlogits)                    # (N, C)
        dh = np.ascontiguousarray(dh.T).reshape(C, N, 1, 1)
        dh = self.relu.backward(self.pool.backward_cnhw(dh))
        return self.features.backward_cnhw(dh).transpose(1, 0, 2, 3)

    def forward_stages(self, x):
        """Run forward one stage at a time, for inspection (summary tables, locating a NaN).

        Parameters
        ----------
        x : ndarray, shape (N, C, H, W)

        Yields
        ------
        (name, module, output) : output is channel-major (C, N, H, W) for the stem layers, every dense layer
            (its block's buffer up to and including its new channels), transitions and norm5, then (N, K)
            logits for ``"classifier"``. It does not prepare a backward pass (run ``model(x)`` for that); the
            per-layer outputs are the same as a normal forward's.
        """
        h = check_input(self, x, 4, "(N, C, H, W)", self.dtype).transpose(1, 0, 2, 3)
        for name, stage in self.features.named_children():
            if isinstance(stage, DenseBlock):
                buffer = np.empty((stage.num_output_features,) + h.shape[1:], dtype=h.dtype)
                buffer[:stage.offsets[1]] = h
                for i, layer in enumerate(stage.layers()):
                    start, stop = stage.offsets[i + 1], stage.offsets[i + 2]
                    buffer[start:stop] = layer.forward_cnhw(buffer[:start])
                    yield f"features.{name}.denselayer{i + 1}", layer, buffer[:stop]
                h = buffer
            else:
                h = stage.forward_cnhw(h)
                yield f"features.{name}", stage, h
        pooled = self.pool.forward_cnhw(self.relu(h))
        yield "classifier", self.classifier, self.classifier(pooled.reshape(pooled.shape[0], -1).T)

    def load_state_dict(self, state_dict, strict=True):
        """torchvision-compatible loading: old ``norm.1``-style keys are renamed first."""
        return super().load_state_dict(rename_old_keys(state_dict), strict=strict)

    def extra_repr(self):
        c = self.config
        return (f"growth_rate={c['growth_rate']}, block_config={c['block_config']}, "
                f"num_init_features={c['num_init_features']}, bn_size={c['bn_size']}, stem={c['stem']!r}")


# -- factories ----------------------------------------------------------------------------------------------
_TORCHVISION = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}


def _torchvision_factory(name):
    growth_rate, block_config, num_init_features = _TORCHVISION[name]

    def factory(num_classes=1000, **kwargs):
        return DenseNet(growth_rate, block_config, num_init_features, num_classes=num_classes, **kwargs)

    factory.__name__ = name
    factory.__doc__ = (f"torchvision's {name}: k={growth_rate}, blocks {block_config}, {num_init_features} "
                       f"initial features, ImageNet stem. Keyword arguments go to :class:`DenseNet`.")
    return factory


densenet121 = _torchvision_factory("densenet121")
densenet161 = _torchvision_factory("densenet161")
densenet169 = _torchvision_factory("densenet169")
densenet201 = _torchvision_factory("densenet201")


def densenet_bc(depth=100, growth_rate=12, num_classes=10, **kwargs):
    """The paper's CIFAR DenseNet-BC: 3 blocks of (depth - 4) / 6 bottleneck layers, theta = 0.5.

    The stem is one 3x3 conv to 2k channels. BC-100-12, BC-250-24 and BC-190-40 are the paper's models.
    """
    if not isinstance(depth, (int, np.integer)) or depth < 10 or (depth - 4) % 6:
        raise ValueError(f"densenet_bc: depth must be 6n + 4 with n >= 1 (e.g. 40, 100, 190, 250), got {depth!r}")
    n = (depth - 4) // 6
    kwargs.setdefault("stem", "cifar")
    return DenseNet(growth_rate, (n, n, n), 2 * growth_rate, bn_size=4, num_classes=num_classes,
                    compression=0.5, **kwargs)


def densenet(depth=40, growth_rate=12, num_classes=10, **kwargs):
    """The paper's plain CIFAR DenseNet: 3 blocks of (depth - 4) / 3 layers BN-ReLU-3x3 conv, no compression.

    The stem is one 3x3 conv to 16 channels. L=40 k=12, L=100 k=12 and L=100 k=24 are the paper's models.
    """
    if not isinstance(depth, (int, np.integer)) or depth < 7 or (depth - 4) % 3:
        raise ValueError(f"densenet: depth must be 3n + 4 with n >= 1 (e.g. 40, 100), got {depth!r}")
    n = (depth - 4) // 3
    kwargs.setdefault("stem", "cifar")
    return DenseNet(growth_rate, (n, n, n), 16, bn_size=None, num_classes=num_classes, compression=1.0, **kwargs)


MODELS = {"densenet121": densenet121, "densenet161": densenet161, "densenet169": densenet169,
          "densenet201": densenet201, "densenet_bc": densenet_bc, "densenet": densenet}
