"""DenseNet (Huang et al., CVPR 2017), compatible with torchvision.models.densenet: the plain tier.

Four small pieces, as in torchvision: the dense layer, the dense block, the transition, and the network.
Everything here is NCHW and built from the plain layers of :mod:`numpy_densenet.nn`.

A dense layer's input is the concatenation of every feature map before it, x_l = H_l([x_0, ..., x_(l-1)]),
so each feature map has many consumers: every later layer of its block, and whatever follows the block.
Forward concatenates (:class:`~numpy_densenet.nn.Concat`); backward *splits* the gradient of each
concatenation at its channel offsets, and a feature map's gradient is the *sum* of the slices its consumers
send back (``DenseBlock.backward`` below)::

    forward:   x_3 = H_3( concat[x_0, x_1, x_2] )
    backward:  (d_0, d_1, d_2) = split( dH_3/d input )      at the offsets [0, k0, k0 + k, k0 + 2k]
               grad[x_0] += d_0,  grad[x_1] += d_1,  grad[x_2] += d_2

``DenseNet(..., fast=True)`` (the default) builds the same network, with the same initialisation and
``state_dict`` keys, from the fast tier (:mod:`numpy_densenet.fast`): channel-major, one buffer per block
whose slices are the concatenations, fused BN-ReLU, threads. ``fast=False`` builds it from the pieces below.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict

import numpy as np

from . import fast as fast_tier
from .fast import densenet as fast_densenet
from .nn import (AdaptiveAvgPool2d, AvgPool2d, BatchNorm2d, Concat, Conv2d, Dropout, Linear, MaxPool2d, ReLU,
                 Sequential)
from .nn._checks import check_input, take_cache
from .nn.module import Module, check_float_dtype, saved


def _kaiming_normal_(conv, rng):
    """torchvision's init: kaiming_normal_ with fan_in and ReLU gain, std = sqrt(2 / fan_in)."""
    w = conv.weight.data
    fan_in = w.shape[1] * w.shape[2] * w.shape[3]
    w[...] = rng.standard_normal(w.shape) * math.sqrt(2.0 / fan_in)


class DenseLayer(Module):
    """H_l: concat -> BN -> ReLU -> 1x1 conv to bn_size*k -> BN -> ReLU -> 3x3 conv to k (-> dropout).

    With ``bn_size=None`` it is the plain (non-bottleneck) layer concat -> BN -> ReLU -> 3x3 conv to k.
    Names follow torchvision (norm1, relu1, conv1, norm2, relu2, conv2), so ``state_dict`` keys match.

    Shapes: features x_0 (N, k0, H, W), x_1 ... x_(l-1) (N, k, H, W) -> new features x_l (N, k, H, W);
    ``backward`` returns one gradient per input feature map, the split of its input gradient.
    """

    def __init__(self, num_input_features, growth_rate, bn_size=4, drop_rate=0.0, dtype=np.float32, rng=None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        self.bottleneck = bn_size is not None
        self.concat = Concat()
        self.norm1 = BatchNorm2d(num_input_features, dtype=dtype)
        self.relu1 = ReLU()
        if self.bottleneck:
            self.conv1 = Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False, dtype=dtype, generator=rng)
            self.norm2 = BatchNorm2d(bn_size * growth_rate, dtype=dtype)
            self.relu2 = ReLU()
            self.conv2 = Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False, dtype=dtype,
                                generator=rng)
        else:
            self.conv1 = Conv2d(num_input_features, growth_rate, 3, padding=1, bias=False, dtype=dtype,
                                generator=rng)
        self.drop_rate = float(drop_rate)
        if self.drop_rate > 0:
            self.dropout = Dropout(self.drop_rate, seed=rng.integers(2**63))

    def forward(self, *features):
        """x_0, ..., x_(l-1) -> x_l: (N, k, H, W)."""
        x = self.concat(*features)                                   # (N, k0 + (l-1)k, H, W)
        h = self.conv1(self.relu1(self.norm1(x)))                    # (N, 4k, H, W), or (N, k, H, W)
        if self.bottleneck:
            h = self.conv2(self.relu2(self.norm2(h)))                # (N, k, H, W)
        if self.drop_rate > 0:
            h = self.dropout(h)
        return h

    def backward(self, dnew):
        """dnew: (N, k, H, W) -> (dx_0, ..., dx_(l-1)), one gradient per input feature map."""
        d = self.dropout.backward(dnew) if self.drop_rate > 0 else dnew
        if self.bottleneck:
            d = self.norm2.backward(self.relu2.backward(self.conv2.backward(d)))     # (N, 4k, H, W)
        d = self.norm1.backward(self.relu1.backward(self.conv1.backward(d)))         # (N, k0 + (l-1)k, H, W)
        return self.concat.backward(d)                               # the split at the channel offsets


