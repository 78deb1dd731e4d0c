"""Tests of every layer in numpy_densenet.nn (the plain tier), and of the fast tier's layers where noted, without
PyTorch (tests/test_fast_tier.py proves the fast layers equal to these).

* forward against the loop oracles of :mod:`numpy_densenet.reference` or a closed form;
* backward through :func:`numpy_densenet.gradcheck` in float64 at rtol 1e-6, on geometries drawn by
  hypothesis (kernel and dilation first, then an input large enough for them);
* errors: invalid geometry, wrong ndim, channel and dtype mismatches, protocol misuse, each with a message
  that names the problem;
* semantics: BatchNorm2d running statistics, fast BatchNormReLU2d = fast BatchNorm2d then ReLU bit for bit, Dropout,
  dtypes, gradient accumulation, MaxPool2d ties, CrossEntropyLoss stability and label smoothing, state_dict
  round trips, Module.to.
"""
from __future__ import annotations

import re
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy.special import log_softmax

from numpy_densenet import fast, gradcheck, nn
import reference_loops as ref  # the naive loop oracles, tests/reference_loops.py

RTOL = 1e-6                                  # gradcheck tolerance (float64 central differences)
EXACT = dict(rtol=1e-12, atol=1e-12)         # forward vs oracle in float64


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def draw_rng(data):
    return np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))


def check_grads(module, x, mode="full", seed=0, **kwargs):
    """gradcheck at rtol 1e-6; on failure the assertion shows the full report table."""
    result = gradcheck(module, x, mode=mode, seed=seed, rtol=RTOL, **kwargs)
    assert result.passed, "\n" + result.table()
    inputs = x if isinstance(x, tuple) else (x,)
    n_float = sum(np.asarray(a).dtype.kind == "f" for a in inputs)
    assert len(result.rows) == n_float + len(list(module.parameters())), result.table()  # every tensor checked
    return result


def distinct_values(rng, shape, spread=4.0):
    """Values at least spread/size apart (a shuffled grid): no ties and no near-ties for max pooling."""
    n = int(np.prod(shape))
    return ((rng.permutation(n) - n / 2) * (spread / n)).reshape(shape)


def away_from_zero(rng, shape):
    """Standard normals pushed at least 0.01 away from 0, so ReLU's kink is never probed."""
    x = rng.standard_normal(shape)
    return x + np.where(x >= 0, 0.01, -0.01)


def draw_pool_geometry(data, max_kernel=3, max_extra=4):
    """(kernel, stride, padding, H, W) with padding <= kernel // 2 and the padded input >= the kernel."""
    k = tuple(data.draw(st.integers(1, max_kernel), label=f"k{a}") for a in "hw")
    s = tuple(data.draw(st.integers(1, 3), label=f"s{a}") for a in "hw")
    p = tuple(data.draw(st.integers(0, ki // 2), label=f"p{a}") for ki, a in zip(k, "hw"))
    H, W = (data.draw(st.integers(max(1, ki - 2 * pi), max(1, ki - 2 * pi) + max_extra), label=a)
            for ki, pi, a in zip(k, p, "HW"))
    return k, s, p, H, W


def draw_conv_geometry(data):
    """Kernel and dilation first, then stride, padding and an input no smaller than the padded kernel."""
    k = tuple(data.draw(st.integers(1, 3), label=f"k{a}") for a in "hw")
    d = tuple(data.draw(st.integers(1, 2), label=f"d{a}") for a in "hw")
    s = tuple(data.draw(st.integers(1, 3), label=f"s{a}") for a in "hw")
    p = tuple(data.draw(st.integers(0, 2), label=f"p{a}") for a in "hw")
    H, W = (data.draw(st.integers(max(1, di * (ki - 1) + 1 - 2 * pi), max(1, di * (ki - 1) + 1 - 2 * pi) + 4),
                      label=a) for ki, di, pi, a in zip(k, d, p, "HW"))
    return k, s, p, d, H, W


def set_params(module, rng):
    """Overwrite every parameter with standard normals (BatchNorm's weight kept away from 0)."""
    for name, p in module.named_parameters():
        values = rng.standard_normal(p.shape)
        if isinstance(module, nn.BatchNorm2d) and name == "weight":
            values = 0.5 + np.abs(values)
        p.data[...] = values
    return module


# ---------------------------------------------------------------------------------------------------------
# Conv2d
# ---------------------------------------------------------------------------------------------------------
@given(data=st.data())
def test_conv2d_forward_matches_loop_oracle(data):
    rng = draw_rng(data)
    k, s, p, d, H, W = draw_conv_geometry(data)
    N, C, O = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    bias = data.draw(st.booleans(), label="bias")
    conv = nn.Conv2d(C, O, k, stride=s, padding=p, dilation=d, bias=bias, dtype=np.float64, generator=rng)
    x = rng.standard_normal((N, C, H, W))
    y = conv(x)
    expected = ref.conv2d_loop(x, conv.weight.data, conv.bias.data if bias else None, s, p, d)
    assert y.shape == expected.shape == (N, O) + conv.output_shape(H, W)
    np.testing.assert_allclose(y, expected, **EXACT)


@given(data=st.data())
def test_conv2d_gradcheck_full(data):
    rng = draw_rng(data)
    k, s, p, d, H, W = draw_conv_geometry(data)
    N, C, O = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    conv = nn.Conv2d(C, O, k, stride=s, padding=p, dilation=d, bias=data.draw(st.booleans()),
                     dtype=np.float64, generator=rng)
    check_grads(conv, rng.standard_normal((N, C, H, W)), seed=data.draw(st.integers(0, 100)))


def test_conv2d_pointwise_path_matches_oracle_and_gradcheck():
    """1x1 / stride 1 / no padding skips im2col: check that path on its own."""
    rng = np.random.default_rng(1)
    conv = nn.Conv2d(5, 4, 1, dtype=np.float64, generator=rng)
    x = rng.standard_normal((2, 5, 3, 4))
    np.testing.assert_allclose(conv(x), ref.conv2d_loop(x, conv.weight.data, conv.bias.data), **EXACT)
    check_grads(conv, x)


@pytest.mark.parametrize("mode", ["sampled", "directional"])
def test_conv2d_gradcheck_larger_tensor(mode):
    rng = np.random.default_rng(2)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, dtype=np.float64, generator=rng)
    check_grads(conv, rng.standard_normal((2, 4, 11, 10)), mode=mode, seed=3)


# ---------------------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------------------
@given(data=st.data())
def test_maxpool2d_forward_matches_loop_oracle(data):
    rng = draw_rng(data)
    k, s, p, H, W = draw_pool_geometry(data)
    stride = None if data.draw(st.booleans(), label="default stride") else s
    x = rng.standard_normal((data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), H, W))
    y = nn.MaxPool2d(k, stride, p)(x)
    np.testing.assert_array_equal(y, ref.maxpool2d_loop(x, k, stride, p))


@given(data=st.data())
def test_maxpool2d_gradcheck_full(data):
    rng = draw_rng(data)
    k, s, p, H, W = draw_pool_geometry(data)
    x = distinct_values(rng, (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), H, W))
    result = check_grads(nn.MaxPool2d(k, s, p), x)
    assert result.rows[0].kinks == 0                 # distinct values: no probe may be excused as a kink


