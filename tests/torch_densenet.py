"""A torch.nn DenseNet replicating torchvision.models.densenet, for parity tests (no tests in this module).

torchvision is not installed here, so this module re-creates its DenseNet from torch.nn, keeping the exact
module structure, order, state_dict names and forward computation of ``torchvision.models.densenet``:

* ``_DenseLayer``: norm1, relu1, conv1 (1x1 to bn_size*k), norm2, relu2, conv2 (3x3 pad 1 to k), then
  ``F.dropout(p=drop_rate, training=self.training)`` when drop_rate > 0; it takes the *list* of previous
  feature maps and concatenates them itself (``bn_function``), returning only the k new channels;
  ``memory_efficient=True`` runs concat -> norm1 -> relu1 -> conv1 under ``torch.utils.checkpoint``;
* ``_DenseBlock(nn.ModuleDict)``: layers ``denselayer1..L``, forward concatenates all features;
* ``_Transition(nn.Sequential)``: norm, relu, conv (1x1), pool (AvgPool2d(2, 2));
* ``DenseNet``: ``features`` (conv0/norm0/relu0/pool0, denseblock{i}, transition{i}, norm5) and
  ``classifier``; forward = features -> relu -> adaptive_avg_pool2d(1) -> flatten -> classifier.

Extended with numpy_densenet's options (defaults give torchvision's model):

* ``stem="cifar"``: only ``conv0`` = 3x3 conv, stride 1, padding 1 (no norm0/relu0/pool0);
* ``bn_size=None``: plain layers norm1/relu1/conv1 with conv1 a 3x3 conv (padding 1) to k channels;
* ``compression``: a transition outputs floor(compression * C) channels (torchvision: C // 2);
* ``in_channels``: image channels of conv0.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp


class _DenseLayer(nn.Module):
    def __init__(self, num_input_features, growth_rate, bn_size, drop_rate, memory_efficient=False):
        super().__init__()
        self.bottleneck = bn_size is not None
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        if self.bottleneck:
            self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)
            self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1,
                                   bias=False)
        else:
            self.conv1 = nn.Conv2d(num_input_features, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def bn_function(self, inputs):
        concated_features = torch.cat(inputs, 1)
        return self.conv1(self.relu1(self.norm1(concated_features)))

    def any_requires_grad(self, input):
        return any(tensor.requires_grad for tensor in input)

    def call_checkpoint_bottleneck(self, input):
        def closure(*inputs):
            return self.bn_function(inputs)

        return cp.checkpoint(closure, *input, use_reentrant=False)

    def forward(self, input):
        prev_features = [input] if isinstance(input, torch.Tensor) else input
        if self.memory_efficient and self.any_requires_grad(prev_features):
            new_features = self.call_checkpoint_bottleneck(prev_features)
        else:
            new_features = self.bn_function(prev_features)
        if self.bottleneck:
            new_features = self.conv2(self.relu2(self.norm2(new_features)))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class _DenseBlock(nn.ModuleDict):
    _version = 2

    def __init__(self, num_layers, num_input_features, bn_size, growth_rate, drop_rate, memory_efficient=False):
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate=growth_rate, bn_size=bn_size,
                                drop_rate=drop_rate, memory_efficient=memory_efficient)
            self.add_module("denselayer%d" % (i + 1), layer)

    def forward(self, init_features):
        features = [init_features]
        for name, layer in self.items():
            new_features = layer(features)
            features.append(new_features)
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """torchvision's DenseNet (defaults = densenet121) plus stem / plain-layer / compression / in_channels."""

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4,
                 drop_rate=0.0, num_classes=1000, memory_efficient=False, compression=0.5, stem="imagenet",
                 in_channels=3):
        super().__init__()
        if stem == "imagenet":
            self.features = nn.Sequential(OrderedDict([
                ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
                ("norm0", nn.BatchNorm2d(num_init_features)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
            ]))
        elif stem == "cifar":
            self.features = nn.Sequential(OrderedDict([
                ("conv0", nn.Conv2d(in_channels, num_init_features, kernel_size=3, stride=1, padding=1, bias=False)),
            ]))
        else:
            raise ValueError(f"unknown stem {stem!r}")

        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(num_layers=num_layers, num_input_features=num_features, bn_size=bn_size,
                                growth_rate=growth_rate, drop_rate=drop_rate, memory_efficient=memory_efficient)
            self.features.add_module("denseblock%d" % (i + 1), block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                out_features = int(math.floor(compression * num_features))
                trans = _Transition(num_input_features=num_features, num_output_features=out_features)
                self.features.add_module("transition%d" % (i + 1), trans)
                num_features = out_features

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
        out = self.classifier(out)
        return out


def from_numpy_model(np_model, **overrides):
    """A torch DenseNet with the numpy model's config, dtype and exact state (parameters and buffers)."""
    cfg = dict(np_model.config)
    cfg.update(overrides)
    model = DenseNet(**cfg)
    model = model.double() if np_model.dtype == np.float64 else model.float()
    copy_numpy_to_torch(np_model, model)
    model.train(np_model.training)
    return model


def copy_numpy_to_torch(np_model, torch_model):
    """Load the numpy model's state_dict into the torch model (strict: every key must match)."""
    ref = torch_model.state_dict()
    state = OrderedDict()
    for key, value in np_model.state_dict().items():
        state[key] = torch.from_numpy(np.array(value)).to(ref[key].dtype) if key in ref else torch.from_numpy(
            np.array(value))
    torch_model.load_state_dict(state, strict=True)


def torch_state_as_numpy(torch_model):
    """The torch model's state_dict as name -> numpy array (num_batches_tracked stays int64)."""
    return OrderedDict((k, v.detach().cpu().numpy().copy()) for k, v in torch_model.state_dict().items())


def copy_torch_to_numpy(torch_model, np_model):
    """Load the torch model's state_dict into the numpy model (strict)."""
    np_model.load_state_dict(torch_state_as_numpy(torch_model), strict=True)