class DenseBlock(Module):
    """L dense layers; layer l (1-based) sees [x0, ..., x(l-1)] (k0 + (l-1)*k channels); the block outputs
    the concatenation of all of them, k0 + L*k channels.

    Shapes: x0 (N, k0, H, W) -> (N, k0 + L*k, H, W).

    Attributes
    ----------
    offsets : list of int
        Where each feature map starts in the block output: [0, k0, k0 + k, ..., k0 + L*k].
    flow : list or None
        Set ``block.record_flow = True`` to have backward store, for each layer j, the gradient it sends to
        the feature maps it read, concatenated: ``flow[j]`` has shape (N, k0 + j*k, H, W). The study tools
        (:mod:`numpy_densenet.flow`) use it.
    """

    def __init__(self, num_layers, num_input_features, growth_rate, bn_size=4, drop_rate=0.0, dtype=np.float32,
                 rng=None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        self.num_layers, self.num_input_features, self.growth_rate = num_layers, num_input_features, growth_rate
        for i in range(num_layers):
            layer = DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate, dtype, rng)
            setattr(self, f"denselayer{i + 1}", layer)
        self.concat = Concat()
        self.offsets = [0] + [num_input_features + i * growth_rate for i in range(num_layers + 1)]
        self.record_flow = False
        self.flow = None

    @property
    def num_output_features(self):
        return self.offsets[-1]

    def layers(self):
        return [getattr(self, f"denselayer{i + 1}") for i in range(self.num_layers)]

    def forward(self, x0):
        """x0: (N, k0, H, W) -> [x0, x1, ..., xL]: (N, k0 + L*k, H, W)."""
        features = [x0]
        for layer in self.layers():
            features.append(layer(*features))                        # x_l = H_l([x0, ..., x_(l-1)])
        return self.concat(*features)                                # (N, k0 + L*k, H, W)

    def backward(self, dout):
        """dout: (N, k0 + L*k, H, W) -> dx0: (N, k0, H, W)."""
        grads = list(self.concat.backward(dout))                     # split: [dx0 (N, k0, ..), dx1 (N, k, ..), ..]
        self.flow = [None] * self.num_layers if self.record_flow else None
        layers = self.layers()
        for l in reversed(range(self.num_layers)):                   # layer l+1 made x_(l+1)
            # grads[l+1] is complete: the block output and every later layer have added their shares.
            received = layers[l].backward(grads[l + 1])              # (dx0, ..., dx_l): the split of its input
            for i, g in enumerate(received):
                grads[i] = grads[i] + g                              # x_i's gradient: sum over its consumers
            if self.record_flow:
                self.flow[l] = np.concatenate(received, axis=1)      # (N, k0 + l*k, H, W)
        return grads[0]


class Transition(Sequential):
    """BN -> ReLU -> 1x1 conv to ``num_output_features`` -> 2x2 average pool, stride 2 (torchvision's names).

    Shapes: (N, C, H, W) -> (N, num_output_features, H // 2, W // 2).
    """

    def __init__(self, num_input_features, num_output_features, dtype=np.float32, rng=None):
        super().__init__(OrderedDict([
            ("norm", BatchNorm2d(num_input_features, dtype=dtype)),
            ("relu", ReLU()),
            ("conv", Conv2d(num_input_features, num_output_features, 1, bias=False, dtype=dtype, generator=rng)),
            ("pool", AvgPool2d(2, stride=2)),
        ]))