@given(data=st.data())
def test_maxpool2d_ties_route_to_first_max_in_row_major_order(data):
    rng = draw_rng(data)
    k, s, p, H, W = draw_pool_geometry(data)
    x = rng.integers(0, 2, (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)), H, W)).astype(float)
    pool = nn.MaxPool2d(k, s, p)
    y = pool(x)
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(pool.backward(dout), ref.maxpool2d_backward_loop(x, dout, k, s, p), **EXACT)


def test_maxpool2d_tie_routing_by_hand():
    """All-equal windows: each window's gradient goes to its top-left element, never split."""
    pool = nn.MaxPool2d(2, stride=1)
    x = np.ones((1, 1, 3, 3))
    pool(x)
    dx = pool.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    np.testing.assert_array_equal(dx[0, 0], [[1, 2, 0], [3, 4, 0], [0, 0, 0]])
    # A padded window: the -inf padding never wins, the first real maximum does.
    pool = nn.MaxPool2d(3, stride=2, padding=1)
    pool(np.zeros((1, 1, 2, 2)))
    np.testing.assert_array_equal(pool.backward(np.ones((1, 1, 1, 1)))[0, 0], [[1, 0], [0, 0]])


def test_maxpool2d_tie_test_catches_last_max_routing():
    """The tie oracle is not vacuous: routing to the *last* maximum disagrees with it."""
    x = np.ones((1, 1, 4, 4))
    dout = np.arange(1.0, 5.0).reshape(1, 1, 2, 2)
    flipped = nn.MaxPool2d(2)
    flipped(x[..., ::-1, ::-1].copy())
    last_max = flipped.backward(dout[..., ::-1, ::-1].copy())[..., ::-1, ::-1]
    assert not np.allclose(last_max, ref.maxpool2d_backward_loop(x, dout, 2))


def test_maxpool2d_propagates_nan_like_torch():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan                                 # in the top-left window
    x[0, 0, 2:, 2:] = np.nan                               # the whole bottom-right window
    y = nn.MaxPool2d(2)(x)
    np.testing.assert_array_equal(y[0, 0], [[np.nan, 7.0], [13.0, np.nan]])


@given(data=st.data())
def test_avgpool2d_forward_matches_loop_oracle(data):
    rng = draw_rng(data)
    k, s, p, H, W = draw_pool_geometry(data)
    include = data.draw(st.booleans(), label="count_include_pad")
    x = rng.standard_normal((data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), H, W))
    y = nn.AvgPool2d(k, s, p, count_include_pad=include)(x)
    np.testing.assert_allclose(y, ref.avgpool2d_loop(x, k, s, p, count_include_pad=include), **EXACT)


@given(data=st.data())
def test_avgpool2d_gradcheck_full(data):
    rng = draw_rng(data)
    k, s, p, H, W = draw_pool_geometry(data)
    x = rng.standard_normal((data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), H, W))
    check_grads(nn.AvgPool2d(k, s, p, count_include_pad=data.draw(st.booleans())), x)


def test_avgpool2d_count_include_pad_by_hand():
    x = np.ones((1, 1, 2, 2))
    # 3x3 windows, padding 1, stride 1: each window holds 4 real ones of 9 cells.
    np.testing.assert_allclose(nn.AvgPool2d(3, 1, 1)(x)[0, 0], np.full((2, 2), 4 / 9))
    np.testing.assert_allclose(nn.AvgPool2d(3, 1, 1, count_include_pad=False)(x)[0, 0], np.ones((2, 2)))


@given(data=st.data())
def test_adaptive_avgpool2d_forward_matches_loop_oracle(data):
    rng = draw_rng(data)
    H, W = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8))
    out = (data.draw(st.integers(1, H + 2)), data.draw(st.integers(1, W + 2)))   # may exceed the input
    x = rng.standard_normal((data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), H, W))
    y = nn.AdaptiveAvgPool2d(out)(x)
    np.testing.assert_allclose(y, ref.adaptive_avgpool2d_loop(x, out), **EXACT)


@given(data=st.data())
def test_adaptive_avgpool2d_gradcheck_full(data):
    rng = draw_rng(data)
    H, W = data.draw(st.integers(1, 7)), data.draw(st.integers(1, 7))
    out = data.draw(st.one_of(st.just(1), st.tuples(st.integers(1, H + 1), st.integers(1, W + 1))))
    x = rng.standard_normal((data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), H, W))
    check_grads(nn.AdaptiveAvgPool2d(out), x)


def test_adaptive_avgpool2d_non_divisible_by_hand():
    x = np.arange(5.0 * 7.0).reshape(1, 1, 5, 7)
    y = nn.AdaptiveAvgPool2d((2, 3))(x)
    # rows [0, 3) and [2, 5); columns [0, 3), [2, 5), [4, 7)
    expected = [[x[0, 0, r0:r1, c0:c1].mean() for c0, c1 in ((0, 3), (2, 5), (4, 7))] for r0, r1 in ((0, 3), (2, 5))]
    np.testing.assert_allclose(y[0, 0], expected, **EXACT)
    np.testing.assert_allclose(nn.AdaptiveAvgPool2d(1)(x), x.mean(axis=(2, 3), keepdims=True), **EXACT)


# ---------------------------------------------------------------------------------------------------------
# BatchNorm2d
# ---------------------------------------------------------------------------------------------------------
@given(data=st.data())
def test_batchnorm2d_train_forward_matches_closed_form(data):
    rng = draw_rng(data)
    N, C = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    H, W = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 4))
    eps = data.draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    bn = set_params(nn.BatchNorm2d(C, eps=eps, dtype=np.float64), rng)
    x = 3.0 * rng.standard_normal((N, C, H, W)) + rng.standard_normal((1, C, 1, 1))
    expected, _, _ = ref.batchnorm2d_train_reference(x, bn.weight.data, bn.bias.data, eps)
    np.testing.assert_allclose(bn(x), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer", [nn.BatchNorm2d, fast.BatchNorm2d, fast.BatchNormReLU2d])
@given(data=st.data())
def test_batchnorm2d_gradcheck_train_and_eval(layer, data):
    rng = draw_rng(data)
    N, C = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    H, W = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 4))
    bn = set_params(layer(C, dtype=np.float64), rng)
    bn.running_mean[...] = rng.standard_normal(C)
    bn.running_var[...] = 0.5 + rng.random(C)
    x = rng.standard_normal((N, C, H, W))
    if data.draw(st.booleans(), label="eval"):
        bn.eval()
    check_grads(bn, x, seed=data.draw(st.integers(0, 100)))


