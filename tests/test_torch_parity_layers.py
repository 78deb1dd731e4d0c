"""Parity with torch.nn: same weights and input give the same output, input gradient and parameter gradients.

float64 agrees to ~1e-10 relative to the scale of the values, float32 to ~1e-4. PyTorch is a test-only
dependency; without it this module is skipped.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, strategies as st

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from numpy_densenet import fast, nn  # noqa: E402

torch.set_num_threads(1)

DTYPES = [np.float64, np.float32]
REL = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-4}


def tdtype(dt):
    """The torch dtype of a NumPy float dtype."""
    return {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}[np.dtype(dt)]


def assert_close(ours, theirs, what=""):
    """Equal up to REL[dtype] relative to the scale of the expected values (elementwise rtol as well)."""
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else np.asarray(theirs)
    ours = np.asarray(ours)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape} vs torch {theirs.shape}"
    assert ours.dtype == theirs.dtype, f"{what}: dtype {ours.dtype} vs torch {theirs.dtype}"
    rel = REL[ours.dtype]
    scale = max(1.0, float(np.abs(theirs).max(initial=0.0)))
    np.testing.assert_allclose(ours, theirs, rtol=rel, atol=rel * scale, err_msg=what)


def copy_params(ours, theirs):
    """Give the torch module our parameter values (names are the same)."""
    with torch.no_grad():
        for name, p in ours.named_parameters():
            theirs.get_parameter(name).copy_(torch.from_numpy(p.data))


def check_parity(ours, theirs, xs, rng, check_params=True):
    """Forward and backward both modules with the same inputs and upstream gradient; compare everything."""
    xs = xs if isinstance(xs, tuple) else (xs,)
    copy_params(ours, theirs)
    y = ours(*xs)
    dy = rng.standard_normal(y.shape).astype(y.dtype)
    dxs = ours.backward(dy)
    dxs = dxs if isinstance(dxs, tuple) else (dxs,)
    txs = [torch.tensor(x, requires_grad=True) for x in xs]
    ty = theirs(*txs)
    ty.backward(torch.from_numpy(dy))
    assert_close(y, ty, "output")
    for i, (dx, tx) in enumerate(zip(dxs, txs)):
        assert_close(dx, tx.grad, f"input gradient {i}")
    if check_params:
        names = [name for name, _ in ours.named_parameters()]
        assert names == [name for name, _ in theirs.named_parameters()]
        for name, p in ours.named_parameters():
            assert_close(p.grad, theirs.get_parameter(name).grad, f"{name}.grad")
    return y


def draw_rng(data):
    return np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1), label="seed"))


def draw_pool_geometry(data):
    k = tuple(data.draw(st.integers(1, 3)) for _ in "hw")
    s = tuple(data.draw(st.integers(1, 3)) for _ in "hw")
    p = tuple(data.draw(st.integers(0, ki // 2)) for ki in k)
    H, W = (data.draw(st.integers(max(1, ki - 2 * pi), max(1, ki - 2 * pi) + 5)) for ki, pi in zip(k, p))
    return k, s, p, H, W


# ---------------------------------------------------------------------------------------------------------
# Conv2d and Linear
# ---------------------------------------------------------------------------------------------------------
@given(data=st.data())
def test_conv2d_parity(data):
    rng = draw_rng(data)
    dt = data.draw(st.sampled_from(DTYPES), label="dtype")
    k = tuple(data.draw(st.integers(1, 3)) for _ in "hw")
    d = tuple(data.draw(st.integers(1, 2)) for _ in "hw")
    s = tuple(data.draw(st.integers(1, 3)) for _ in "hw")
    p = tuple(data.draw(st.integers(0, 2)) for _ in "hw")
    H, W = (data.draw(st.integers(max(1, di * (ki - 1) + 1 - 2 * pi), max(1, di * (ki - 1) + 1 - 2 * pi) + 5))
            for ki, di, pi in zip(k, d, p))
    N, C, O = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    bias = data.draw(st.booleans(), label="bias")
    ours = nn.Conv2d(C, O, k, stride=s, padding=p, dilation=d, bias=bias, dtype=dt, generator=rng)
    theirs = torch.nn.Conv2d(C, O, k, stride=s, padding=p, dilation=d, bias=bias, dtype=tdtype(dt))
    check_parity(ours, theirs, rng.standard_normal((N, C, H, W)).astype(dt), rng)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("kwargs", [dict(), dict(stride=2, padding=1), dict(padding=(2, 1), dilation=(2, 3)),
                                    dict(stride=(1, 2), bias=False), dict(kernel_size=1), dict(kernel_size=1,
                                                                                                bias=False)],
                         ids=["plain", "stride-pad", "dilated", "nobias", "pointwise", "pointwise-nobias"])
@pytest.mark.parametrize("tier", [nn, fast], ids=["plain", "fast"])
def test_conv2d_parity_fixed_cases(kwargs, dt, tier):
    rng = np.random.default_rng(0)
    kwargs = dict(kwargs)
    k = kwargs.pop("kernel_size", 3)
    ours = tier.Conv2d(5, 6, k, dtype=dt, generator=rng, **kwargs)
    theirs = torch.nn.Conv2d(5, 6, k, dtype=tdtype(dt), **kwargs)
    check_parity(ours, theirs, rng.standard_normal((3, 5, 9, 8)).astype(dt), rng)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_parity(bias, dt):
    rng = np.random.default_rng(1)
    ours = nn.Linear(7, 4, bias=bias, dtype=dt, generator=rng)
    theirs = torch.nn.Linear(7, 4, bias=bias, dtype=tdtype(dt))
    check_parity(ours, theirs, rng.standard_normal((5, 7)).astype(dt), rng)


# ---------------------------------------------------------------------------------------------------------
# BatchNorm2d
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("momentum", [0.1, 0.7, None])
@pytest.mark.parametrize("tier", [nn, fast], ids=["plain", "fast"])
def test_batchnorm2d_parity_train_then_eval(momentum, dt, tier):
    rng = np.random.default_rng(2)
    C = 3
    ours = tier.BatchNorm2d(C, eps=1e-4, momentum=momentum, dtype=dt)
    theirs = torch.nn.BatchNorm2d(C, eps=1e-4, momentum=momentum, dtype=tdtype(dt))
    ours.weight.data[...] = 0.5 + rng.random(C)
    ours.bias.data[...] = rng.standard_normal(C)
    for step in range(1, 5):
        shape = (step % 2 + 1, C, 3, step % 3 + 2)
        x = (2.0 * rng.standard_normal(shape) + step).astype(dt)
        ours.zero_grad()
        theirs.zero_grad()
        check_parity(ours, theirs, x, rng)                           # train mode: batch statistics
        assert_close(ours.running_mean, theirs.running_mean, "running_mean")
        assert_close(ours.running_var, theirs.running_var, "running_var")
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == step
    ours.eval(), theirs.eval()
    ours.zero_grad()
    theirs.zero_grad()
    check_parity(ours, theirs, rng.standard_normal((2, C, 4, 3)).astype(dt), rng)   # eval: running statistics
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 4
    assert_close(ours.running_mean, theirs.running_mean, "running_mean after eval")


@given(data=st.data())
def test_batchnorm2d_parity_hypothesis(data):
    rng = draw_rng(data)
    dt = data.draw(st.sampled_from(DTYPES), label="dtype")
    N, C = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    H, W = data.draw(st.integers(1, 4)), data.draw(st.integers(2, 4))
    ours = nn.BatchNorm2d(C, dtype=dt)
    theirs = torch.nn.BatchNorm2d(C, dtype=tdtype(dt))
    ours.weight.data[...] = rng.standard_normal(C)
    ours.bias.data[...] = rng.standard_normal(C)
    if data.draw(st.booleans(), label="eval"):
        running_mean, running_var = rng.standard_normal(C), 0.5 + rng.random(C)
        ours.running_mean[...] = running_mean
        ours.running_var[...] = running_var
        with torch.no_grad():
            theirs.running_mean.copy_(torch.from_numpy(running_mean))
            theirs.running_var.copy_(torch.from_numpy(running_var))
        ours.eval(), theirs.eval()
    check_parity(ours, theirs, rng.standard_normal((N, C, H, W)).astype(dt), rng)
    assert_close(ours.running_mean, theirs.running_mean, "running_mean")
    assert_close(ours.running_var, theirs.running_var, "running_var")


# ---------------------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------------------
@given(data=st.data())
def test_maxpool2d_parity_with_and_without_ties(data):
    rng = draw_rng(data)
    dt = data.draw(st.sampled_from(DTYPES), label="dtype")
    k, s, p, H, W = draw_pool_geometry(data)
    shape = (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), H, W)
    if data.draw(st.booleans(), label="ties"):
        x = rng.integers(-1, 2, shape).astype(dt)                   # many tied maxima: routing must agree
    else:
        x = rng.standard_normal(shape).astype(dt)
    check_parity(nn.MaxPool2d(k, s, p), torch.nn.MaxPool2d(k, s, p), x, rng)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("tier", [nn, fast], ids=["plain", "fast"])
def test_maxpool2d_parity_all_ties(dt, tier):
    """Constant input: every window ties everywhere; torch and we both pick each window's first element."""
    rng = np.random.default_rng(3)
    for k, s, p in [(2, 1, 0), (3, 2, 1), (3, 1, 1), ((2, 3), (1, 2), (1, 1))]:
        check_parity(tier.MaxPool2d(k, s, p), torch.nn.MaxPool2d(k, s, p), np.full((2, 2, 6, 7), 0.5, dt), rng)


