"""DenseNet (Huang et al., CVPR 2017), compatible with torchvision.models.densenet: the plain tier.

Four small pieces, as in torchvision: the dense layer, the dense block, the transition, and the network.
Everything here is NCHW and built from the plain layers of :mod:`numpy_densenet.nn`; this module imports
nothing else of the package. It is the specification the fast tier (:mod:`numpy_densenet.fast`) subclasses.

A dense layer's input is the concatenation of every feature map before it, x_l = H_l([x_0, ..., x_(l-1)]),
so each feature map has many consumers: every later layer of its block, and whatever follows the block.
Forward concatenates (:class:`~numpy_densenet.nn.Concat`); backward *splits* the gradient of each
concatenation at its channel offsets, and a feature map's gradient is the *sum* of the slices its consumers
send back (``DenseBlock.backward`` below)::

    forward:   x_3 = H_3( concat[x_0, x_1, x_2] )
    backward:  (d_0, d_1, d_2) = split( dH_3/d input )      at the offsets [0, k0, k0 + k, k0 + 2k]
               grad[x_0] += d_0,  grad[x_1] += d_1,  grad[x_2] += d_2

The named models (``densenet121``, ``densenet_bc``, ...) and ``DenseNet(..., fast=True)``, which builds the
same network from the fast tier, live in :mod:`numpy_densenet.zoo`.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict

import numpy as np

from . import nn
from .nn import AvgPool2d, BatchNorm2d, Concat, Conv2d, Dropout, ReLU, Sequential
from .nn.checks import check_input, positive_int, take_cache
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

    def backward(self, dout):
        """dout: (N, k, H, W), the gradient of the new features -> (dx_0, ..., dx_(l-1)), one per input."""
        d = self.dropout.backward(dout) if self.drop_rate > 0 else dout
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
    """

    DenseLayer = DenseLayer                 # the layer class (the fast tier's block builds its own)

    def __init__(self, num_layers, num_input_features, growth_rate, bn_size=4, drop_rate=0.0, dtype=np.float32,
                 rng=None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        self.num_layers, self.num_input_features, self.growth_rate = num_layers, num_input_features, growth_rate
        for i in range(num_layers):
            layer = self.DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate, dtype,
                                    rng)
            setattr(self, f"denselayer{i + 1}", layer)
        self.concat = Concat()
        self.offsets = [0] + [num_input_features + i * growth_rate for i in range(num_layers + 1)]

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
        layers = self.layers()
        for l in reversed(range(self.num_layers)):                   # layer l+1 made x_(l+1)
            # grads[l+1] is complete: the block output and every later layer have added their shares.
            received = layers[l].backward(grads[l + 1])              # (dx0, ..., dx_l): the split of its input
            for i, g in enumerate(received):
                grads[i] = grads[i] + g                              # x_i's gradient: sum over its consumers
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

    This class is the plain tier: NCHW, :class:`~numpy_densenet.nn.Concat` forward and a split backward,
    every activation kept; slow and memory-hungry but written to be read. The fast tier's
    :class:`numpy_densenet.fast.DenseNet` subclasses it, swapping the layer classes below for its own; both
    have the same initialisation (for the same seed), the same ``state_dict`` keys and the same results to
    rounding. :func:`numpy_densenet.DenseNet` builds either (``fast=True`` by default).

    Shapes
    ------
    x : (N, in_channels, H, W) -> logits : (N, num_classes).
    """

    # The layer classes the network is built from; the fast tier's DenseNet swaps in its own.
    Conv2d, BatchNorm2d, ReLU, MaxPool2d = nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d
    AdaptiveAvgPool2d, Linear, Sequential = nn.AdaptiveAvgPool2d, nn.Linear, nn.Sequential
    DenseBlock, Transition = DenseBlock, Transition
    fast = False

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4,
                 drop_rate=0.0, num_classes=1000, compression=0.5, stem="imagenet", in_channels=3,
                 dtype=np.float32, seed=None):
        super().__init__()
        self.config = check_config(growth_rate, block_config, num_init_features, bn_size, drop_rate, num_classes,
                                   compression, stem, in_channels)
        self.in_channels = self.config["in_channels"]
        dt = check_float_dtype(dtype)
        rng = np.random.default_rng(seed)
        stages = self.stem(stem, in_channels, num_init_features, dt, rng)
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = self.DenseBlock(num_layers, num_features, growth_rate, bn_size, drop_rate, dt, rng)
            stages[f"denseblock{i + 1}"] = block
            num_features = block.num_output_features
            if i != len(block_config) - 1:
                out_features = transition_width(compression, num_features, i + 1)
                stages[f"transition{i + 1}"] = self.Transition(num_features, out_features, dt, rng)
                num_features = out_features
        stages["norm5"] = self.BatchNorm2d(num_features, dtype=dt)
        self.features = self.Sequential(stages)
        self.relu = self.ReLU(inplace=True)
        self.pool = self.AdaptiveAvgPool2d(1)
        self.classifier = self.Linear(num_features, num_classes, dtype=dt, generator=rng)
        self.num_features = num_features
        for m in self.modules():                                 # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                _kaiming_normal_(m, rng)
        self.classifier.bias.data[...] = 0
        self._cache = None

    def stem(self, stem, in_channels, num_init_features, dtype, rng):
        """The first stages, by name: conv0 (and norm0, relu0, pool0 for the ImageNet stem)."""
        stages = OrderedDict()
        if stem == "imagenet":
            stages["conv0"] = self.Conv2d(in_channels, num_init_features, 7, stride=2, padding=3, bias=False,
                                          dtype=dtype, generator=rng)
            stages["norm0"] = self.BatchNorm2d(num_init_features, dtype=dtype)
            stages["relu0"] = self.ReLU(inplace=True)
            stages["pool0"] = self.MaxPool2d(3, stride=2, padding=1)
        else:
            stages["conv0"] = self.Conv2d(in_channels, num_init_features, 3, padding=1, bias=False, dtype=dtype,
                                          generator=rng)
        return stages

    @property
    def dtype(self):
        return self.classifier.weight.dtype

    def blocks(self):
        """The dense blocks, in order."""
        return [m for name, m in self.features.named_children() if name.startswith("denseblock")]

    def forward(self, x):
        """x: (N, C, H, W) float, N >= 1 -> logits (N, num_classes)."""
        x = self.checked(x)
        if x.shape[0] == 0:
            raise ValueError(f"DenseNet: the batch holds no images (input shape {x.shape}); give at least one")
        h = self.features(x)                                     # (N, C, h, w)
        h = self.pool(self.relu(h))                              # (N, C, 1, 1)
        self._cache = saved(h.shape)
        return self.classifier(h.reshape(h.shape[:2]))           # (N, num_classes)

    def backward(self, dout):
        """dout: (N, num_classes), the gradient of the logits -> dx (N, C, H, W); adds into every .grad."""
        shape = take_cache(self)
        dh = self.classifier.backward(dout).reshape(shape)       # (N, C, 1, 1)
        return self.features.backward(self.relu.backward(self.pool.backward(dh)))

    def inference_pieces(self, N):
        """How a batch of N images is split for inference: None, one batch forward (the fast tier splits it
        between its threads)."""
        return None

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
        h = self.checked(x)
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
        if hasattr(state_dict, "items"):                # anything else: Module's TypeError
            state_dict = rename_old_keys(state_dict)
        return super().load_state_dict(state_dict, strict=strict)

    def checked(self, x):
        """``x`` checked: (N, in_channels, H, W) in the model's dtype."""
        x = check_input(self, x, 4, "(N, C, H, W)", self.dtype)
        if x.shape[1] != self.in_channels:
            raise ValueError(f"DenseNet: input has {x.shape[1]} channels, expected in_channels={self.in_channels} "
                             f"(input shape {x.shape})")
        return x

    def extra_repr(self):
        c = self.config
        return (f"growth_rate={c['growth_rate']}, block_config={c['block_config']}, "
                f"num_init_features={c['num_init_features']}, bn_size={c['bn_size']}, stem={c['stem']!r}, "
                f"fast={self.fast}")


def check_config(growth_rate, block_config, num_init_features, bn_size, drop_rate, num_classes, compression, stem,
                 in_channels):
    """The architecture's arguments checked, as the dict ``DenseNet.config`` (a ValueError naming the bad one)."""
    for arg, v in (("growth_rate", growth_rate), ("num_init_features", num_init_features),
                   ("num_classes", num_classes), ("in_channels", in_channels)):
        positive_int(v, f"DenseNet: {arg}")
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
    return dict(growth_rate=int(growth_rate), block_config=tuple(int(n) for n in block_config),
                num_init_features=int(num_init_features), bn_size=bn_size, drop_rate=float(drop_rate),
                num_classes=int(num_classes), compression=float(compression), stem=stem, in_channels=int(in_channels))


def transition_width(compression, num_features, index):
    """floor(theta * C): the channels out of transition ``index`` (a ValueError if none are left)."""
    out_features = int(math.floor(compression * num_features + 1e-9))       # 0.29 * 100 -> 29
    if out_features < 1:
        raise ValueError(f"DenseNet: compression {compression} leaves transition {index} with "
                         f"floor({compression} * {num_features}) = 0 channels")
    return out_features