@given(data=st.data())
def test_batchnormrelu2d_is_batchnorm2d_then_relu_bit_for_bit(data):
    """The fused layer gives exactly BatchNorm2d's output and gradients passed through ReLU, train and eval."""
    rng = draw_rng(data)
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    N, C = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    H, W = data.draw(st.integers(1, 5)), data.draw(st.integers(2, 5))
    fused = set_params(fast.BatchNormReLU2d(C, dtype=dtype), rng)
    plain, relu = fast.BatchNorm2d(C, dtype=dtype), fast.ReLU()
    plain.load_state_dict(fused.state_dict())
    assert list(fused.state_dict()) == list(plain.state_dict())
    if data.draw(st.booleans(), label="eval"):
        fused.running_var[...] = plain.running_var[...] = 0.5 + rng.random(C)
        fused.eval(), plain.eval()
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    dy = rng.standard_normal((N, C, H, W)).astype(dtype)
    y = fused(x)
    np.testing.assert_array_equal(y, relu(plain(x)))
    assert y.dtype == dtype and (y >= 0).all()
    np.testing.assert_array_equal(fused.backward(dy), plain.backward(relu.backward(dy)))
    np.testing.assert_array_equal(fused.weight.grad, plain.weight.grad)
    np.testing.assert_array_equal(fused.bias.grad, plain.bias.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_array_equal(getattr(fused, name), getattr(plain, name))


def test_gradcheck_catches_batchnormrelu2d_backward_without_the_relu_mask():
    class NoMask(fast.BatchNormReLU2d):
        def backward_cnhw(self, dout):
            x, mean, invstd, training, _ = self._cache
            self._cache = (x, mean, invstd, training, None)     # forgets the ReLU: gradient where y == 0 too
            return super().backward_cnhw(dout)

    rng = np.random.default_rng(0)
    bn = set_params(NoMask(2, dtype=np.float64), rng)
    assert not gradcheck(bn, rng.standard_normal((2, 2, 3, 3)), rtol=RTOL).passed


def test_gradcheck_catches_batchnorm_backward_without_the_batch_statistics_terms():
    """The BatchNorm gradcheck can fail: a backward that treats the batch mean and variance as constants
    (the eval-mode formula used in train mode) is rejected."""

    class ConstantStatsBN(nn.BatchNorm2d):
        def backward(self, dout):
            xhat, invstd, _ = self._cache               # (xhat, 1/std, M values per channel; None in eval)
            self._cache = (xhat, invstd, None)
            return super().backward(dout)

    class FastConstantStatsBN(fast.BatchNorm2d):
        def backward_cnhw(self, dout):
            x, mean, invstd, _, _ = self._cache         # (input, batch mean, 1/std, M or None in eval, mask)
            self._cache = (x, mean, invstd, None, None)
            return super().backward_cnhw(dout)

    for layer in (ConstantStatsBN, FastConstantStatsBN):
        rng = np.random.default_rng(0)
        bn = set_params(layer(2, dtype=np.float64), rng)
        with np.errstate(all="raise"):                 # rejected for its formula, not for a division by zero
            assert not gradcheck(bn, rng.standard_normal((2, 2, 3, 3)), rtol=RTOL).passed, layer.__name__


def _unbiased(var, M):
    return var * M / (M - 1)


def test_batchnorm2d_running_stats_after_one_forward():
    rng = np.random.default_rng(0)
    bn = nn.BatchNorm2d(3, momentum=0.1, dtype=np.float64)
    x = 2.0 * rng.standard_normal((2, 3, 2, 2)) + 1.0
    bn(x)
    _, mean, var = ref.batchnorm2d_train_reference(x, np.ones(3), np.zeros(3), 1e-5)
    np.testing.assert_allclose(bn.running_mean, 0.1 * mean, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.9 + 0.1 * var * 8 / 7, rtol=1e-12)   # unbiased, M = 8
    assert bn.num_batches_tracked == 1 and bn.num_batches_tracked.dtype == np.int64


@pytest.mark.parametrize("momentum", [0.1, 0.6, None])
def test_batchnorm2d_running_stats_after_several_forwards(momentum):
    rng = np.random.default_rng(1)
    C = 2
    bn = nn.BatchNorm2d(C, momentum=momentum, dtype=np.float64)
    running_mean, running_var = np.zeros(C), np.ones(C)
    batch_means, batch_vars = [], []
    for t in range(1, 6):
        shape = (t % 3 + 1, C, 2, t % 2 + 2)                        # the batch size varies, so does M
        x = (t + 1.0) * rng.standard_normal(shape) + t
        M = shape[0] * shape[2] * shape[3]
        bn(x)
        _, mean, var = ref.batchnorm2d_train_reference(x, np.ones(C), np.zeros(C), bn.eps)
        batch_means.append(mean)
        batch_vars.append(_unbiased(var, M))
        m = momentum if momentum is not None else 1.0 / t
        running_mean = (1 - m) * running_mean + m * mean
        running_var = (1 - m) * running_var + m * _unbiased(var, M)
        np.testing.assert_allclose(bn.running_mean, running_mean, rtol=1e-12)
        np.testing.assert_allclose(bn.running_var, running_var, rtol=1e-12)
        assert int(bn.num_batches_tracked) == t
    if momentum is None:                     # the cumulative average of every batch seen
        np.testing.assert_allclose(bn.running_mean, np.mean(batch_means, axis=0), rtol=1e-12)
        np.testing.assert_allclose(bn.running_var, np.mean(batch_vars, axis=0), rtol=1e-12)


def test_batchnorm2d_eval_uses_running_stats_and_leaves_them_alone():
    rng = np.random.default_rng(2)
    bn = set_params(nn.BatchNorm2d(3, eps=1e-3, dtype=np.float64), rng)
    bn.running_mean[...] = [0.5, -1.0, 2.0]
    bn.running_var[...] = [0.25, 4.0, 1.5]
    bn.num_batches_tracked[...] = 7
    bn.eval()
    x = rng.standard_normal((2, 3, 3, 2))
    y = bn(x)
    expected = ((x - bn.running_mean[:, None, None]) / np.sqrt(bn.running_var[:, None, None] + 1e-3)
                * bn.weight.data[:, None, None] + bn.bias.data[:, None, None])
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    np.testing.assert_array_equal(bn.running_mean, [0.5, -1.0, 2.0])
    np.testing.assert_array_equal(bn.running_var, [0.25, 4.0, 1.5])
    assert bn.num_batches_tracked == 7
    # one value per channel is fine in eval mode
    assert bn(np.ones((1, 3, 1, 1))).shape == (1, 3, 1, 1)


def test_batchnorm2d_one_value_per_channel_in_train_mode_raises_and_changes_nothing():
    bn = nn.BatchNorm2d(2)
    with pytest.raises(ValueError, match=r"more than 1 value per channel when training.*\(1, 2, 1, 1\)"):
        bn(np.ones((1, 2, 1, 1), dtype=np.float32))
    assert bn.num_batches_tracked == 0
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)