@given(data=st.data())
def test_avgpool2d_parity(data):
    rng = draw_rng(data)
    dt = data.draw(st.sampled_from(DTYPES), label="dtype")
    k, s, p, H, W = draw_pool_geometry(data)
    include = data.draw(st.booleans(), label="count_include_pad")
    x = rng.standard_normal((data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3)), H, W)).astype(dt)
    check_parity(nn.AvgPool2d(k, s, p, count_include_pad=include),
                 torch.nn.AvgPool2d(k, s, p, count_include_pad=include), x, rng)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("include", [True, False])
def test_avgpool2d_parity_padded(include, dt):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 7, 6)).astype(dt)
    for k, s, p in [(3, 2, 1), (2, 1, 1), ((3, 2), (2, 1), (1, 1)), (5, 2, 2)]:
        check_parity(nn.AvgPool2d(k, s, p, count_include_pad=include),
                     torch.nn.AvgPool2d(k, s, p, count_include_pad=include), x, rng)


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("in_hw, out", [((5, 7), (2, 3)), ((5, 7), 1), ((6, 6), (3, 3)), ((7, 5), (3, 4)),
                                        ((3, 2), (5, 4)), ((1, 1), 1), ((4, 9), (1, 3))])
def test_adaptive_avgpool2d_parity(in_hw, out, dt):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3) + in_hw).astype(dt)
    check_parity(nn.AdaptiveAvgPool2d(out), torch.nn.AdaptiveAvgPool2d(out), x, rng)


