"""The cases ``numpy-densenet gradcheck`` checks: every layer of both tiers over its options, and tiny DenseNets.

Each layer's options (stride, padding, dilation, train or eval, dropout, reduction, ...) and each path of the
fast tier (the convolution's algorithms, ties in max pooling, ...) are listed once, in the tables below; the
cases are the rows of a small covering design over them (:func:`pairwise`): every value of every option meets
every value of every other option in some case. An option added to a table gets its cases.

Sizes reach the paths that only exist for large inputs (:func:`large_cases`): several chunks of images in the
fast convolution, several blocks of channels in BatchNorm and max pooling, element-wise passes split between
threads and longer than the fast ReLU's block of zeros. Those run in directional mode, on two threads.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from .. import fast, model, nn
from ..fast.threads import get_num_threads, set_num_threads
from ..zoo import DenseNet
from .engine import gradcheck

__all__ = ["Case", "pairwise", "layer_cases", "model_cases", "large_cases", "run_case"]


class Case(NamedTuple):
    """One check: ``gradcheck(module, x, **options)``, on ``threads`` threads if given; ``row`` holds the
    option values the case was built from."""
    label: str
    module: object
    x: object
    options: dict
    threads: int = None
    row: dict = None


def pairwise(options, valid=None):
    """The rows of a small covering design: a list of dicts {option: value} such that every pair of values of
    two options (and every single value) that some valid row holds appears in a chosen row.

    Parameters
    ----------
    options : dict
        {name: tuple of values}.
    valid : callable, optional
        ``valid(row) -> bool``: the combinations that make sense (a pointwise convolution has a 1x1 kernel).

    Greedy (as AETG): each step takes the first valid row of the full product that covers the most pairs not yet
    covered, so the design is deterministic.
    """
    names = list(options)
    rows = [dict(zip(names, values)) for values in itertools.product(*options.values())]
    rows = [r for r in rows if valid is None or valid(r)]

    def pairs(row):
        singles = {((a, row[a]),) for a in names}
        return singles | {((a, row[a]), (b, row[b])) for a, b in itertools.combinations(names, 2)}

    covers = [pairs(r) for r in rows]
    uncovered = set().union(*covers) if covers else set()
    chosen = []
    while uncovered:
        best = max(range(len(rows)), key=lambda i: len(covers[i] & uncovered))
        chosen.append(rows[best])
        uncovered -= covers[best]
    return chosen


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)


def _tier(tier):
    return nn if tier == "plain" else fast


def _label(name, row):
    return name + " " + ", ".join(f"{k}={v}" for k, v in row.items())


# -- the layers' tables: options, which combinations are valid, and how a row becomes (module, input) ----------
def _same_size(kernel, padding, dilation):
    """Whether a stride-1 convolution keeps its input's size: padding = dilation * (kernel - 1) / 2, both axes."""
    return all(2 * p == d * (k - 1) for k, p, d in zip(_pair(kernel), _pair(padding), _pair(dilation)))


def _conv_valid(row):
    """The fast Conv2d's algorithm follows from the geometry; ``path`` names the one the row takes."""
    pointwise = _pair(row["kernel"]) == (1, 1) and row["stride"] == 1 and row["padding"] == 0
    if row["path"] == "pointwise" or pointwise:
        return row["path"] == "pointwise" and pointwise
    if row["path"].startswith("shift"):
        return row["stride"] == 1 and _same_size(row["kernel"], row["padding"], row["dilation"]) == (
            row["path"] == "shift-flat")
    return True                     # im2col: strided, or (stride 1) more output than input channels


def _conv(rng, tier, path, kernel, stride, padding, dilation, bias):
    C, O = {"pointwise": (3, 2), "shift-flat": (4, 2), "shift": (4, 2), "im2col": (2, 3)}[path]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(_pair, (kernel, stride, padding, dilation))
    H = max(1, dh * (kh - 1) + 1 - 2 * ph) + sh                   # two output rows, three columns
    W = max(1, dw * (kw - 1) + 1 - 2 * pw) + 2 * sw
    layer = _tier(tier).Conv2d(C, O, kernel, stride, padding, dilation, bias=bias, generator=rng)
    return layer, rng.standard_normal((2, C, H, W))