# ---------------------------------------------------------------------------------------------------------
# ReLU, Dropout, Linear, Flatten, Concat
# ---------------------------------------------------------------------------------------------------------
@given(data=st.data())
def test_relu_forward_and_gradcheck(data):
    rng = draw_rng(data)
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=1, max_size=4), label="shape"))
    x = away_from_zero(rng, shape)
    np.testing.assert_array_equal(nn.ReLU()(x), np.where(x > 0, x, 0.0))
    check_grads(nn.ReLU(), x)


def test_relu_gradient_at_zero_is_zero():
    relu = nn.ReLU()
    relu(np.array([-1.0, 0.0, 2.0]))
    np.testing.assert_array_equal(relu.backward(np.array([5.0, 5.0, 5.0])), [0.0, 0.0, 5.0])


@given(data=st.data())
def test_linear_forward_and_gradcheck(data):
    rng = draw_rng(data)
    N, I, O = (data.draw(st.integers(1, 5)) for _ in range(3))
    bias = data.draw(st.booleans(), label="bias")
    lin = nn.Linear(I, O, bias=bias, dtype=np.float64, generator=rng)
    x = rng.standard_normal((N, I))
    expected = np.array([[sum(x[n, i] * lin.weight.data[o, i] for i in range(I)) + (lin.bias.data[o] if bias else 0)
                          for o in range(O)] for n in range(N)])
    np.testing.assert_allclose(lin(x), expected, **EXACT)
    check_grads(lin, x)


@given(data=st.data())
def test_flatten_forward_and_gradcheck(data):
    rng = draw_rng(data)
    shape = tuple(data.draw(st.lists(st.integers(1, 4), min_size=2, max_size=4), label="shape"))
    x = rng.standard_normal(shape)
    y = nn.Flatten()(x)
    np.testing.assert_array_equal(y, x.reshape(shape[0], -1))
    check_grads(nn.Flatten(), x)


@given(data=st.data())
def test_concat_forward_and_gradcheck(data):
    rng = draw_rng(data)
    N, H, W = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    channels = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=3), label="channels")
    xs = tuple(rng.standard_normal((N, c, H, W)) for c in channels)
    cat = nn.Concat()
    y = cat(*xs)
    np.testing.assert_array_equal(y, np.concatenate(xs, axis=1))
    dy = rng.standard_normal(y.shape)
    dxs = cat.backward(dy)
    offsets = np.cumsum([0] + channels)
    assert len(dxs) == len(xs)
    for dx, a, b in zip(dxs, offsets[:-1], offsets[1:]):
        np.testing.assert_array_equal(dx, dy[:, a:b])
    check_grads(nn.Concat(), xs)


def test_dropout_inverted_scaling_and_seeding():
    p = 0.3
    x = np.random.default_rng(0).standard_normal((40, 50)) + 3.0      # never 0, so zeros mark dropped values
    d1, d2, d3 = nn.Dropout(p, seed=5), nn.Dropout(p, seed=5), nn.Dropout(p, seed=6)
    y1, y2, y3 = d1(x), d2(x), d3(x)
    np.testing.assert_array_equal(y1, y2)                    # same seed, same mask
    assert not np.array_equal(y1 == 0, y3 == 0)              # another seed, another mask
    kept = y1 != 0
    np.testing.assert_allclose(y1[kept], x[kept] / (1 - p), rtol=1e-15)
    assert abs((~kept).mean() - p) < 0.03                    # 2000 draws: 3 sigma is ~0.031
    dout = np.random.default_rng(1).standard_normal(x.shape)
    np.testing.assert_allclose(d1.backward(dout), np.where(kept, dout / (1 - p), 0.0), rtol=1e-15)
    # The generator moves on: the next mask differs.
    assert not np.array_equal(d1(x) == 0, ~kept)


def test_dropout_eval_is_identity_and_p0_p1():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 2, 2))
    dout = rng.standard_normal(x.shape)
    d = nn.Dropout(0.5, seed=0).eval()
    np.testing.assert_array_equal(d(x), x)
    np.testing.assert_array_equal(d.backward(dout), dout)
    d0 = nn.Dropout(0.0, seed=0)
    np.testing.assert_array_equal(d0(x), x)
    np.testing.assert_array_equal(d0.backward(dout), dout)
    d1 = nn.Dropout(1.0, seed=0)
    y = d1(x)
    assert np.all(y == 0) and np.all(np.isfinite(y))
    np.testing.assert_array_equal(d1.backward(dout), 0)
    for bad in (-0.1, 1.5, True):
        with pytest.raises(ValueError, match=r"Dropout: p must be a probability in \[0, 1\]"):
            nn.Dropout(bad)


def test_dropout_gradcheck_with_fixed_seed():
    x = np.random.default_rng(3).standard_normal((3, 4, 5))
    check_grads(nn.Dropout(0.4, seed=11), x)