@given(data=st.data())
def test_adaptive_avgpool2d_parity_hypothesis(data):
    rng = draw_rng(data)
    dt = data.draw(st.sampled_from(DTYPES), label="dtype")
    H, W = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    out = (data.draw(st.integers(1, H + 2)), data.draw(st.integers(1, W + 2)))
    x = rng.standard_normal((data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), H, W)).astype(dt)
    check_parity(nn.AdaptiveAvgPool2d(out), torch.nn.AdaptiveAvgPool2d(out), x, rng)


# ---------------------------------------------------------------------------------------------------------
# element-wise layers, Flatten, Concat
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dt", DTYPES)
def test_relu_parity(dt):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 3, 4, 5)).astype(dt)
    x[0, 0, 0, :3] = 0.0                                            # the gradient at 0 is 0 in both
    check_parity(nn.ReLU(), torch.nn.ReLU(), x, rng)


@pytest.mark.parametrize("dt", DTYPES)
def test_flatten_parity(dt):
    rng = np.random.default_rng(7)
    check_parity(nn.Flatten(), torch.nn.Flatten(), rng.standard_normal((3, 2, 4, 5)).astype(dt), rng)


class _TorchCat(torch.nn.Module):
    def forward(self, *xs):
        return torch.cat(xs, dim=1)