def _pool_valid(row):
    return all(p <= k // 2 for p, k in zip(_pair(row["padding"]), _pair(row["kernel"])))


def _pool_input(rng, kernel, stride, padding, ties):
    (kh, kw), (sh, sw), (ph, pw) = map(_pair, (kernel, stride, padding))
    x = rng.standard_normal((2, 2, kh - 2 * ph + sh, kw - 2 * pw + 2 * sw))
    return np.maximum(np.round(x), 0.0) if ties else x      # ties: small integers, whole windows of zeros


def _maxpool(rng, tier, kernel, stride, padding, ties):
    layer = _tier(tier).MaxPool2d(kernel, stride, padding)
    return layer, _pool_input(rng, kernel, stride, padding, ties), {"tie_convention": "first"} if ties else {}


def _avgpool(rng, tier, kernel, stride, padding, count_include_pad):
    layer = _tier(tier).AvgPool2d(kernel, stride, padding, count_include_pad=count_include_pad)
    return layer, _pool_input(rng, kernel, stride, padding, False)


def _adaptive(rng, tier, output_size, input_size):
    return _tier(tier).AdaptiveAvgPool2d(output_size), rng.standard_normal((2, 2) + input_size)


def _batchnorm(rng, tier, relu, train, inputs):
    bn = (fast.BatchNormReLU2d if relu else fast.BatchNorm2d)(3) if tier == "fast" else nn.BatchNorm2d(3)
    bn.weight.data[...] = rng.uniform(0.5, 1.5, 3)
    bn.bias.data[...] = rng.standard_normal(3)
    bn.running_mean[...] = rng.standard_normal(3)
    bn.running_var[...] = rng.uniform(0.5, 2.0, 3)
    layer = nn.Sequential(bn, nn.ReLU()) if relu and tier == "plain" else bn     # the fused layer's spec
    if inputs == "1e4 + N(0, 1)":
        # The fast tier's float32 must keep the deviations' precision (its statistics keep the mean's rounding
        # correction). The plain tier is the textbook: its float32 mean is off by up to half a unit in its last
        # place (5e-4 at 1e4), which xhat = (x - mean) / std carries into every value, and its float32 row
        # rightly says so; it is checked there in float64 only.
        return layer.train(train), 1e4 + rng.standard_normal((4, 3, 3, 3)), {"float32": tier == "fast"}
    return layer.train(train), 2 * rng.standard_normal((4, 3, 3, 3)) + 1


def _relu(rng, tier, inplace):
    return _tier(tier).ReLU(inplace=inplace), rng.standard_normal((2, 3, 4, 4))


def _linear(rng, tier, bias):
    return _tier(tier).Linear(6, 4, bias=bias, generator=rng), rng.standard_normal((3, 6))


def _dropout(rng, p, train):
    return nn.Dropout(p, seed=int(rng.integers(1000))).train(train), rng.standard_normal((3, 7))


def _flatten(rng, start_dim):
    return nn.Flatten(start_dim), rng.standard_normal((2, 3, 2, 2))


def _concat(rng, inputs):
    return nn.Concat(), tuple(rng.standard_normal((2, c, 3, 3)) for c in (2, 1, 3)[:inputs])


def _cross_entropy(rng, reduction, label_smoothing):
    loss = nn.CrossEntropyLoss(label_smoothing=label_smoothing, reduction=reduction)
    return loss, (2 * rng.standard_normal((5, 4)), rng.integers(0, 4, 5))


def _sequential(rng, tier):
    if tier == "plain":
        layer = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, generator=rng), nn.BatchNorm2d(3), nn.ReLU(),
                              nn.AvgPool2d(2))
    else:
        layer = fast.Sequential(fast.Conv2d(2, 3, 3, padding=1, generator=rng), fast.BatchNormReLU2d(3),
                                fast.MaxPool2d(2))
    return layer, rng.standard_normal((2, 2, 4, 4))


TIERS = ("plain", "fast")
POOL = dict(tier=TIERS, kernel=(2, 3, (2, 3)), stride=(1, 2, (1, 2)), padding=(0, 1, (1, 0)))