# ---------------------------------------------------------------------------------------------------------
# CrossEntropyLoss
# ---------------------------------------------------------------------------------------------------------
def ce_closed_form(logits, labels, e=0.0, reduction="mean"):
    logp = log_softmax(logits, axis=1)
    per_sample = -(1 - e) * logp[np.arange(len(labels)), labels] - e * logp.mean(axis=1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


@given(data=st.data())
def test_cross_entropy_forward_and_gradcheck(data):
    rng = draw_rng(data)
    N, K = data.draw(st.integers(1, 5)), data.draw(st.integers(2, 6))
    e = data.draw(st.sampled_from([0.0, 0.1, 0.35, 1.0]), label="label_smoothing")
    reduction = data.draw(st.sampled_from(["mean", "sum"]))
    logits = 3.0 * rng.standard_normal((N, K))
    labels = rng.integers(0, K, N)
    ce = nn.CrossEntropyLoss(label_smoothing=e, reduction=reduction)
    loss = ce(logits, labels)
    assert loss.shape == () and loss.dtype == np.float64
    np.testing.assert_allclose(loss, ce_closed_form(logits, labels, e, reduction), rtol=1e-12)
    check_grads(nn.CrossEntropyLoss(label_smoothing=e, reduction=reduction), (logits, labels))


def test_cross_entropy_label_smoothing_by_hand():
    logits = np.array([[0.0, 0.0, 0.0, 0.0]])
    # uniform prediction: every log-probability is -log 4, whatever the target distribution
    np.testing.assert_allclose(nn.CrossEntropyLoss(label_smoothing=0.2)(logits, [1]), np.log(4.0), rtol=1e-14)
    logits = np.array([[2.0, 0.0, -1.0]])
    logp = log_softmax(logits, axis=1)[0]
    target = 0.7 * np.array([1.0, 0.0, 0.0]) + 0.3 / 3
    ce = nn.CrossEntropyLoss(label_smoothing=0.3)
    np.testing.assert_allclose(ce(logits, np.array([0])), -(target * logp).sum(), rtol=1e-14)
    np.testing.assert_allclose(ce.backward(), [np.exp(logp) - target], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4]], dtype=dtype)
    labels = np.array([1, 0])
    ce = nn.CrossEntropyLoss()
    loss = ce(logits, labels)
    # row 0: logsumexp = 1e4, loss 2e4; row 1: logsumexp = 1e4 + log 2, loss 2e4 + log 2
    assert loss.dtype == dtype and np.isfinite(loss)
    np.testing.assert_allclose(loss, 2e4 + np.log(2.0) / 2, rtol=1e-6 if dtype == np.float32 else 1e-14)
    grad = ce.backward()
    assert grad.dtype == dtype and np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, np.array([[1.0, -1.0, 0.0], [-1.0, 0.5, 0.5]]) / 2, atol=1e-7)
    assert np.isfinite(nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels))