@pytest.mark.parametrize("dt", DTYPES)
def test_concat_parity(dt):
    rng = np.random.default_rng(8)
    xs = tuple(rng.standard_normal((2, c, 3, 4)).astype(dt) for c in (3, 1, 2))
    check_parity(nn.Concat(), _TorchCat(), xs, rng)


@pytest.mark.parametrize("dt", DTYPES)
def test_dropout_parity_where_deterministic(dt):
    """Masks come from different generators, so compare where torch is deterministic: eval, p=0, p=1."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 4, 4)).astype(dt)
    check_parity(nn.Dropout(0.5, seed=0).eval(), torch.nn.Dropout(0.5).eval(), x, rng)
    check_parity(nn.Dropout(0.0, seed=0), torch.nn.Dropout(0.0), x, rng)
    check_parity(nn.Dropout(1.0, seed=0), torch.nn.Dropout(1.0), x, rng)


@pytest.mark.parametrize("dt", DTYPES)
def test_dropout_train_matches_torch_given_the_same_mask(dt):
    """Inverted dropout: with our mask applied by hand, torch's formula x * mask / (1 - p) gives our output."""
    rng = np.random.default_rng(10)
    p = 0.3
    x = (rng.standard_normal((4, 5, 3, 3)) + 5.0).astype(dt)       # never 0: zeros in y mark dropped values
    d = nn.Dropout(p, seed=1)
    y = d(x)
    mask = torch.from_numpy((y != 0).astype(dt))
    tx = torch.tensor(x, requires_grad=True)
    ty = tx * mask / (1 - p)
    dy = rng.standard_normal(x.shape).astype(dt)
    ty.backward(torch.from_numpy(dy))
    assert_close(y, ty, "output")
    assert_close(d.backward(dy), tx.grad, "input gradient")


# ---------------------------------------------------------------------------------------------------------
# CrossEntropyLoss
# ---------------------------------------------------------------------------------------------------------
@given(data=st.data())
def test_cross_entropy_parity(data):
    rng = draw_rng(data)
    dt = data.draw(st.sampled_from(DTYPES), label="dtype")
    N, K = data.draw(st.integers(1, 8)), data.draw(st.integers(2, 10))
    e = data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]), label="label_smoothing")
    reduction = data.draw(st.sampled_from(["mean", "sum"]))
    scale = data.draw(st.sampled_from([1.0, 10.0, 1e4]), label="logit scale")
    logits = (scale * rng.standard_normal((N, K))).astype(dt)
    labels = rng.integers(0, K, N)
    ours = nn.CrossEntropyLoss(label_smoothing=e, reduction=reduction)
    loss = ours(logits, labels)
    dout = float(rng.uniform(0.5, 2.0))
    grad = ours.backward(dout)
    tlogits = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.CrossEntropyLoss(label_smoothing=e, reduction=reduction)(tlogits, torch.from_numpy(labels))
    (tloss * dout).backward()
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert_close(loss, tloss, "loss")
    assert_close(grad, tlogits.grad, "dlogits")


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("e", [0.0, 0.2])
def test_cross_entropy_parity_huge_logits(e, dt):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [3.0, -2.0, 1e4]], dtype=dt)
    labels = np.array([1, 0, 2])
    ours = nn.CrossEntropyLoss(label_smoothing=e)
    loss = ours(logits, labels)
    grad = ours.backward()
    tlogits = torch.tensor(logits, requires_grad=True)
    tloss = F.cross_entropy(tlogits, torch.from_numpy(labels), label_smoothing=e)
    tloss.backward()
    assert_close(loss, tloss, "loss")
    assert_close(grad, tlogits.grad, "dlogits")


