"""The cases ``numpy-densenet gradcheck`` checks: every layer type of both tiers, and tiny DenseNets."""
from __future__ import annotations

from .. import fast, nn
from ..zoo import DenseNet


def layer_cases(rng):
    """(label, module, input) for every layer type at a few small default shapes, the plain tier's and a few of
    the fast tier's (``numpy-densenet gradcheck`` checks these)."""
    x = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    return [
        ("Conv2d 3x3 pad 1", nn.Conv2d(3, 4, 3, padding=1, generator=rng), x(2, 3, 5, 5)),
        ("fast Conv2d 3x3 pad 1, 6 -> 3 (the shift algorithm, flat shifts)",
         fast.Conv2d(6, 3, 3, padding=1, generator=rng), x(2, 6, 5, 4)),
        ("fast Conv2d 1x1 (one GEMM on the channel-major input)", fast.Conv2d(5, 3, 1, generator=rng),
         x(2, 5, 4, 3)),
        ("Conv2d 1x1 (pointwise GEMM)", nn.Conv2d(5, 3, 1, bias=False, generator=rng), x(2, 5, 4, 3)),
        ("Conv2d 7x7 stride 2 pad 3", nn.Conv2d(2, 3, 7, stride=2, padding=3, generator=rng), x(2, 2, 9, 8)),
        ("Conv2d (2,3) stride (1,2) dilation 2", nn.Conv2d(2, 3, (2, 3), stride=(1, 2), padding=(1, 2),
                                                           dilation=2, generator=rng), x(2, 2, 6, 7)),
        ("BatchNorm2d (train)", nn.BatchNorm2d(3), x(4, 3, 3, 3)),
        ("BatchNorm2d (eval)", with_stats(nn.BatchNorm2d(3), rng).eval(), x(4, 3, 3, 3)),
        ("BatchNormReLU2d (train; a dense layer's BN -> ReLU)", fast.BatchNormReLU2d(3), x(4, 3, 3, 3)),
        ("ReLU", nn.ReLU(), x(2, 3, 4, 4)),
        ("MaxPool2d 3 stride 2 pad 1", nn.MaxPool2d(3, stride=2, padding=1), x(2, 3, 7, 6)),
        ("AvgPool2d 2 stride 2", nn.AvgPool2d(2), x(2, 3, 6, 5)),
        ("AvgPool2d 3 pad 1 count_include_pad=False", nn.AvgPool2d(3, 2, 1, count_include_pad=False),
         x(2, 2, 6, 7)),
        ("AdaptiveAvgPool2d(1)", nn.AdaptiveAvgPool2d(1), x(2, 3, 5, 4)),
        ("AdaptiveAvgPool2d((2, 3))", nn.AdaptiveAvgPool2d((2, 3)), x(2, 2, 5, 7)),
        ("Concat (3 inputs)", nn.Concat(), (x(2, 2, 3, 3), x(2, 1, 3, 3), x(2, 3, 3, 3))),
        ("Linear", nn.Linear(6, 4, generator=rng), x(3, 6)),
        ("Dropout(0.3), mask held fixed", nn.Dropout(0.3, seed=0), x(3, 7)),
        ("Flatten", nn.Flatten(), x(2, 3, 2, 2)),
        ("CrossEntropyLoss (label smoothing 0.1)", nn.CrossEntropyLoss(label_smoothing=0.1),
         (x(5, 4), rng.integers(0, 4, 5))),
    ]


def with_stats(bn, rng):
    bn.running_mean[...] = rng.standard_normal(bn.num_features)
    bn.running_var[...] = rng.uniform(0.5, 2.0, bn.num_features)
    return bn


def model_cases(rng):
    """(label, model, input) for tiny DenseNets: both tiers, both stems, plain and -BC, compression, dropout
    (``numpy-densenet gradcheck --model`` checks these)."""
    return [
        ("DenseNet-BC, CIFAR stem, compression 0.5",
         DenseNet(4, (2, 2), 8, bn_size=2, num_classes=5, stem="cifar", seed=1), rng.standard_normal((3, 3, 8, 8))),
        ("DenseNet plain, CIFAR stem, no compression",
         DenseNet(3, (2, 2), 6, bn_size=None, num_classes=4, compression=1.0, stem="cifar", seed=2),
         rng.standard_normal((2, 3, 6, 6))),
        ("DenseNet-BC, ImageNet stem, 45x51-like odd input",
         DenseNet(4, (2, 1), 6, bn_size=2, num_classes=3, stem="imagenet", seed=3), rng.standard_normal((2, 3, 17, 19))),
        ("DenseNet-BC, every BN-ReLU output stored (memory_efficient=False)",
         DenseNet(4, (2, 2), 8, bn_size=2, num_classes=5, stem="cifar", seed=5, memory_efficient=False),
         rng.standard_normal((3, 3, 8, 8))),
        ("DenseNet-BC, the plain tier (Concat forward, split backward), ImageNet stem",
         DenseNet(4, (2, 1), 6, bn_size=2, num_classes=3, stem="imagenet", seed=6, fast=False),
         rng.standard_normal((2, 3, 13, 11))),
        ("DenseNet-BC with dropout 0.2 (mask held fixed), grey input",
         DenseNet(4, (2, 2), 6, bn_size=2, drop_rate=0.2, num_classes=3, stem="cifar", in_channels=1, seed=4),
         rng.standard_normal((3, 1, 6, 6))),
    ]