def test_cross_entropy_errors():
    logits = np.zeros((2, 3))
    ce = nn.CrossEntropyLoss()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values from 0 to 3"):
        ce(logits, np.array([0, 3]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values from -1"):
        ce(logits, np.array([-1, 2]))
    with pytest.raises(TypeError, match="labels must be integer class indices, got dtype float64"):
        ce(logits, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\) = \(2,\).*got \(2, 1\)"):
        ce(logits, np.array([[0], [1]]))
    with pytest.raises(ValueError, match=r"labels must have shape \(N,\) = \(2,\).*got \(3,\)"):
        ce(logits, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="label_smoothing must be in"):
        nn.CrossEntropyLoss(label_smoothing=1.5)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'sum'"):
        nn.CrossEntropyLoss(reduction="none")
    ce(logits, np.array([0, 1]))
    with pytest.raises(ValueError, match="dout must be a scalar"):
        ce.backward(np.ones(2))


# ---------------------------------------------------------------------------------------------------------
# The same checks on every layer: dtypes, protocol misuse, bad inputs
# ---------------------------------------------------------------------------------------------------------
def _cases():
    g = np.random.default_rng
    return {
        "Conv2d": (lambda dt: nn.Conv2d(2, 3, 3, padding=1, dtype=dt, generator=g(0)),
                   lambda rng, dt: (rng.standard_normal((2, 2, 5, 4)).astype(dt),)),
        "Conv2d-strided-dilated-nobias": (
            lambda dt: nn.Conv2d(2, 3, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(2, 1), bias=False,
                                 dtype=dt, generator=g(0)),
            lambda rng, dt: (rng.standard_normal((2, 2, 6, 5)).astype(dt),)),
        "Conv2d-pointwise": (lambda dt: nn.Conv2d(3, 2, 1, dtype=dt, generator=g(0)),
                             lambda rng, dt: (rng.standard_normal((2, 3, 3, 3)).astype(dt),)),
        "BatchNorm2d-train": (lambda dt: nn.BatchNorm2d(2, dtype=dt),
                              lambda rng, dt: (rng.standard_normal((2, 2, 3, 3)).astype(dt),)),
        "BatchNorm2d-eval": (lambda dt: nn.BatchNorm2d(2, dtype=dt).eval(),
                             lambda rng, dt: (rng.standard_normal((2, 2, 3, 3)).astype(dt),)),
        "ReLU": (lambda dt: nn.ReLU(), lambda rng, dt: (rng.standard_normal((2, 3, 2, 2)).astype(dt),)),
        "Dropout": (lambda dt: nn.Dropout(0.5, seed=0),
                    lambda rng, dt: (rng.standard_normal((2, 3, 2, 2)).astype(dt),)),
        "MaxPool2d": (lambda dt: nn.MaxPool2d(3, 2, 1),
                      lambda rng, dt: (rng.standard_normal((2, 2, 5, 5)).astype(dt),)),
        "AvgPool2d": (lambda dt: nn.AvgPool2d(3, 2, 1, count_include_pad=False),
                      lambda rng, dt: (rng.standard_normal((2, 2, 5, 5)).astype(dt),)),
        "AdaptiveAvgPool2d": (lambda dt: nn.AdaptiveAvgPool2d((2, 3)),
                              lambda rng, dt: (rng.standard_normal((2, 2, 5, 7)).astype(dt),)),
        "Concat": (lambda dt: nn.Concat(),
                   lambda rng, dt: (rng.standard_normal((2, 1, 3, 3)).astype(dt),
                                    rng.standard_normal((2, 2, 3, 3)).astype(dt))),
        "Linear": (lambda dt: nn.Linear(4, 3, dtype=dt, generator=g(0)),
                   lambda rng, dt: (rng.standard_normal((5, 4)).astype(dt),)),
        "Flatten": (lambda dt: nn.Flatten(), lambda rng, dt: (rng.standard_normal((2, 3, 2, 2)).astype(dt),)),
        "CrossEntropyLoss": (lambda dt: nn.CrossEntropyLoss(label_smoothing=0.1),
                             lambda rng, dt: (rng.standard_normal((4, 3)).astype(dt), np.array([0, 2, 1, 2]))),
    }


SPATIAL = ("Conv2d", "BatchNorm2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "Concat")


def _fast_cases(plain_cases):
    """The same cases on the fast tier's layers (a name with "fast" in it), where the fast tier has one."""
    swap = {nn.Conv2d: fast.Conv2d, nn.BatchNorm2d: fast.BatchNorm2d, nn.ReLU: fast.ReLU, nn.Linear: fast.Linear,
            nn.MaxPool2d: fast.MaxPool2d, nn.AvgPool2d: fast.AvgPool2d, nn.AdaptiveAvgPool2d: fast.AdaptiveAvgPool2d}
    cases = {}
    for name, (make, inputs) in plain_cases.items():
        layer = make(np.float32)
        if type(layer) in swap:
            def fast_make(dt, _make=make):
                plain = _make(dt)
                quick = object.__new__(swap[type(plain)])           # the same constructor arguments ...
                quick.__dict__.update(plain.__dict__)               # ... and state, in the fast class
                return quick
            cases[name.split("-")[0] + "-fast" + name[len(name.split("-")[0]):]] = (fast_make, inputs)
    return cases


CASES = _cases()
CASES.update(_fast_cases(CASES))
PARAMETRIC = [c for c in CASES if c.split("-")[0] in ("Conv2d", "BatchNorm2d", "Linear")]


def _run(case, dt, seed=0):
    make, inputs = CASES[case]
    rng = np.random.default_rng(seed)
    layer = make(dt)
    xs = inputs(rng, dt)
    out = layer(*xs)
    dout = rng.standard_normal(np.shape(out)).astype(dt)
    dx = layer.backward(dout[()] if dout.shape == () else dout)
    return layer, xs, out, dx


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_dtype_is_preserved(case, dt):
    layer, xs, out, dx = _run(case, dt)
    assert out.dtype == dt
    for d, x in zip(dx if isinstance(dx, tuple) else (dx,), xs):
        assert d.dtype == dt and d.shape == x.shape
    for name, p in layer.named_parameters():
        assert p.data.dtype == dt and p.grad.dtype == dt, name
        assert np.any(p.grad != 0), f"{name}.grad was not written"
    for name, b in layer.named_buffers():
        assert b.dtype == (np.int64 if name == "num_batches_tracked" else dt), name


@pytest.mark.parametrize("case", PARAMETRIC)
def test_two_backward_passes_without_zero_grad_accumulate(case):
    make, inputs = CASES[case]
    rng = np.random.default_rng(0)
    layer = make(np.float64)
    xs = inputs(rng, np.float64)
    dout = rng.standard_normal(layer(*xs).shape)
    layer.backward(dout)
    first = {name: p.grad.copy() for name, p in layer.named_parameters()}
    assert all(np.any(g != 0) for g in first.values())
    layer(*xs)
    layer.backward(dout)
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * first[name], rtol=1e-12, atol=1e-14, err_msg=name)
    layer.zero_grad()
    for name, p in layer.named_parameters():
        np.testing.assert_array_equal(p.grad, 0, err_msg=name)


def _ones_like_output(out):
    return 1.0 if np.shape(out) == () else np.ones(np.shape(out))


@pytest.mark.parametrize("case", list(CASES))
def test_backward_before_forward_raises(case):
    make, inputs = CASES[case]
    layer = make(np.float64)
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(np.ones((2, 2, 2, 2)) if case != "CrossEntropyLoss" else 1.0)
    # ... and a second backward after a single forward: backward frees what forward cached
    out = layer(*inputs(np.random.default_rng(0), np.float64))
    layer.backward(_ones_like_output(out))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        layer.backward(_ones_like_output(out))


def _swap01(shape):
    return (shape[1], shape[0]) + tuple(shape[2:])


def _wrong_shape_message(bad, expected):
    return re.escape(f"upstream gradient has shape {bad}, expected the forward output's shape {expected}")


@pytest.mark.parametrize("case", [c for c in CASES if c != "CrossEntropyLoss"])
def test_upstream_gradient_of_wrong_shape_raises(case):
    make, inputs = CASES[case]
    layer = make(np.float64)
    out = layer(*inputs(np.random.default_rng(0), np.float64))
    bad = out.shape[:-1] + (out.shape[-1] + 1,)
    pattern = _wrong_shape_message(bad, out.shape)
    with pytest.raises(ValueError, match=pattern):
        layer.backward(np.ones(bad))


def test_spatial_wrong_gradient_shape_message_names_the_nchw_shapes():
    pool = nn.MaxPool2d(2)
    pool(np.ones((2, 3, 4, 4)))                                       # output (2, 3, 2, 2)
    with pytest.raises(ValueError, match=_wrong_shape_message((2, 3, 2, 3), (2, 3, 2, 2))):
        pool.backward(np.ones((2, 3, 2, 3)))


@pytest.mark.parametrize("case", [c for c in CASES if c.split("-")[0] in SPATIAL])
def test_spatial_upstream_gradient_of_wrong_ndim_raises(case):
    make, inputs = CASES[case]
    layer = make(np.float64)
    layer(*inputs(np.random.default_rng(0), np.float64))
    with pytest.raises(ValueError, match="expected a 4-D gradient|upstream gradient has shape"):
        layer.backward(np.ones((2, 3, 4)))


@pytest.mark.parametrize("case", [c for c in CASES if c != "Flatten"])
def test_integer_input_raises_type_error(case):
    make, inputs = CASES[case]
    layer = make(np.float32)
    xs = list(inputs(np.random.default_rng(0), np.float32))
    xs[-1 if case == "Concat" else 0] = np.ones(xs[-1 if case == "Concat" else 0].shape, dtype=np.int64)
    with pytest.raises(TypeError, match=r"float32 or float64.*int64"):
        layer(*xs)


@pytest.mark.parametrize("case", PARAMETRIC)
@pytest.mark.parametrize("layer_dt, input_dt", [(np.float32, np.float64), (np.float64, np.float32)])
def test_input_dtype_must_match_parameters(case, layer_dt, input_dt):
    make, inputs = CASES[case]
    layer = make(layer_dt)
    (x,) = inputs(np.random.default_rng(0), input_dt)
    pattern = (f"input dtype {np.dtype(input_dt)} does not match the layer's parameters "
               f"\\({np.dtype(layer_dt)}\\)")
    with pytest.raises(TypeError, match=pattern):
        layer(x)


@pytest.mark.parametrize("layer", [nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.MaxPool2d(2), nn.AvgPool2d(2),
                                   nn.AdaptiveAvgPool2d(1)], ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("shape", [(2, 4, 4), (1, 2, 4, 4, 1), (4,)])
def test_spatial_layers_reject_wrong_ndim(layer, shape):
    with pytest.raises(ValueError, match=re.escape(f"expected a 4-D input of shape (N, C, H, W), got shape {shape}")):
        layer(np.ones(shape, dtype=np.float32))


def test_other_layers_reject_wrong_ndim():
    with pytest.raises(ValueError, match=r"Linear: expected a 2-D input of shape \(N, in_features\), got shape "
                                         r"\(2, 4, 1\)"):
        nn.Linear(4, 2)(np.ones((2, 4, 1), dtype=np.float32))
    with pytest.raises(ValueError, match=r"CrossEntropyLoss: expected a 2-D input.*got shape \(3,\)"):
        nn.CrossEntropyLoss()(np.ones(3), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"Concat: input 1 must be 4-D"):
        nn.Concat()(np.ones((1, 1, 2, 2)), np.ones((1, 2, 2)))
    with pytest.raises(ValueError, match="Flatten: expected an array with more than 1 axes"):
        nn.Flatten()(np.ones(3))


def test_channel_mismatch_raises():
    with pytest.raises(ValueError, match=re.escape("Conv2d: input has 2 channels, expected in_channels=3 "
                                                   "(input shape (1, 2, 4, 4) as NCHW)")):
        nn.Conv2d(3, 4, 3)(np.ones((1, 2, 4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match=re.escape("BatchNorm2d: input has 4 channels, expected num_features=3")):
        nn.BatchNorm2d(3)(np.ones((2, 4, 2, 2), dtype=np.float32))
    with pytest.raises(ValueError, match=re.escape("Linear: input has 5 features, expected in_features=4")):
        nn.Linear(4, 2)(np.ones((3, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"Concat: all inputs must share N, H and W.*\(1, 1, 2, 2\).*\(1, 1, 3, 2\)"):
        nn.Concat()(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 2)))
    with pytest.raises(TypeError, match="Concat: input 1 has dtype float32, input 0 has float64"):
        nn.Concat()(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2), dtype=np.float32))


# ---------------------------------------------------------------------------------------------------------
# invalid geometry
# ---------------------------------------------------------------------------------------------------------
TOO_BIG = "is larger than the padded input"


@pytest.mark.parametrize("make, shape, message", [
    (lambda: nn.Conv2d(1, 1, 5), (1, 1, 4, 6), f"kernel size (5, 5) (with dilation) {TOO_BIG} (4, 6)"),
    (lambda: nn.Conv2d(1, 1, 3, dilation=2), (1, 1, 4, 4), f"kernel size (5, 5) (with dilation) {TOO_BIG} (4, 4)"),
    (lambda: nn.Conv2d(1, 1, (1, 4), padding=(0, 1)), (1, 1, 3, 1), f"{TOO_BIG} (3, 3)"),
    (lambda: nn.MaxPool2d(3), (1, 1, 2, 5), f"MaxPool2d: kernel_size (3, 3) {TOO_BIG} (2, 5)"),
    (lambda: nn.AvgPool2d((2, 4), padding=(0, 1)), (1, 1, 3, 1), f"AvgPool2d: kernel_size (2, 4) {TOO_BIG} (3, 3)"),
])
def test_kernel_larger_than_padded_input_raises(make, shape, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()(np.ones(shape, dtype=np.float32))


def test_kernel_equal_to_padded_input_is_fine():
    assert nn.Conv2d(1, 1, 3, dilation=2, padding=1)(np.ones((1, 1, 3, 3), np.float32)).shape == (1, 1, 1, 1)
    assert nn.MaxPool2d(3, padding=1)(np.ones((1, 1, 1, 1), np.float32)).shape == (1, 1, 1, 1)


@pytest.mark.parametrize("make, message", [
    (lambda: nn.Conv2d(1, 1, 3, stride=0), "Conv2d: stride must be positive, got (0, 0)"),
    (lambda: nn.Conv2d(1, 1, 3, stride=(1, -2)), "Conv2d: stride must be positive, got (1, -2)"),
    (lambda: nn.MaxPool2d(2, stride=0), "MaxPool2d: stride must be positive, got (0, 0)"),
    (lambda: nn.AvgPool2d(2, stride=-1), "AvgPool2d: stride must be positive, got (-1, -1)"),
    (lambda: nn.Conv2d(1, 1, 3, padding=-1), "Conv2d: padding must be non-negative, got (-1, -1)"),
    (lambda: nn.MaxPool2d(3, padding=(0, -1)), "MaxPool2d: padding must be non-negative, got (0, -1)"),
    (lambda: nn.AvgPool2d(3, padding=-1), "AvgPool2d: padding must be non-negative, got (-1, -1)"),
    (lambda: nn.Conv2d(1, 1, 0), "Conv2d: kernel_size must be positive, got (0, 0)"),
    (lambda: nn.Conv2d(1, 1, 3, dilation=0), "Conv2d: dilation must be positive, got (0, 0)"),
    (lambda: nn.MaxPool2d(3, padding=2), "MaxPool2d: padding should be at most half of kernel size, got "
                                         "padding=(2, 2) for kernel_size=(3, 3)"),
    (lambda: nn.MaxPool2d(2, padding=(1, 2)), "padding should be at most half of kernel size"),
    (lambda: nn.AvgPool2d((3, 4), padding=(2, 0)), "AvgPool2d: padding should be at most half of kernel size"),
    (lambda: nn.AdaptiveAvgPool2d(0), "AdaptiveAvgPool2d: output_size must be positive, got (0, 0)"),
    (lambda: nn.Conv2d(0, 1, 3), "Conv2d: in_channels must be a positive int, got 0"),
    (lambda: nn.BatchNorm2d(0), "BatchNorm2d: num_features must be a positive int, got 0"),
    (lambda: nn.Linear(3, 0), "Linear: out_features must be a positive int, got 0"),
])
def test_invalid_hyperparameters_raise_value_error(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_pool_padding_of_exactly_half_the_kernel_is_fine():
    assert nn.MaxPool2d(2, padding=1)(np.ones((1, 1, 2, 2), np.float32)).shape == (1, 1, 2, 2)
    assert nn.AvgPool2d((3, 5), padding=(1, 2))(np.ones((1, 1, 3, 5), np.float32)).shape == (1, 1, 1, 1)


# ---------------------------------------------------------------------------------------------------------
# the fast tier's channel-major entry points agree with its NCHW API
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["Conv2d-fast", "Conv2d-fast-strided-dilated-nobias", "BatchNorm2d-fast-train",
                                  "MaxPool2d-fast", "AvgPool2d-fast", "AdaptiveAvgPool2d-fast", "ReLU-fast"])
def test_forward_cnhw_matches_nchw(case):
    make, inputs = CASES[case]
    rng = np.random.default_rng(0)
    (x,) = inputs(rng, np.float64)
    a, b = make(np.float64), make(np.float64)
    y = a(x)
    y_cnhw = b.forward_cnhw(np.ascontiguousarray(x.transpose(1, 0, 2, 3)))
    np.testing.assert_allclose(y_cnhw, y.transpose(1, 0, 2, 3), rtol=1e-13, atol=1e-15)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(b.backward_cnhw(np.ascontiguousarray(dy.transpose(1, 0, 2, 3))),
                               a.backward(dy).transpose(1, 0, 2, 3), rtol=1e-13, atol=1e-15)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_allclose(q.grad, p.grad, rtol=1e-13, atol=1e-15, err_msg=name)


# ---------------------------------------------------------------------------------------------------------
# state_dict / load_state_dict / to
# ---------------------------------------------------------------------------------------------------------
def small_model(seed, dtype=np.float32):
    g = np.random.default_rng(seed)
    features = nn.Sequential(OrderedDict([
        ("conv0", nn.Conv2d(2, 4, 3, padding=1, bias=False, dtype=dtype, generator=g)),
        ("norm0", nn.BatchNorm2d(4, dtype=dtype)),
        ("relu0", nn.ReLU()),
        ("denseblock1", nn.Sequential(OrderedDict([
            ("denselayer1", nn.Sequential(OrderedDict([
                ("norm1", nn.BatchNorm2d(4, dtype=dtype)),
                ("relu1", nn.ReLU()),
                ("conv1", nn.Conv2d(4, 3, 1, dtype=dtype, generator=g)),
            ]))),
        ]))),
        ("pool0", nn.AdaptiveAvgPool2d(1)),
    ]))
    return nn.Sequential(OrderedDict([("features", features), ("flatten", nn.Flatten()),
                                      ("classifier", nn.Linear(3, 5, dtype=dtype, generator=g))]))


BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
MODEL_KEYS = (["features.conv0.weight"] + [f"features.norm0.{k}" for k in BN_KEYS]
              + [f"features.denseblock1.denselayer1.norm1.{k}" for k in BN_KEYS]
              + ["features.denseblock1.denselayer1.conv1.weight", "features.denseblock1.denselayer1.conv1.bias",
                 "classifier.weight", "classifier.bias"])


def randomize_state(model, seed):
    """Give every parameter and buffer a distinctive value (in place, without running forward)."""
    rng = np.random.default_rng(seed)
    for _, p in model.named_parameters():
        p.data[...] = rng.standard_normal(p.shape)
    for name, b in model.named_buffers():
        b[...] = rng.integers(1, 100) if name.endswith("num_batches_tracked") else 0.5 + rng.random(b.shape)
    return model


def test_state_dict_names_are_pytorch_style():
    assert list(small_model(0).state_dict()) == MODEL_KEYS


def test_state_dict_round_trip():
    a, b = randomize_state(small_model(0), 1), small_model(2)
    sd = a.state_dict()
    assert b.load_state_dict(sd) == ([], [])
    sd_b = b.state_dict()
    assert list(sd_b) == MODEL_KEYS
    for key in MODEL_KEYS:
        np.testing.assert_array_equal(sd_b[key], sd[key], err_msg=key)
        assert sd_b[key].dtype == sd[key].dtype, key
    a.eval(), b.eval()
    x = np.random.default_rng(3).standard_normal((2, 2, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(a(x), b(x))
    # state_dict holds copies: changing it does not change the model
    sd["classifier.bias"][...] = 123.0
    assert not np.any(a.classifier.bias.data == 123.0)
    # values are cast to the model's dtype
    b.load_state_dict({k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in sd.items()})
    assert b.classifier.bias.data.dtype == np.float32 and np.all(b.classifier.bias.data == 123.0)


def test_state_dict_keeps_batchnorm_buffers_after_a_train_forward():
    """Regression: `self.running_mean *= ...` in BatchNorm2d once unregistered the buffer (fixed in 231bb6d)."""
    model = small_model(0)
    model(np.random.default_rng(0).standard_normal((2, 2, 5, 5)).astype(np.float32))
    sd = model.state_dict()
    assert list(sd) == MODEL_KEYS
    assert sd["features.norm0.num_batches_tracked"] == 1
    np.testing.assert_array_equal(sd["features.norm0.running_mean"], model.features.norm0.running_mean)
    # ... and a checkpoint of a trained model loads into another trained model
    other = small_model(1)
    other(np.ones((2, 2, 5, 5), np.float32))
    assert other.load_state_dict(sd) == ([], [])
    np.testing.assert_array_equal(other.features.norm0.running_var, model.features.norm0.running_var)


def test_to_converts_running_stats_after_a_train_forward():
    """Regression, as above: Module.to must still see the running statistics after training."""
    bn = nn.BatchNorm2d(3)
    bn(np.ones((2, 3, 2, 2), dtype=np.float32))
    bn.to(np.float64)
    assert bn.running_mean.dtype == np.float64 and bn.running_var.dtype == np.float64


def test_load_state_dict_strict_reports_every_problem_at_once():
    model = randomize_state(small_model(0), 1)
    before = model.state_dict()
    sd = small_model(5).state_dict()
    del sd["classifier.bias"]
    sd["features.extra.weight"] = np.zeros(3, np.float32)
    sd["features.conv0.weight"] = np.zeros((4, 2, 5, 5), np.float32)
    with pytest.raises(ValueError) as info:
        model.load_state_dict(sd)
    message = str(info.value)
    assert "size mismatch for features.conv0.weight: checkpoint has shape (4, 2, 5, 5), model expects (4, 2, 3, 3)" \
        in message
    assert "missing keys: classifier.bias" in message
    assert "unexpected keys: features.extra.weight" in message
    for key, value in model.state_dict().items():                 # nothing was loaded
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_load_state_dict_non_strict():
    model = small_model(0)
    sd = randomize_state(small_model(5), 2).state_dict()
    del sd["classifier.bias"]
    sd["features.extra.weight"] = np.zeros(3, np.float32)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert (missing, unexpected) == (["classifier.bias"], ["features.extra.weight"])
    np.testing.assert_array_equal(model.classifier.weight.data, sd["classifier.weight"])
    np.testing.assert_array_equal(model.features.norm0.running_var, sd["features.norm0.running_var"])
    sd["classifier.weight"] = np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match=r"size mismatch for classifier\.weight"):      # even when not strict
        model.load_state_dict(sd, strict=False)


def test_module_to_float64_and_back():
    model = randomize_state(small_model(0), 1)
    x = np.random.default_rng(0).standard_normal((2, 2, 5, 5))
    model.eval()
    y32 = model(x.astype(np.float32))
    assert model.to(np.float64) is model
    for name, p in model.named_parameters():
        assert p.data.dtype == np.float64 and p.grad.dtype == np.float64, name
    for name, b in model.named_buffers():
        assert b.dtype == (np.int64 if name.endswith("num_batches_tracked") else np.float64), name
    y64 = model(x)
    assert y64.dtype == np.float64
    np.testing.assert_allclose(y64, y32, rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="Conv2d: input dtype float32 does not match"):
        model(x.astype(np.float32))
    model.float()
    assert all(p.data.dtype == np.float32 for p in model.parameters())
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int32"):
        model.to(np.int32)
