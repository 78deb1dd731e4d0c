"""A compact torch.nn DenseNet replicating torchvision.models.densenet, for side-by-side benchmarks only.

torch is never a runtime dependency of numpy_densenet; this file is imported only by the benchmarks.

Same structure, module names (so ``state_dict`` keys), defaults and initialisation as torchvision's
DenseNet, including ``memory_efficient=True``, which wraps the concat -> norm1 -> relu1 -> conv1 part of every
dense layer in ``torch.utils.checkpoint`` (recomputed during backward), as torchvision does. ``stem="cifar"``
gives the paper's CIFAR DenseNet-BC stem (one 3x3 conv to 2k channels, no norm0/pool0), matching
``numpy_densenet.model.densenet_bc``.

    python benchmarks/torch_densenet.py       # checks parameter counts and forward parity against numpy_densenet
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp


class _DenseLayer(nn.Module):
    def __init__(self, num_input_features, growth_rate, bn_size, drop_rate, memory_efficient=False):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def bn_function(self, inputs):
        concated_features = torch.cat(inputs, 1)
        return self.conv1(self.relu1(self.norm1(concated_features)))

    def forward(self, input):
        prev_features = [input] if isinstance(input, torch.Tensor) else input
        if self.memory_efficient and any(t.requires_grad for t in prev_features):
            def closure(*inputs):
                return self.bn_function(list(inputs))
            bottleneck_output = cp.checkpoint(closure, *prev_features, use_reentrant=False)
        else:
            bottleneck_output = self.bn_function(prev_features)
        new_features = self.conv2(self.relu2(self.norm2(bottleneck_output)))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class _DenseBlock(nn.ModuleDict):
    def __init__(self, num_layers, num_input_features, bn_size, growth_rate, drop_rate, memory_efficient=False):
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate,
                                memory_efficient)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features):
        features = [init_features]
        for _, layer in self.items():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """torchvision's DenseNet (growth_rate, block_config, num_init_features, bn_size, drop_rate, num_classes,
    memory_efficient), plus ``compression`` and ``stem`` ("imagenet" or "cifar")."""

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4,
                 drop_rate=0.0, num_classes=1000, memory_efficient=False, compression=0.5, stem="imagenet"):
        super().__init__()
        if stem == "imagenet":
            stages = [("conv0", nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
                      ("norm0", nn.BatchNorm2d(num_init_features)),
                      ("relu0", nn.ReLU(inplace=True)),
                      ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1))]
        else:
            stages = [("conv0", nn.Conv2d(3, num_init_features, kernel_size=3, padding=1, bias=False))]
        self.features = nn.Sequential(OrderedDict(stages))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers, num_features, bn_size, growth_rate, drop_rate, memory_efficient)
            self.features.add_module(f"denseblock{i + 1}", block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                out = int(math.floor(compression * num_features))
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, out))
                num_features = out
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


def densenet121(num_classes=1000, memory_efficient=False):
    return DenseNet(32, (6, 12, 24, 16), 64, num_classes=num_classes, memory_efficient=memory_efficient)


def densenet_bc(depth=100, growth_rate=12, num_classes=10, memory_efficient=False):
    n = (depth - 4) // 6
    return DenseNet(growth_rate, (n, n, n), 2 * growth_rate, bn_size=4, num_classes=num_classes,
                    memory_efficient=memory_efficient, compression=0.5, stem="cifar")


def _check():
    """Parameter counts (facts sheet) and forward/backward parity with numpy_densenet on the same weights."""
    import numpy as np

    from numpy_densenet.model import densenet121 as np_d121
    from numpy_densenet.model import densenet_bc as np_bc

    assert sum(p.numel() for p in densenet_bc(100, 12).parameters()) == 769_162
    assert sum(p.numel() for p in densenet121().parameters()) == 7_978_856
    print("parameter counts: BC-100-12 769,162 and densenet121 7,978,856 (as torchvision): ok")
    for name, np_model, t_model, shape in (
            ("densenet_bc(40,12)", np_bc(40, 12, seed=0, dtype=np.float64), densenet_bc(40, 12), (4, 3, 32, 32)),
            ("densenet121", np_d121(seed=0, dtype=np.float64), densenet121(), (2, 3, 64, 64))):
        # Taken before any training forward: see the README (BatchNorm buffers leave state_dict after one).
        state = {k: torch.from_numpy(np.asarray(v).copy()) for k, v in np_model.state_dict().items()}
        for eff in (False, True):
            t = t_model.double()
            for m in t.modules():
                if isinstance(m, _DenseLayer):
                    m.memory_efficient = eff
            t.load_state_dict(state)
            x = np.random.default_rng(1).standard_normal(shape)
            xt = torch.from_numpy(x).requires_grad_(True)
            yt = t(xt)
            y = np_model.forward(x)
            g = np.random.default_rng(2).standard_normal(y.shape)
            yt.backward(torch.from_numpy(g))
            dx = np_model.backward(g)
            err_y = float(np.abs(yt.detach().numpy() - y).max())
            err_dx = float(np.abs(xt.grad.numpy() - dx).max() / np.abs(dx).max())
            print(f"{name} memory_efficient={eff}: max|y - y_torch| = {err_y:.2e}, "
                  f"max|dx - dx_torch| / max|dx| = {err_dx:.2e}")
            assert err_y < 1e-8 and err_dx < 1e-8


if __name__ == "__main__":
    import os
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    _check()