class _PLAIN:
    """The plain tier's layers, under the names :class:`DenseNet` builds from (``fast`` has the same names)."""
    Conv2d, BatchNorm2d, ReLU, MaxPool2d, AdaptiveAvgPool2d, Linear, Sequential, Transition = (
        Conv2d, BatchNorm2d, ReLU, MaxPool2d, AdaptiveAvgPool2d, Linear, Sequential, Transition)


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
    fast : bool
        True (the default): built from the fast tier (:mod:`numpy_densenet.fast`), channel-major with one
        buffer per dense block, fused BN-ReLU and threads. False: built from the plain layers of
        :mod:`numpy_densenet.nn` and the pieces of this module (NCHW, :class:`~numpy_densenet.nn.Concat`),
        slow and memory-hungry but written to be read. Same initialisation (for the same seed), same
        ``state_dict`` keys and the same results to rounding, so checkpoints move between the tiers.
    memory_efficient : bool
        Fast tier only: recompute each dense layer's first BN -> ReLU in backward instead of storing it
        (Pleiss et al. 2017): memory linear in depth, bit-identical results; see
        :class:`numpy_densenet.fast.densenet.DenseLayer`. On by default (unlike torchvision, where it costs
        time): the recomputation is elementwise and its workspace is reused, so a step is no slower
        (benchmarks/README.md). ``False`` keeps every layer's BN -> ReLU output instead. The plain tier always
        keeps every activation.

    Shapes
    ------
    x : (N, in_channels, H, W) -> logits : (N, num_classes).
    """

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4,
                 drop_rate=0.0, num_classes=1000, compression=0.5, stem="imagenet", in_channels=3,
                 dtype=np.float32, seed=None, memory_efficient=True, fast=True):
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
        if not isinstance(fast, (bool, np.bool_)):
            raise TypeError(f"DenseNet: fast must be True or False, got {fast!r}")
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
        self.fast = bool(fast)
        t = fast_tier if self.fast else _PLAIN                        # the tier the layers come from

        stages = OrderedDict()
        if stem == "imagenet":
            stages["conv0"] = t.Conv2d(in_channels, num_init_features, 7, stride=2, padding=3, bias=False,
                                       dtype=dt, generator=rng)
            stages["norm0"] = t.BatchNorm2d(num_init_features, dtype=dt)
            stages["relu0"] = t.ReLU(inplace=True)
            stages["pool0"] = t.MaxPool2d(3, stride=2, padding=1)
        else:
            stages["conv0"] = t.Conv2d(in_channels, num_init_features, 3, padding=1, bias=False, dtype=dt,
                                       generator=rng)
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            if self.fast:
                block = fast_densenet.DenseBlock(num_layers, num_features, growth_rate, bn_size, drop_rate, dt, rng,
                                                 memory_efficient)
            else:
                block = DenseBlock(num_layers, num_features, growth_rate, bn_size, drop_rate, dt, rng)
            stages[f"denseblock{i + 1}"] = block
            num_features = block.num_output_features
            if i != len(block_config) - 1:
                out_features = int(math.floor(compression * num_features + 1e-9))   # 0.29 * 100 -> 29
                if out_features < 1:
                    raise ValueError(f"DenseNet: compression {compression} leaves transition {i + 1} with "
                                     f"floor({compression} * {num_features}) = 0 channels")
                stages[f"transition{i + 1}"] = t.Transition(num_features, out_features, dt, rng)
                num_features = out_features
        stages["norm5"] = t.BatchNorm2d(num_features, dtype=dt)
        self.features = t.Sequential(stages)
        self.relu = t.ReLU(inplace=True)
        self.pool = t.AdaptiveAvgPool2d(1)
        self.classifier = t.Linear(num_features, num_classes, dtype=dt, generator=rng)
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
        """x: (N, C, H, W) float -> logits (N, num_classes)."""
        x = check_input(self, x, 4, "(N, C, H, W)", self.dtype)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"DenseNet: input has {x.shape[1]} channels, expected in_channels={self.in_channels} "
                             f"(input shape {x.shape})")
        if self.fast:
            return fast_densenet.forward(self, x)
        h = self.features(x)                                     # (N, C, h, w)
        h = self.pool(self.relu(h))                              # (N, C, 1, 1)
        self._cache = saved(h.shape)
        return self.classifier(h.reshape(h.shape[:2]))           # (N, num_classes)

    def backward(self, dlogits):
        """dlogits: (N, num_classes) -> dx (N, C, H, W); adds into every parameter's .grad."""
        if self.fast:
            return fast_densenet.backward(self, dlogits)
        shape = take_cache(self)
        dh = self.classifier.backward(dlogits).reshape(shape)    # (N, C, 1, 1)
        return self.features.backward(self.relu.backward(self.pool.backward(dh)))

    def inference_pieces(self, N):
        """The fast tier's split of a batch of N images for inference, or None for one batch forward (always
        None in the plain tier); see :func:`numpy_densenet.fast.densenet.inference_pieces`."""
        return fast_densenet.inference_pieces(self, N) if self.fast else None

    def forward_stages(self, x):
        """Run forward one stage at a time, for inspection (summary tables, locating a NaN).

        Parameters
        ----------
        x : ndarray, shape (N, C, H, W)

        Yields
        ------
        (name, module, output) : output is (N, C, H, W) for the stem layers, every dense layer (its block's
            feature maps up to and including its new channels), transitions and norm5, then (N, K) logits for
            ``"classifier"``. It does not prepare a backward pass (run ``model(x)`` for that); the per-layer
            outputs are the same as a normal forward's.
        """
        h = check_input(self, x, 4, "(N, C, H, W)", self.dtype)
        if self.fast:
            yield from fast_densenet.forward_stages(self, h)
            return
        for name, stage in self.features.named_children():
            if isinstance(stage, DenseBlock):
                features = [h]
                for i, layer in enumerate(stage.layers()):
                    features.append(layer(*features))
                    yield f"features.{name}.denselayer{i + 1}", layer, np.concatenate(features, axis=1)
                h = np.concatenate(features, axis=1)
            else:
                h = stage(h)
                yield f"features.{name}", stage, h
        pooled = self.pool(self.relu(h))
        yield "classifier", self.classifier, self.classifier(pooled.reshape(pooled.shape[:2]))

    def load_state_dict(self, state_dict, strict=True):
        """torchvision-compatible loading: old ``norm.1``-style keys are renamed first."""
        return super().load_state_dict(rename_old_keys(state_dict), strict=strict)

    def extra_repr(self):
        c = self.config
        return (f"growth_rate={c['growth_rate']}, block_config={c['block_config']}, "
                f"num_init_features={c['num_init_features']}, bn_size={c['bn_size']}, stem={c['stem']!r}, "
                f"fast={self.fast}")


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