# ---------------------------------------------------------------------------------------------------------
# state_dict names and values are interchangeable with torch's
# ---------------------------------------------------------------------------------------------------------
def _ours_model(seed):
    g = np.random.default_rng(seed)
    return nn.Sequential(OrderedDict([
        ("features", nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(2, 4, 3, padding=1, bias=False, dtype=np.float64, generator=g)),
            ("norm0", nn.BatchNorm2d(4, dtype=np.float64)),
            ("relu0", nn.ReLU()),
            ("block", nn.Sequential(OrderedDict([("conv1", nn.Conv2d(4, 3, 1, dtype=np.float64, generator=g))]))),
            ("pool", nn.AdaptiveAvgPool2d(1)),
        ]))),
        ("flatten", nn.Flatten()),
        ("classifier", nn.Linear(3, 5, dtype=np.float64, generator=g)),
    ]))


def _torch_model():
    tnn = torch.nn
    return tnn.Sequential(OrderedDict([
        ("features", tnn.Sequential(OrderedDict([
            ("conv0", tnn.Conv2d(2, 4, 3, padding=1, bias=False)),
            ("norm0", tnn.BatchNorm2d(4)),
            ("relu0", tnn.ReLU()),
            ("block", tnn.Sequential(OrderedDict([("conv1", tnn.Conv2d(4, 3, 1))]))),
            ("pool", tnn.AdaptiveAvgPool2d(1)),
        ]))),
        ("flatten", tnn.Flatten()),
        ("classifier", tnn.Linear(3, 5)),
    ])).double()


def test_state_dict_loads_into_torch_and_back():
    ours, theirs = _ours_model(0), _torch_model()
    rng = np.random.default_rng(11)
    ours.features.norm0.running_mean[...] = rng.standard_normal(4)
    ours.features.norm0.running_var[...] = 0.5 + rng.random(4)
    ours.features.norm0.num_batches_tracked[...] = 9
    sd = ours.state_dict()
    assert list(sd) == list(theirs.state_dict())
    theirs.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, strict=True)
    x = rng.standard_normal((3, 2, 6, 5))
    ours.eval(), theirs.eval()
    assert_close(ours(x), theirs(torch.from_numpy(x)), "eval output after loading into torch")
    # and back: torch's (freshly initialised) weights into a new model of ours
    theirs = _torch_model()
    back = _ours_model(1)
    assert back.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()}) == ([], [])
    back.eval(), theirs.eval()
    assert_close(back(x), theirs(torch.from_numpy(x)), "eval output after loading from torch")


def test_sequential_train_step_parity():
    """A small network end to end in train mode: loss, input gradient, every parameter gradient, running stats."""
    ours, theirs = _ours_model(2), _torch_model()
    copy_params(ours, theirs)
    rng = np.random.default_rng(12)
    x, labels = rng.standard_normal((4, 2, 6, 5)), rng.integers(0, 5, 4)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    loss = criterion(ours(x), labels)
    dx = ours.backward(criterion.backward())
    tx = torch.tensor(x, requires_grad=True)
    tloss = F.cross_entropy(theirs(tx), torch.from_numpy(labels), label_smoothing=0.1)
    tloss.backward()
    assert_close(loss, tloss, "loss")
    assert_close(dx, tx.grad, "input gradient")
    for name, p in ours.named_parameters():
        assert_close(p.grad, theirs.get_parameter(name).grad, f"{name}.grad")
    assert_close(ours.features.norm0.running_mean, theirs.features.norm0.running_mean, "running_mean")
    assert_close(ours.features.norm0.running_var, theirs.features.norm0.running_var, "running_var")
