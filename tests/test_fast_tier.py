"""The fast tier equals the plain tier: every fast kernel against the plain layer that is its specification.

For each pair, the same parameters and the same input go through both; the output, the input gradient and
every parameter gradient (and BatchNorm's running statistics) must agree to 16 eps sqrt(K) relative to the
arrays' scale (eps the dtype's, K the number of values the computation touches: see :func:`tolerance`), on
hypothesis-drawn geometries, at 1, 2 and 3 threads. The geometries
are drawn so that each of the fast convolution's paths (pointwise GEMM, shift with and without flat shifts,
im2col) is taken, and the path is asserted. Whole DenseNets are compared in both tiers, train and eval.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from numpy_densenet import DenseNet, densenet_bc, fast, model as plain_model, nn, zoo
from numpy_densenet.fast import densenet as fast_densenet
from numpy_densenet.study import record_backward_outputs

FACTOR = 8.0          # as the gradient checker's float32 rows: each result within 8 eps sqrt(K) of the exact one


@pytest.fixture(autouse=True)
def restore_threads():
    before = fast.get_num_threads()
    yield
    fast.set_num_threads(before)


def tolerance(dtype, size):
    """How far the two tiers may differ, relative to 1 + max|expected|: 2 * 8 eps sqrt(K), with eps the dtype's
    precision and K = ``size``, the number of values the computation touches (inputs, output, parameters).

    A sum of K rounded terms is off by about eps sqrt(K) of their magnitude; each tier rounds in its own order
    (threads, blocks, GEMM shapes), so each is within FACTOR eps sqrt(K) of the exact result, as the gradient
    checker's float32 rows allow, and they are within twice that of each other. A constant (1e-5 for float32) is
    either loose for small computations or exceeded by a large drawn one (1.53e-5 for a dense block's
    conv1.weight.grad under the random profile)."""
    return 2 * FACTOR * float(np.finfo(dtype).eps) * math.sqrt(size)


def touched(*arrays):
    """K for :func:`tolerance`: the number of values in ``arrays`` (inputs, outputs, parameters)."""
    return sum(np.size(a) for a in arrays)


def assert_close(actual, expected, dtype, what, size):
    """|actual - expected| <= tolerance(dtype, size) * (1 + max|expected|)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype} / {expected.dtype}"
    tol = tolerance(dtype, size)
    scale = 1.0 + (float(np.abs(expected).max()) if expected.size else 0.0)
    err = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max()) if expected.size else 0.0
    assert err <= tol * scale, f"{what}: max abs difference {err:.3g} > {tol:g} * {scale:.3g}"


def compare(plain_layer, fast_layer, inputs, dtype, rng, grad_of_output=None):
    """Run both layers forward and backward on the same inputs and compare everything."""
    fast_layer.load_state_dict(plain_layer.state_dict())
    y_plain = plain_layer(*inputs)
    y_fast = fast_layer(*inputs)
    size = touched(*inputs, y_plain, *[p.data for p in plain_layer.parameters()])
    assert_close(y_fast, y_plain, dtype, "output", size)
    dy = rng.standard_normal(y_plain.shape).astype(dtype) if grad_of_output is None else grad_of_output
    dy_kept = dy.copy()
    dx_plain = plain_layer.backward(dy)
    dx_fast = fast_layer.backward(dy)
    np.testing.assert_array_equal(dy, dy_kept, err_msg="backward changed its upstream gradient")
    dx_plain = dx_plain if isinstance(dx_plain, tuple) else (dx_plain,)
    dx_fast = dx_fast if isinstance(dx_fast, tuple) else (dx_fast,)
    for i, (a, b) in enumerate(zip(dx_fast, dx_plain)):
        assert_close(a, b, dtype, f"input gradient {i}", size)
    for (name, p), (_, q) in zip(plain_layer.named_parameters(), fast_layer.named_parameters()):
        assert_close(q.grad, p.grad, dtype, f"{name}.grad", size)
    for (name, a), (_, b) in zip(plain_layer.named_buffers(), fast_layer.named_buffers()):
        if np.asarray(a).dtype.kind == "f":
            assert_close(b, a, dtype, name, size)
        else:
            np.testing.assert_array_equal(b, a, err_msg=name)
    return y_plain