#: name -> (options, valid, build(rng, **row) -> (module, x) or (module, x, gradcheck options))
LAYERS = {
    "Conv2d": (dict(tier=TIERS, path=("pointwise", "shift-flat", "shift", "im2col"), kernel=(1, 3, (2, 3)),
                    stride=(1, 2, (2, 1)), padding=(0, 1, (1, 2)), dilation=(1, 2, (2, 1)), bias=(True, False)),
               _conv_valid, _conv),
    "BatchNorm2d": (dict(tier=TIERS, relu=(False, True), train=(True, False), inputs=("N(1, 4)", "1e4 + N(0, 1)")),
                    lambda row: row["train"] or row["inputs"] == "N(1, 4)", _batchnorm),
    "ReLU": (dict(tier=TIERS, inplace=(False, True)), None, _relu),
    "MaxPool2d": (dict(POOL, ties=(False, True)), _pool_valid, _maxpool),
    "AvgPool2d": (dict(POOL, count_include_pad=(True, False)), _pool_valid, _avgpool),
    "AdaptiveAvgPool2d": (dict(tier=TIERS, output_size=(1, (2, 3), (4, 5)), input_size=((4, 6), (5, 7), (3, 4))),
                          None, _adaptive),
    "Linear": (dict(tier=TIERS, bias=(True, False)), None, _linear),
    "Dropout": (dict(p=(0.3, 0.0, 1.0), train=(True, False)), None, _dropout),
    "Flatten": (dict(start_dim=(1, 2)), None, _flatten),
    "Concat": (dict(inputs=(1, 3)), None, _concat),
    "CrossEntropyLoss": (dict(reduction=("mean", "sum"), label_smoothing=(0.0, 0.1)), None, _cross_entropy),
    "Sequential": (dict(tier=TIERS), None, _sequential),
}


# -- the DenseNet's pieces and whole tiny DenseNets ------------------------------------------------------------
def _dense_layer(rng, tier, bn_size, drop_rate, train, memory_efficient):
    seed = int(rng.integers(1000))
    if tier == "plain":                    # its input: the feature maps it concatenates, split again in backward
        layer = model.DenseLayer(5, 2, bn_size, drop_rate, rng=np.random.default_rng(seed))
        x = (rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 2, 4, 4)))
    else:
        layer = fast.DenseLayer(5, 2, bn_size, drop_rate, rng=np.random.default_rng(seed),
                                memory_efficient=memory_efficient)
        x = rng.standard_normal((2, 5, 4, 4))
    return layer.train(train), x


def _dense_block(rng, tier, bn_size, drop_rate, train, memory_efficient):
    kwargs = {} if tier == "plain" else {"memory_efficient": memory_efficient}
    seed = int(rng.integers(1000))
    block = _tier_model(tier).DenseBlock(2, 3, 2, bn_size, drop_rate, rng=np.random.default_rng(seed), **kwargs)
    return block.train(train), rng.standard_normal((2, 3, 4, 4))


def _transition(rng, tier, train):
    layer = _tier_model(tier).Transition(4, 2, rng=np.random.default_rng(int(rng.integers(1000))))
    return layer.train(train), rng.standard_normal((2, 4, 4, 4))


def _densenet(rng, tier, stem, bn_size, compression, drop_rate, train, memory_efficient, in_channels):
    net = DenseNet(4, (2, 2) if stem == "cifar" else (2, 1), 6, bn_size=bn_size, drop_rate=drop_rate,
                   num_classes=3, compression=compression, stem=stem, in_channels=in_channels,
                   seed=int(rng.integers(1000)), fast=tier == "fast", memory_efficient=memory_efficient)
    size = (6, 6) if stem == "cifar" else (13, 11)
    return net.train(train), rng.standard_normal((2, in_channels) + size)


def _tier_model(tier):
    return model if tier == "plain" else fast


def _plain_ignores_memory_efficient(row):
    return row["tier"] == "fast" or row["memory_efficient"]


PIECE = dict(tier=TIERS, bn_size=(2, None), drop_rate=(0.0, 0.2), train=(True, False), memory_efficient=(True, False))

MODELS = {
    "DenseLayer": (PIECE, _plain_ignores_memory_efficient, _dense_layer),
    "DenseBlock": (PIECE, _plain_ignores_memory_efficient, _dense_block),
    "Transition": (dict(tier=TIERS, train=(True, False)), None, _transition),
    "DenseNet": (dict(tier=TIERS, stem=("cifar", "imagenet"), bn_size=(2, None), compression=(0.5, 1.0),
                      drop_rate=(0.0, 0.2), train=(True, False), memory_efficient=(True, False),
                      in_channels=(3, 1)), _plain_ignores_memory_efficient, _densenet),
}


def _cases(table, rng):
    cases = []
    for name, (options, valid, build) in table.items():
        for row in pairwise(options, valid):
            built = build(rng, **row)
            cases.append(Case(_label(name, row), built[0], built[1], built[2] if len(built) > 2 else {}, None, row))
    return cases


# -- sizes that reach the paths of large inputs -----------------------------------------------------------
def large_cases(rng):
    """The fast tier's paths that only exist for large inputs, at sizes chosen to reach them (on two threads,
    directional mode): the convolution's chunks of images (shift, both ways) and its im2col / col2im split
    between the threads (stride 2, padding (1, 2)); several blocks of channels in BatchNorm (train and eval,
    with the fused ReLU, whose forward runs the ReLU in pieces of 65,536 values) and in max pooling; the ReLU's
    element-wise passes split between the threads; Linear's products split between the threads; and a max pool whose
    window has more than 256 offsets (the maximum of every window at its last offset, 271)."""
    x = lambda *shape: rng.standard_normal(shape)  # noqa: E731
    big = (16, 4, 64, 96)                       # 393,216 values: more than one element-wise piece of 2**18
    pool_input = x(1, 2, 16, 21)
    pool_input[:, :, 15, :] = 10.0 + 0.1 * np.arange(21)      # each window's maximum: last row, rightmost column
    cases = [
        ("fast Conv2d 3x3 pad 1, 8 -> 4, shift with flat shifts, 3 chunks of images",
         fast.Conv2d(8, 4, 3, padding=1, generator=rng), x(24, 8, 32, 32)),
        ("fast Conv2d 3x3 pad (1, 0), 8 -> 4, shift, 3 chunks of images",
         fast.Conv2d(8, 4, 3, padding=(1, 0), generator=rng), x(24, 8, 32, 34)),
        ("fast Conv2d 3x3 stride 2 pad (1, 2), im2col / col2im split between threads",
         fast.Conv2d(4, 4, 3, stride=2, padding=(1, 2), generator=rng), x(32, 4, 32, 32)),
        ("fast BatchNorm2d train, 4 blocks of channels", fast.BatchNorm2d(4), x(*big)),
        ("fast BatchNormReLU2d eval, 4 blocks of channels", fast.BatchNormReLU2d(4).eval(), x(*big)),
        ("fast BatchNormReLU2d train, ReLU in pieces of 65,536", fast.BatchNormReLU2d(4), x(*big)),
        ("fast ReLU, element-wise passes split between threads", fast.ReLU(), x(*big)),
        ("fast MaxPool2d 3 stride 2 pad 1, blocks of channels", fast.MaxPool2d(3, 2, 1), x(*big)),
        ("fast Linear 512 -> 128 on 512 rows, products split between threads", fast.Linear(512, 128, generator=rng),
         x(512, 512)),
        ("fast MaxPool2d (16, 17): 272 window offsets", fast.MaxPool2d((16, 17), stride=(1, 2)), pool_input),
        ("MaxPool2d (16, 17): 272 window offsets", nn.MaxPool2d((16, 17), stride=(1, 2)), pool_input),
    ]
    return [Case(label, module, x_, LARGE, 2) for label, module, x_ in cases]


LARGE = {"mode": "directional", "directions": 1}     # a wrong chunk moves many entries: one direction sees it


def layer_cases(rng, thorough=False):
    """The cases of ``numpy-densenet gradcheck``: every layer of both tiers over a covering design of its options
    (:data:`LAYERS`), then :func:`large_cases`. ``thorough`` adds nothing for layers (the same signature as
    :func:`model_cases`).

    Returns
    -------
    list of Case
        (label, module, input, gradcheck options of its own, threads, option values).
    """
    return _cases(LAYERS, rng) + large_cases(rng)


def model_cases(rng, thorough=False):
    """The cases of ``numpy-densenet gradcheck --model``: the DenseNet's pieces on their own (a dense layer, a dense
    block and a transition of both tiers: a backward that changes the gradient it was handed shows only there)
    and whole tiny DenseNets, each over a covering design of its options (:data:`MODELS`). ``thorough`` adds a
    fast dense block large enough for its backward's concatenation adds to be split between two threads."""
    cases = _cases(MODELS, rng)
    if thorough:
        block = fast.DenseBlock(2, 16, 4, 2, rng=np.random.default_rng(int(rng.integers(1000))))
        cases.append(Case("fast DenseBlock 16 + 2 x 4 channels, 24 images 32x32: adds split between threads", block,
                          rng.standard_normal((24, 16, 32, 32)), LARGE, 2))
    return cases


def run_case(case, **options):
    """``gradcheck(case.module, case.x, **options)``, the case's own options taking precedence, on the case's
    number of threads (the previous number restored after)."""
    before = get_num_threads()
    if case.threads is not None and case.threads != before:
        set_num_threads(case.threads)
    try:
        return gradcheck(case.module, case.x, **{**options, **case.options})
    finally:
        if get_num_threads() != before:
            set_num_threads(before)