def draw_common(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    fast.set_num_threads(data.draw(st.integers(1, 3), label="threads"))
    return rng, np.dtype(dtype)


# -- Conv2d ---------------------------------------------------------------------------------------------------
CONV_PATHS = ["pointwise", "shift-flat", "shift", "im2col"]


def draw_conv(data, path):
    """(in, out, kernel, stride, padding, dilation, H, W) that take the fast Conv2d's ``path``."""
    d = st.integers
    if path == "pointwise":
        C, O, k, s, p, dil = data.draw(d(1, 6)), data.draw(d(1, 6)), (1, 1), (1, 1), (0, 0), (1, 1)
    elif path == "shift-flat":                                 # output as large as the input: p = d(k-1)/2
        k = (data.draw(st.sampled_from([1, 3, 5])), data.draw(st.sampled_from([1, 3, 5])))
        dil = (data.draw(d(1, 2)), data.draw(d(1, 2)))
        C = data.draw(d(2, 7))
        O, s, p = data.draw(d(1, C - 1)), (1, 1), (dil[0] * (k[0] - 1) // 2, dil[1] * (k[1] - 1) // 2)
        if k == (1, 1):
            k = (3, 3)
            p = (dil[0], dil[1])
    elif path == "shift":                                      # stride 1, fewer outputs, any padding
        k = (data.draw(d(1, 3)), data.draw(d(2, 3)))
        C = data.draw(d(2, 7))
        O, s, dil = data.draw(d(1, C - 1)), (1, 1), (1, data.draw(d(1, 2)))
        p = (data.draw(d(0, 2)), 0)
    else:                                                      # strided, or more outputs than inputs
        k = (data.draw(d(1, 4)), data.draw(d(1, 4)))
        s = (data.draw(d(1, 3)), data.draw(d(2, 3)))
        C, O = data.draw(d(1, 4)), data.draw(d(1, 6))
        dil, p = (data.draw(d(1, 2)), 1), (data.draw(d(0, 2)), data.draw(d(0, 2)))
    H = data.draw(d(dil[0] * (k[0] - 1) + 1 - 2 * p[0] if dil[0] * (k[0] - 1) + 1 > 2 * p[0] else 1, 9), label="H")
    W = data.draw(d(dil[1] * (k[1] - 1) + 1 - 2 * p[1] if dil[1] * (k[1] - 1) + 1 > 2 * p[1] else 1, 9), label="W")
    return C, O, k, s, p, dil, max(H, 1), max(W, 1)


@pytest.mark.parametrize("path", CONV_PATHS)
@given(data=st.data())
def test_fast_conv2d_equals_plain_conv2d(path, data):
    rng, dtype = draw_common(data)
    C, O, k, s, p, dil, H, W = draw_conv(data, path)
    N = data.draw(st.integers(1, 4), label="N")
    bias = data.draw(st.booleans(), label="bias")
    plain = nn.Conv2d(C, O, k, stride=s, padding=p, dilation=dil, bias=bias, dtype=dtype, generator=rng)
    quick = fast.Conv2d(C, O, k, stride=s, padding=p, dilation=dil, bias=bias, dtype=dtype, generator=rng)
    assert quick.algorithm == path.split("-")[0]
    if path == "shift-flat":
        assert quick.output_shape(H, W) == (H, W)              # the flat-shift branch
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    compare(plain, quick, (x,), dtype, rng)


def test_fast_conv2d_keep_input_false_equals_plain():
    """The memory-efficient path: forward without caching the input, backward handed it again."""
    rng = np.random.default_rng(0)
    plain = nn.Conv2d(6, 4, 1, bias=False, dtype=np.float64, generator=rng)
    quick = fast.Conv2d(6, 4, 1, bias=False, dtype=np.float64)
    quick.load_state_dict(plain.state_dict())
    x = rng.standard_normal((2, 6, 3, 3))
    dy = rng.standard_normal((2, 4, 3, 3))
    y = quick.forward_cnhw(fast.swap01(x), keep_input=False)
    size = touched(x, dy, plain.weight.data)
    assert_close(fast.swap01(y), plain(x), np.float64, "output", size)
    dx = quick.backward_cnhw(fast.swap01(dy), x=fast.swap01(x))
    assert_close(fast.swap01(dx), plain.backward(dy), np.float64, "input gradient", size)
    assert_close(quick.weight.grad, plain.weight.grad, np.float64, "weight.grad", size)


# -- BatchNorm, ReLU, pooling, Linear ------------------------------------------------------------------------
@given(data=st.data())
def test_fast_batchnorm2d_equals_plain(data):
    rng, dtype = draw_common(data)
    # At least 4 values per channel: with 2, float32's rounding of x - mean is amplified by 1/std without bound
    # (both tiers then differ from float64 by more than 1e-5, each in its own way).
    N, C = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
    H, W = data.draw(st.integers(2, 5)), data.draw(st.integers(2, 5))
    momentum = data.draw(st.sampled_from([0.1, 0.5, None]))
    plain = nn.BatchNorm2d(C, momentum=momentum, dtype=dtype)
    plain.weight.data[...] = rng.uniform(0.5, 2, C)
    plain.bias.data[...] = rng.standard_normal(C)
    plain.running_mean[...] = rng.standard_normal(C)
    plain.running_var[...] = rng.uniform(0.5, 2, C)
    quick = fast.BatchNorm2d(C, momentum=momentum, dtype=dtype)
    if data.draw(st.booleans(), label="eval"):
        plain.eval(), quick.eval()
    x = (rng.standard_normal((N, C, H, W)) * 3 + 1).astype(dtype)
    compare(plain, quick, (x,), dtype, rng)


@given(data=st.data())
def test_fast_batchnormrelu2d_equals_plain_batchnorm_then_relu(data):
    rng, dtype = draw_common(data)
    N, C = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
    H, W = data.draw(st.integers(2, 5)), data.draw(st.integers(2, 5))              # >= 4 values per channel
    plain = nn.Sequential(nn.BatchNorm2d(C, dtype=dtype), nn.ReLU())
    plain[0].bias.data[...] = rng.standard_normal(C)
    quick = fast.BatchNormReLU2d(C, dtype=dtype)
    quick.load_state_dict({k.split(".", 1)[1]: v for k, v in plain.state_dict().items()})
    if data.draw(st.booleans(), label="eval"):
        plain.eval(), quick.eval()
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    size = touched(x, x, *[p.data for p in quick.parameters()])                 # input, output, parameters
    assert_close(quick(x), plain(x), dtype, "output", size)
    dy = rng.standard_normal(x.shape).astype(dtype)
    assert_close(quick.backward(dy), plain.backward(dy), dtype, "input gradient", size)
    assert_close(quick.weight.grad, plain[0].weight.grad, dtype, "weight.grad", size)
    assert_close(quick.bias.grad, plain[0].bias.grad, dtype, "bias.grad", size)
    assert_close(quick.running_var, plain[0].running_var, dtype, "running_var", size)


@given(data=st.data())
def test_fast_relu_equals_plain(data):
    rng, dtype = draw_common(data)
    shape = tuple(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    x = rng.standard_normal(shape).astype(dtype)
    x[rng.random(shape) < 0.2] = 0                              # exact zeros: the gradient there is 0
    compare(nn.ReLU(), fast.ReLU(), (x,), dtype, rng)


@pytest.mark.parametrize("kind", ["MaxPool2d", "AvgPool2d"])
@given(data=st.data())
def test_fast_pooling_equals_plain(kind, data):
    rng, dtype = draw_common(data)
    k = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    s = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    p = (data.draw(st.integers(0, k[0] // 2)), data.draw(st.integers(0, k[1] // 2)))
    H = data.draw(st.integers(max(1, k[0] - 2 * p[0]), 8))
    W = data.draw(st.integers(max(1, k[1] - 2 * p[1]), 8))
    extra = {} if kind == "MaxPool2d" else {"count_include_pad": data.draw(st.booleans())}
    x = rng.standard_normal((data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), H, W)).astype(dtype)
    if kind == "MaxPool2d" and data.draw(st.booleans(), label="ties"):
        x = np.round(x).astype(dtype)                           # ties: both route to the first maximum
    compare(getattr(nn, kind)(k, s, p, **extra), getattr(fast, kind)(k, s, p, **extra), (x,), dtype, rng)


@pytest.mark.parametrize("kernel", [(16, 17), (23, 23)])
def test_fast_maxpool_equals_plain_for_windows_of_more_than_256_offsets(kernel):
    """A window's offset index goes past 255: an argmax kept in 8 bits would send the gradient elsewhere. Every
    window's maximum is put at its last offsets."""
    rng = np.random.default_rng(0)
    kh, kw = kernel
    x = rng.standard_normal((2, 3, kh + 1, kw + 4))
    x[:, :, kh - 1:, :] = 10.0 + 0.1 * np.arange(kw + 4)        # maxima: the last rows, rightmost columns
    compare(nn.MaxPool2d(kernel, stride=(1, 2)), fast.MaxPool2d(kernel, stride=(1, 2)), (x,), np.float64, rng)


@pytest.mark.parametrize("layer", ["fast BatchNorm2d", "fast BatchNormReLU2d"])
@pytest.mark.parametrize("offset", [1e4, -3e3])
def test_float32_batchnorm_far_from_zero_keeps_float32_precision(layer, offset):
    """On offset + N(0, 1), a float32 mean is off by up to half a unit in its last place (5e-4 at 1e4), which
    xhat = (x - mean) / std would carry into every value; the fast tier's statistics and backward keep their
    rounding correction, so its float32 gradients stay within the tolerance of the float64 ones at the same
    point. (The plain tier is the textbook and loses the mean's rounding: see the next test.)"""
    rng = np.random.default_rng(1)
    x = (offset + rng.standard_normal((4, 3, 5, 5))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    make = {"fast BatchNorm2d": fast.BatchNorm2d, "fast BatchNormReLU2d": fast.BatchNormReLU2d}[layer]
    layer32, layer64 = make(3, dtype=np.float32), make(3, dtype=np.float64)
    for layer_ in (layer32, layer64):
        layer_.weight.data[...] = [0.5, 1.0, 1.5]
        layer_(x.astype(layer_.weight.dtype))
    dx32, dx64 = layer32.backward(dy), layer64.backward(dy.astype(np.float64))
    size = touched(x, x, layer32.weight.data, layer32.bias.data)
    mask = (layer64(x.astype(np.float64)) > 0) == (layer32(x) > 0) if "ReLU" in layer else True   # same side
    assert_close(np.where(mask, dx32, 0).astype(np.float32), np.where(mask, dx64, 0).astype(np.float32), np.float32,
                 "input gradient", size)
    for name in ("weight", "bias"):
        assert_close(getattr(layer32, name).grad, getattr(layer64, name).grad.astype(np.float32), np.float32,
                     f"{name}.grad", size)


@pytest.mark.parametrize("offset", [1e4, -3e3])
def test_float32_textbook_batchnorm_far_from_zero_loses_only_the_means_rounding(offset):
    """The plain tier's float32 BatchNorm is the textbook: its float32 mean is off from the exact one by some
    delta (about half a unit in its last place, 5e-4 at 1e4), which shifts every xhat by -delta * invstd; so its
    d weight = sum(dy * xhat) is the float64 one at the same point minus delta * invstd * sum(dy), within the
    usual rounding, and nothing else is lost. (The fast tier keeps the rounding correction: the test above.)"""
    rng = np.random.default_rng(1)
    x = (offset + rng.standard_normal((4, 3, 5, 5))).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    grads = {}
    for dtype in (np.float32, np.float64):
        bn = nn.BatchNorm2d(3, dtype=dtype)
        bn(x.astype(dtype))
        bn.backward(dy.astype(dtype))
        grads[dtype] = bn.weight.grad.astype(np.float64)
    x64 = x.astype(np.float64)
    delta = x.mean(axis=(0, 2, 3)).astype(np.float64) - x64.mean(axis=(0, 2, 3))        # (C,) the mean's error
    expected = grads[np.float64] - delta / x64.std(axis=(0, 2, 3)) * dy.astype(np.float64).sum(axis=(0, 2, 3))
    assert np.abs(delta).max() > 0                   # the inputs do make the float32 mean round
    assert_close(grads[np.float32].astype(np.float32), expected.astype(np.float32), np.float32, "weight.grad",
                 touched(x, x, dy, bn.weight.data, bn.bias.data))


@given(data=st.data())
def test_fast_adaptive_avgpool2d_equals_plain(data):
    rng, dtype = draw_common(data)
    out = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)))
    x = rng.standard_normal((2, 3, data.draw(st.integers(out[0], 7)), data.draw(st.integers(out[1], 7))))
    compare(nn.AdaptiveAvgPool2d(out), fast.AdaptiveAvgPool2d(out), (x.astype(dtype),), dtype, rng)


@given(data=st.data())
def test_fast_linear_equals_plain(data):
    rng, dtype = draw_common(data)
    i, o, n = data.draw(st.integers(1, 300)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 300))
    bias = data.draw(st.booleans())
    plain = nn.Linear(i, o, bias=bias, dtype=dtype, generator=rng)
    compare(plain, fast.Linear(i, o, bias=bias, dtype=dtype), (rng.standard_normal((n, i)).astype(dtype),),
            dtype, rng)


# -- the DenseNet pieces ---------------------------------------------------------------------------------------
@given(data=st.data())
def test_fast_dense_block_equals_plain_dense_block(data):
    """One buffer, shared statistics, fused BN-ReLU and (optionally) recomputation against Concat + split."""
    rng, dtype = draw_common(data)
    L, k0, k = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    bn_size = data.draw(st.sampled_from([None, 1, 2, 4]))
    drop = data.draw(st.sampled_from([0.0, 0.3]))
    seed = int(rng.integers(1000))
    plain = plain_model.DenseBlock(L, k0, k, bn_size, drop, dtype, np.random.default_rng(seed))
    quick = fast.DenseBlock(L, k0, k, bn_size, drop, dtype, np.random.default_rng(seed),
                            memory_efficient=data.draw(st.booleans(), label="memory_efficient"))
    assert list(plain.state_dict()) == list(quick.state_dict())
    if data.draw(st.booleans(), label="eval"):
        plain.eval(), quick.eval()
    x = rng.standard_normal((data.draw(st.integers(1, 3)), k0, 3, data.draw(st.integers(2, 4)))).astype(dtype)
    with record_backward_outputs(plain.layers()) as sent_plain, record_backward_outputs(quick.layers()) as sent:
        y = compare(plain, quick, (x,), dtype, rng)
    for a, b in zip(sent, sent_plain):                          # the study tools' record agrees too
        assert_close(a, b, dtype, "flow", touched(x, y, *[p.data for p in plain.parameters()]))


@given(data=st.data())
def test_fast_transition_equals_plain_transition(data):
    rng, dtype = draw_common(data)
    C, O = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    seed = int(rng.integers(1000))
    plain = plain_model.Transition(C, O, dtype, np.random.default_rng(seed))
    quick = fast.Transition(C, O, dtype, np.random.default_rng(seed))
    assert list(plain.state_dict()) == list(quick.state_dict())
    x = rng.standard_normal((2, C, data.draw(st.integers(2, 6)), data.draw(st.integers(2, 6)))).astype(dtype)
    compare(plain, quick, (x,), dtype, rng)


# -- whole models ----------------------------------------------------------------------------------------------
MODELS = {
    "bc-cifar": dict(growth_rate=4, block_config=(2, 3), num_init_features=8, bn_size=2, num_classes=5,
                     stem="cifar", shape=(3, 3, 8, 8)),
    "plain-cifar-dropout": dict(growth_rate=3, block_config=(2, 2), num_init_features=6, bn_size=None,
                                compression=1.0, drop_rate=0.2, num_classes=4, stem="cifar", shape=(2, 3, 6, 6)),
    "bc-imagenet-grey": dict(growth_rate=4, block_config=(2, 1), num_init_features=6, bn_size=2, num_classes=3,
                             stem="imagenet", in_channels=1, shape=(2, 1, 17, 19)),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", list(MODELS))
def test_densenet_fast_equals_plain(name, dtype, train, threads):
    """Same seed -> same initial weights and state_dict keys; then the same logits, input gradient, parameter
    gradients and running statistics after a train step (or an eval forward and backward)."""
    fast.set_num_threads(threads)
    config = dict(MODELS[name])
    shape = config.pop("shape")
    plain = DenseNet(**config, dtype=dtype, seed=7, fast=False)
    quick = DenseNet(**config, dtype=dtype, seed=7, fast=True)
    assert not plain.fast and quick.fast
    for (k1, a), (k2, b) in zip(plain.state_dict().items(), quick.state_dict().items()):
        assert k1 == k2
        np.testing.assert_array_equal(a, b, err_msg=k1)          # the same initialisation, bit for bit
    rng = np.random.default_rng(1)
    plain.train(train), quick.train(train)
    x = rng.standard_normal(shape).astype(dtype)
    compare(plain, quick, (x,), np.dtype(dtype), rng)
    if not train:                                               # inference in pieces (no_grad, 2 threads)
        with nn.no_grad():
            size = touched(x, *[p.data for p in plain.parameters()])
            assert_close(quick(x), plain(x), np.dtype(dtype), "no_grad logits", size)


def test_checkpoint_moves_between_tiers():
    plain = densenet_bc(16, 4, num_classes=3, seed=1, fast=False)
    quick = densenet_bc(16, 4, num_classes=3, seed=2)
    assert not np.array_equal(plain.classifier.weight.data, quick.classifier.weight.data)
    quick.load_state_dict(plain.state_dict())
    plain.eval(), quick.eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    assert_close(quick(x), plain(x), np.float32, "logits after loading the plain tier's state_dict",
                 touched(x, *[p.data for p in plain.parameters()]))


def test_fast_flag_must_be_a_bool():
    with pytest.raises(TypeError, match="fast must be True or False"):
        densenet_bc(16, 4, fast="no")


def test_every_factory_passes_fast_through():
    for name, factory in zoo.MODELS.items():
        kwargs = dict(num_classes=2, fast=False)
        if name.startswith("densenet_bc") or name == "densenet":
            kwargs["depth"] = 10 if name == "densenet_bc" else 7
        m = factory(**kwargs)
        assert m.fast is False and not any(isinstance(x, fast.ChannelMajor) for x in m.modules()), name


def test_plain_tier_uses_only_plain_layers_and_concat():
    m = densenet_bc(16, 4, fast=False)
    kinds = {type(x) for x in m.modules()}
    assert nn.Concat in kinds and not any(issubclass(t, fast.ChannelMajor) for t in kinds)
    assert fast_densenet.DenseBlock not in kinds


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_stages_agree_between_tiers(name):
    """summary's and the NaN locator's stage-by-stage forward: same names, NCHW outputs equal to rounding."""
    config = dict(MODELS[name])
    shape = config.pop("shape")
    plain = DenseNet(**config, dtype=np.float64, seed=3, fast=False).eval()
    quick = DenseNet(**config, dtype=np.float64, seed=3).eval()
    x = np.random.default_rng(2).standard_normal(shape)
    with nn.no_grad():
        a, b = list(plain.forward_stages(x)), list(quick.forward_stages(x))
        logits = plain(x)
    assert [n for n, _, _ in a] == [n for n, _, _ in b]
    assert any(".denselayer" in n for n, _, _ in a) and a[-1][0] == "classifier"
    size = touched(x, *[p.data for p in plain.parameters()])
    for (n, _, ya), (_, _, yb) in zip(a, b):
        assert_close(yb, ya, np.float64, n, size)
    assert_close(a[-1][2], logits, np.float64, "forward_stages' logits against forward's", size)
