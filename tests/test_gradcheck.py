"""Tests of numpy_densenet.gradcheck: the checker must fail on real bugs and must not cry wolf.

Four parts:

1. planted bugs - small subclasses of real layers with one deliberate backward error each; every one must
   fail in every mode, on the right tensor's row (or on the reentrancy / accumulation protocol checks);
2. no false alarms - every correct layer passes in every mode, float32 modules are checked in float64, and
   the module handed to gradcheck is left exactly as it was;
3. kinks - ReLU at 0 and tied maxima are reported as non-differentiable points, not failures, while a
   wrong gradient at a kink is still a failure;
4. argument validation.

(Known weaknesses used to be pinned with ``xfail(strict=True)`` tests; the last one, double counting at a
tie in directional mode, was fixed by issue 12.)
"""
import copy

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from numpy_densenet import GradcheckError, GradcheckResult, fast, gradcheck, nn
from numpy_densenet.nn.checks import check_grad, take_cache
from numpy_densenet.nn.concat import split_channels

ALL_MODES = ("full", "sampled", "directional")
F64 = np.float64
FAST = settings(max_examples=4, deadline=None)


def failing(result):
    """Names of the rows that failed."""
    return {r.name for r in result.rows if r.status == "FAIL"}


def row(result, name):
    matches = [r for r in result.rows if r.name == name]
    assert len(matches) == 1, f"expected exactly one row named {name!r}: {result.table()}"
    return matches[0]


def expected_probes(mode, size, samples=16, directions=3, sampled_directions=1):
    """Probes on a passing row: sampled mode adds its direction(s) when it does not cover every coordinate."""
    sampled = size if size <= samples else samples + sampled_directions
    return {"full": size, "sampled": sampled, "directional": directions}[mode]


# ----------------------------------------------------------------------------------------------------------
# 1. Planted bugs
# ----------------------------------------------------------------------------------------------------------
class LinearTransposedDx(nn.Linear):
    """Square weight, dx = dy W^T instead of dy W (shapes still match)."""

    def backward(self, dout):
        super().backward(dout)                              # correct parameter gradients
        return dout @ self.weight.data.T


class ConvTransposedDx(fast.Conv2d):
    """dx transposed in H and W (shapes still match on square images)."""

    def backward_cnhw(self, dout):
        return np.ascontiguousarray(super().backward_cnhw(dout).transpose(0, 1, 3, 2))


class BatchNormNoMeanTerm(fast.BatchNorm2d):
    """Train-mode dx without the ``- sum(dy)`` term (the gradient through the batch mean)."""

    def backward_cnhw(self, dout):
        x, mean, invstd, training, _ = take_cache(self)
        dout = check_grad(self, dout, x.shape, self.weight.dtype)
        C = x.shape[0]
        M = x.size // C
        dy, x2 = dout.reshape(C, M), x.reshape(C, M)
        dbeta = dy.sum(axis=1)
        dgamma = invstd * (np.einsum("cm,cm->c", dy, x2) - mean * dbeta)
        self.weight.grad += dgamma
        self.bias.grad += dbeta
        a = self.weight.data * invstd
        b = -a * invstd * dgamma / M
        c = -b * mean                      # BUG: the mean path, - a * dbeta / M, is missing
        return (dy * a[:, None] + x2 * b[:, None] + c[:, None]).reshape(x.shape)


class ConcatShiftedSplit(nn.Concat):
    """The backward split taken one channel late (offsets + 1, wrapping around so that shapes still match)."""

    def backward(self, dout):
        offsets, shape, dtype = take_cache(self)
        dout = check_grad(self, dout, shape, dtype)
        return split_channels(np.roll(dout, -1, axis=1), offsets)


class LinearBiasWrongAxis(nn.Linear):
    """bias.grad summed over the features (axis 1) instead of the batch; shapes match when N == out."""
    seen = []                                               # class-level: survives gradcheck's deepcopy

    def backward(self, dout):
        LinearBiasWrongAxis.seen.append(np.array(dout, copy=True))
        before = self.bias.grad.copy()
        dx = super().backward(dout)
        self.bias.grad[...] = before + dout.sum(axis=1)
        return dx


class ConvBiasWrongAxis(fast.Conv2d):
    """bias.grad summed over the out-channel axis instead of (N, Ho, Wo); shapes match when O == N*Ho*Wo."""

    def backward_cnhw(self, dout):
        before = self.bias.grad.copy()
        dx = super().backward_cnhw(dout)
        self.bias.grad[...] = before + np.asarray(dout).reshape(self.out_channels, -1).sum(axis=0)
        return dx


class LinearAssignsGrad(nn.Linear):
    """param.grad = ... instead of +=."""

    def backward(self, dout):
        x = take_cache(self)
        dout = check_grad(self, dout, (x.shape[0], self.out_features), self.weight.dtype)
        self.weight.grad = dout.T @ x
        self.bias.grad = dout.sum(axis=0)
        return dout @ self.weight.data


class ConvAssignsBiasGrad(fast.Conv2d):
    """Accumulates weight.grad correctly but assigns bias.grad."""

    def backward_cnhw(self, dout):
        dx = super().backward_cnhw(dout)
        self.bias.grad[...] = np.asarray(dout).reshape(self.out_channels, -1).sum(axis=1)
        return dx


class ReLUCountingCalls(nn.ReLU):
    """Leaks state between calls: dx is scaled by the number of backward calls so far."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def backward(self, dout):
        self.calls += 1
        return super().backward(dout) * self.calls


class DropoutFreshMask(nn.Dropout):
    """backward draws a new random mask instead of using the one forward cached."""

    def backward(self, dout):
        keep, shape, dtype = take_cache(self)
        dout = check_grad(self, dout, shape, dtype)
        fresh = self.generator.random(shape, dtype=dtype) >= self.p
        return dout * fresh / (1.0 - self.p)


class ConvOneWrongCoordinate(nn.Conv2d):
    """dx wrong by 0.1 at a single coordinate, (0, 0, 0, 0) in NCHW."""
    seen = []

    def backward(self, dout):
        ConvOneWrongCoordinate.seen.append(np.array(dout, copy=True))
        dx = np.array(super().backward(dout), copy=True)
        dx[0, 0, 0, 0] += 0.1
        return dx


def _rng(seed=0):
    return np.random.default_rng(seed)


def _randomise_bn(bn, rng):
    bn.weight.data[...] = rng.uniform(0.5, 1.5, bn.num_features)
    bn.bias.data[...] = rng.standard_normal(bn.num_features)
    return bn


def _bn_no_mean(dtype=F64):
    rng = _rng(3)
    bn = _randomise_bn(BatchNormNoMeanTerm(3, dtype=dtype), rng)
    return bn, rng.standard_normal((2, 3, 3, 3)).astype(dtype)


# name -> (module, input, failing rows, reentrant, accumulates)
PLANTED = {
    "linear_transposed_dx": lambda: (LinearTransposedDx(4, 4, dtype=F64, generator=_rng(1)),
                                     _rng(2).standard_normal((3, 4)), {"input"}, True, True),
    "conv_transposed_dx": lambda: (ConvTransposedDx(2, 3, 3, padding=1, dtype=F64, generator=_rng(1)),
                                   _rng(2).standard_normal((2, 2, 4, 4)), {"input"}, True, True),
    "bn_missing_mean_term": lambda: _bn_no_mean() + ({"input"}, True, True),
    "bn_missing_mean_term_float32": lambda: _bn_no_mean(np.float32) + ({"input"}, True, True),
    "concat_split_off_by_one": lambda: (ConcatShiftedSplit(),
                                        tuple(_rng(i).standard_normal((2, 3, 2, 2)) for i in range(2)),
                                        {"input[0]", "input[1]"}, True, True),
    "linear_bias_wrong_axis": lambda: (LinearBiasWrongAxis(3, 4, dtype=F64, generator=_rng(1)),
                                       _rng(2).standard_normal((4, 3)), {"bias"}, True, True),
    "conv_bias_wrong_axis": lambda: (ConvBiasWrongAxis(2, 4, 3, dtype=F64, generator=_rng(1)),  # O = 1*2*2
                                     _rng(2).standard_normal((1, 2, 4, 4)), {"bias"}, True, True),
    "linear_assigns_grad": lambda: (LinearAssignsGrad(3, 2, dtype=F64, generator=_rng(1)),
                                    _rng(2).standard_normal((4, 3)), set(), True, False),
    "conv_assigns_bias_grad": lambda: (ConvAssignsBiasGrad(2, 3, 3, dtype=F64, generator=_rng(1)),
                                       _rng(2).standard_normal((2, 2, 4, 4)), set(), True, False),
    "relu_leaks_call_counter": lambda: (ReLUCountingCalls(), _rng(2).standard_normal((3, 5)), set(), False, True),
    "dropout_fresh_mask": lambda: (DropoutFreshMask(0.5, seed=7), _rng(2).standard_normal((2, 3, 4, 4)),
                                   {"input"}, True, True),
}


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("name", sorted(PLANTED))
def test_planted_bug_fails_on_the_right_row(name, mode):
    module, x, bad_rows, reentrant, accumulates = PLANTED[name]()
    result = gradcheck(module, x, mode=mode)
    assert isinstance(result, GradcheckResult)
    assert not result.passed, result.table()
    assert failing(result) == bad_rows, result.table()
    assert result.reentrant is reentrant, result.table()
    assert result.accumulates is accumulates, result.table()
    assert result.table().splitlines()[-1] == "FAILED"
    for r in result.rows:
        assert r.passed == (r.name not in bad_rows)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_planted_bugs_fail_for_other_seeds_too(seed):
    for name in sorted(PLANTED):
        module, x, bad_rows, reentrant, accumulates = PLANTED[name]()
        for mode in ALL_MODES:
            result = gradcheck(module, x, mode=mode, seed=seed)
            assert not result.passed and failing(result) == bad_rows, (name, result.table())
            assert (result.reentrant, result.accumulates) == (reentrant, accumulates), (name, result.table())


def test_protocol_failures_are_named_in_the_notes():
    module, x, *_ = PLANTED["conv_assigns_bias_grad"]()
    result = gradcheck(module, x)
    assert result.accumulates is False and result.reentrant is True
    (note,) = [n for n in result.notes if "did not add to .grad" in n]
    assert note.endswith(": bias"), note                  # weight accumulates correctly and is not blamed
    assert "accumulates into .grad (+=): NO" in result.table()

    module, x, *_ = PLANTED["relu_leaks_call_counter"]()
    result = gradcheck(module, x)
    assert result.reentrant is False and result.accumulates is True
    assert any("state leaks" in n for n in result.notes)
    assert "reentrant (backward twice, same gradients): NO" in result.table()


def test_report_row_gives_worst_index_and_values():
    LinearBiasWrongAxis.seen.clear()
    module, x, *_ = PLANTED["linear_bias_wrong_axis"]()
    result = gradcheck(module, x, mode="full")
    g = LinearBiasWrongAxis.seen[0]                         # the upstream gradient gradcheck used
    assert g.shape == (4, 4) and np.unique(g).size == g.size     # non-uniform
    right, wrong = g.sum(axis=0), g.sum(axis=1)
    k = int(np.argmax(np.abs(right - wrong)))
    r = row(result, "bias")
    assert r.status == "FAIL" and r.probes == 4 and tuple(r.shape) == (4,)
    assert tuple(int(i) for i in r.worst) == (k,)
    assert r.analytic == pytest.approx(wrong[k], abs=1e-12)
    assert r.numeric == pytest.approx(right[k], abs=1e-7)
    assert r.max_abs_err == pytest.approx(np.abs(right - wrong).max(), abs=1e-7)
    assert 0 < r.max_rel_err <= 2.0
    line = [ln for ln in result.table().splitlines() if ln.startswith("bias ")][0]
    assert f"({k},)" in line and f"{wrong[k]:.6g}" in line and line.rstrip().endswith("FAIL")


def test_raise_exception_raises_with_table_and_failing_tensor():
    module, x, *_ = PLANTED["conv_bias_wrong_axis"]()
    with pytest.raises(GradcheckError) as info:
        gradcheck(module, x, mode="sampled", raise_exception=True)
    err = info.value
    assert isinstance(err, AssertionError)
    message = str(err)
    assert err.result.passed is False and failing(err.result) == {"bias"}
    assert message.strip() == err.result.table()
    assert "max abs err" in message and "worst at" in message and message.rstrip().endswith("FAILED")
    bias_lines = [ln for ln in message.splitlines() if ln.startswith("bias ")]
    assert len(bias_lines) == 1 and "FAIL" in bias_lines[0]
    assert all("FAIL" not in ln for ln in message.splitlines() if ln.startswith(("input ", "weight ")))

    # A correct module with raise_exception=True returns normally.
    good = nn.Conv2d(2, 4, 3, dtype=F64, generator=_rng(1))
    assert gradcheck(good, x, mode="sampled", raise_exception=True).passed


# The subtle bug: dx wrong by 0.1 at one coordinate of a 64-element input.
SUBTLE_X = _rng(5).standard_normal((2, 2, 4, 4))


def _subtle_module():
    return ConvOneWrongCoordinate(2, 3, 3, padding=1, dtype=F64, generator=_rng(4))


@pytest.mark.parametrize("mode", ["full", "directional"])
def test_single_wrong_coordinate_is_caught_and_located(mode):
    ConvOneWrongCoordinate.seen.clear()
    result = gradcheck(_subtle_module(), SUBTLE_X, mode=mode)
    assert failing(result) == {"input"}, result.table()
    r = row(result, "input")
    assert tuple(int(i) for i in r.worst) == (0, 0, 0, 0), result.table()
    # the true derivative at (0,0,0,0): a correct twin fed the upstream gradient gradcheck used
    twin = nn.Conv2d(2, 3, 3, padding=1, dtype=F64, generator=_rng(4))
    twin(SUBTLE_X)
    true = twin.backward(ConvOneWrongCoordinate.seen[0])[0, 0, 0, 0]
    assert r.numeric == pytest.approx(true, abs=1e-7)
    assert r.analytic == pytest.approx(true + 0.1, abs=1e-12)
    assert r.max_abs_err == pytest.approx(0.1, abs=1e-7)
    if mode == "directional":
        assert "direction dir" in r.note                 # found by a direction, then located coordinate-wise
        for seed in range(1, 6):                          # dense random directions: any seed finds it
            assert failing(gradcheck(_subtle_module(), SUBTLE_X, mode=mode, seed=seed)) == {"input"}


def test_single_wrong_coordinate_in_sampled_mode_is_caught_only_when_sampled():
    """Without its random direction (sampled_directions=0), sampled mode probes 16 of the 64 coordinates: it
    catches the bug exactly when (0,0,0,0) is among them, so some seeds miss it. With samples >= size it
    probes everything and always catches it; with the default direction it always catches it too."""
    caught, missed = [], []
    for seed in range(12):
        result = gradcheck(_subtle_module(), SUBTLE_X, mode="sampled", seed=seed, sampled_directions=0)
        r = row(result, "input")
        assert r.probes == 16
        assert [other.name for other in result.rows] == ["input", "weight", "bias"]
        assert all(other.passed for other in result.rows if other.name != "input")
        if result.passed:
            missed.append(seed)
        else:
            assert tuple(int(i) for i in r.worst) == (0, 0, 0, 0)
            assert r.max_abs_err == pytest.approx(0.1, abs=1e-7)
            caught.append(seed)
    assert caught and missed, (caught, missed)
    for seed in range(3):
        result = gradcheck(_subtle_module(), SUBTLE_X, mode="sampled", seed=seed, samples=64)
        assert failing(result) == {"input"}
    for seed in missed:
        result = gradcheck(_subtle_module(), SUBTLE_X, mode="sampled", seed=seed)
        assert failing(result) == {"input"}, result.table()
        assert tuple(int(i) for i in row(result, "input").worst) == (0, 0, 0, 0), result.table()


# ----------------------------------------------------------------------------------------------------------
# 2. No false alarms
# ----------------------------------------------------------------------------------------------------------
def _conv(rng, stride=1, padding=0, dilation=1, kernel=3, cin=2, cout=3, hw=(5, 5), n=2, bias=True):
    m = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, dilation=dilation, bias=bias, dtype=F64,
                  generator=rng)
    return m, rng.standard_normal((n, cin) + hw)


def _bn(rng, train=True):
    bn = _randomise_bn(nn.BatchNorm2d(3, dtype=F64), rng)
    if not train:
        bn.running_mean[...] = rng.standard_normal(3)
        bn.running_var[...] = rng.uniform(0.5, 2.0, 3)
        bn.eval()
    return bn, rng.standard_normal((2, 3, 3, 3)) * 2 + 1


def _stack(rng):
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=F64, generator=rng), nn.BatchNorm2d(3, dtype=F64),
                          nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1, bias=False, dtype=F64, generator=rng),
                          nn.BatchNorm2d(3, dtype=F64), nn.ReLU(), nn.AvgPool2d(2))
    _randomise_bn(model[1], rng)
    _randomise_bn(model[4], rng)
    return model.train(), rng.standard_normal((2, 2, 4, 4))


# name -> builder(rng) -> (module, input, row names in order)
CORRECT = {
    "conv_stride2_pad1": lambda r: _conv(r, stride=2, padding=1) + (["input", "weight", "bias"],),
    "conv_dilation2_pad2": lambda r: _conv(r, padding=2, dilation=2, hw=(4, 5)) + (["input", "weight", "bias"],),
    "conv_rect_kernel_nobias": lambda r: _conv(r, kernel=(2, 3), stride=(1, 2), bias=False) + (["input", "weight"],),
    "conv_pointwise": lambda r: _conv(r, kernel=1, hw=(3, 3)) + (["input", "weight", "bias"],),
    "bn_train": lambda r: _bn(r) + (["input", "weight", "bias"],),
    "bn_eval": lambda r: _bn(r, train=False) + (["input", "weight", "bias"],),
    "relu": lambda r: (nn.ReLU(), r.standard_normal((2, 3, 3, 3)), ["input"]),
    "maxpool_k2": lambda r: (nn.MaxPool2d(2), r.standard_normal((2, 2, 4, 4)), ["input"]),
    "maxpool_k3_s2_p1": lambda r: (nn.MaxPool2d(3, stride=2, padding=1), r.standard_normal((1, 2, 5, 5)),
                                   ["input"]),
    "avgpool_k2": lambda r: (nn.AvgPool2d(2), r.standard_normal((2, 2, 4, 4)), ["input"]),
    "avgpool_k3_s2_p1_nopad": lambda r: (nn.AvgPool2d(3, 2, 1, count_include_pad=False),
                                         r.standard_normal((1, 2, 5, 5)), ["input"]),
    "adaptive_avgpool_2x3": lambda r: (nn.AdaptiveAvgPool2d((2, 3)), r.standard_normal((2, 2, 5, 7)), ["input"]),
    "adaptive_avgpool_1": lambda r: (nn.AdaptiveAvgPool2d(1), r.standard_normal((2, 3, 3, 3)), ["input"]),
    "linear": lambda r: (nn.Linear(4, 3, dtype=F64, generator=r), r.standard_normal((3, 4)),
                         ["input", "weight", "bias"]),
    "dropout_train": lambda r: (nn.Dropout(0.4, seed=int(r.integers(1 << 30))), r.standard_normal((2, 3, 3, 3)),
                                ["input"]),
    "dropout_eval": lambda r: (nn.Dropout(0.4, seed=1).eval(), r.standard_normal((2, 3)), ["input"]),
    "flatten": lambda r: (nn.Flatten(), r.standard_normal((2, 3, 2, 2)), ["input"]),
    "concat3": lambda r: (nn.Concat(), tuple(r.standard_normal((2, c, 2, 3)) for c in (1, 3, 2)),
                          ["input[0]", "input[1]", "input[2]"]),
    "cross_entropy_smoothing": lambda r: (nn.CrossEntropyLoss(label_smoothing=0.1),
                                          (r.standard_normal((4, 5)) * 3, r.integers(0, 5, 4)), ["input"]),
    "cross_entropy_sum": lambda r: (nn.CrossEntropyLoss(reduction="sum"),
                                    (r.standard_normal((3, 4)), r.integers(0, 4, 3)), ["input"]),
    "sequential_conv_bn_relu_x2_avgpool": lambda r: _stack(r) + ([
        "input", "0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "4.weight", "4.bias"],),
}


def _assert_clean(result, names, mode, sizes, smooth=True):
    assert result.passed, result.table()
    assert result.reentrant and result.accumulates
    assert [r.name for r in result.rows] == names
    for r in result.rows:
        assert r.status == "pass", result.table()
        if smooth:     # only ReLU and MaxPool have kinks (random inputs hit one with probability ~1e-6)
            assert r.kinks == 0, result.table()
        assert r.probes == expected_probes(mode, sizes[r.name]), result.table()
    assert result.table().splitlines()[-1] == "PASSED"


def _sizes(module, x, names):
    xs = x if isinstance(x, tuple) else (x,)
    floats = [a for a in xs if a.dtype.kind == "f"]
    sizes = dict(zip([n for n in names if n.startswith("input")], [a.size for a in floats]))
    sizes.update({n: p.size for n, p in module.named_parameters()})
    return sizes


@pytest.mark.parametrize("name", sorted(CORRECT))
@FAST
@given(seed=st.integers(0, 2**31 - 1))
def test_correct_layers_pass_in_every_mode(name, seed):
    module, x, names = CORRECT[name](np.random.default_rng(seed))
    sizes = _sizes(module, x, names)
    smooth = not any(isinstance(m, (nn.ReLU, nn.MaxPool2d)) for m in module.modules())
    for mode in ALL_MODES:
        result = gradcheck(module, x, mode=mode, seed=seed % 1000)
        _assert_clean(result, names, mode, sizes, smooth)


@FAST
@given(stride=st.integers(1, 2), padding=st.integers(0, 2), dilation=st.integers(1, 2),
       kernel=st.integers(1, 3), h=st.integers(3, 6), w=st.integers(3, 6), n=st.integers(1, 2),
       seed=st.integers(0, 2**31 - 1))
def test_conv2d_geometries_pass(stride, padding, dilation, kernel, h, w, n, seed):
    rng = np.random.default_rng(seed)
    conv, x = _conv(rng, stride, padding, dilation, kernel, hw=(h, w), n=n, cout=2)
    if min(conv.output_shape(h, w)) < 1:
        return
    for mode in ALL_MODES:
        _assert_clean(gradcheck(conv, x, mode=mode, seed=seed % 97), ["input", "weight", "bias"], mode,
                      {"input": x.size, "weight": conv.weight.size, "bias": conv.bias.size})


@FAST
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 3), w=st.integers(2, 3),
       seed=st.integers(0, 2**31 - 1))
def test_batchnorm_train_shapes_pass(n, c, h, w, seed):
    rng = np.random.default_rng(seed)
    bn = _randomise_bn(nn.BatchNorm2d(c, dtype=F64), rng)
    x = rng.standard_normal((n, c, h, w))
    for mode in ALL_MODES:
        _assert_clean(gradcheck(bn, x, mode=mode, seed=seed % 97), ["input", "weight", "bias"], mode,
                      {"input": x.size, "weight": c, "bias": c})


def test_float32_module_is_checked_in_float64_and_passes():
    rng = _rng(11)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, generator=rng), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Dropout(0.3, seed=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(3, 2, generator=rng))
    assert model[0].weight.dtype == np.float32
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    names = ["input", "0.weight", "0.bias", "1.weight", "1.bias", "6.weight", "6.bias"]
    for mode in ALL_MODES:
        result = gradcheck(model, x, mode=mode)
        _assert_clean(result, names, mode, _sizes(model, x, names), smooth=False)
        assert "float64" in result.table().splitlines()[0]
        # float64 tolerances: a float32 check could not reach 1e-6 relative on the finite differences
        assert all(r.max_abs_err < 1e-6 for r in result.rows), result.table()
    assert all(p.dtype == np.float32 for p in model.parameters())
    assert x.dtype == np.float32


BUFFER_NAMES = ("running_mean", "running_var", "num_batches_tracked")


def _snapshot(model):
    # Buffers are read by attribute name rather than through state_dict(): BatchNorm's in-place updates
    # (self.running_mean *= ...) go through Module.__setattr__, which unregisters them from _buffers.
    return dict(
        params=[(name, p.data.copy(), p.grad.copy()) for name, p in model.named_parameters()],
        buffers=[np.array(getattr(m, b), copy=True) for m in model.modules() for b in BUFFER_NAMES
                 if hasattr(m, b)],
        gens=[copy.deepcopy(m.generator.bit_generator.state) for m in model.modules() if hasattr(m, "generator")],
        training=[m.training for m in model.modules()],
    )


@pytest.mark.parametrize("mode", ALL_MODES)
def test_gradcheck_leaves_the_module_and_input_untouched(mode):
    rng = _rng(21)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, generator=rng), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Dropout(0.5, seed=9), nn.Flatten(), nn.Linear(48, 2, generator=rng))
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    model(x)                                              # non-trivial running stats, counter, .grad, RNG
    model.backward(rng.standard_normal((2, 2)).astype(np.float32))
    before, x_before = _snapshot(model), x.copy()
    assert model[1].num_batches_tracked == 1 and len(before["buffers"]) == 3
    assert any(np.any(g != 0) for _, _, g in before["params"])

    result = gradcheck(model, x, mode=mode)
    assert result.passed, result.table()

    after = _snapshot(model)
    assert [n for n, _, _ in after["params"]] == [n for n, _, _ in before["params"]]
    for (name, data, grad), (_, data0, grad0) in zip(after["params"], before["params"]):
        assert data.dtype == data0.dtype == grad.dtype == np.float32, name
        assert np.array_equal(data, data0) and np.array_equal(grad, grad0), name
    for buf, buf0 in zip(after["buffers"], before["buffers"]):
        assert buf.dtype == buf0.dtype and np.array_equal(buf, buf0)
    assert after["gens"] == before["gens"] and len(after["gens"]) == 1
    assert after["training"] == before["training"]
    assert np.array_equal(x, x_before) and x.dtype == np.float32


class ScaleByForwardCount(nn.Module):
    """y = x * k where k counts the forwards in a registered buffer (updated in place): without the
    harness resetting buffers before every forward, each probe would see a different function."""

    def __init__(self):
        super().__init__()
        self.register_buffer("count", np.zeros((), dtype=F64))
        self._cache = None

    def forward(self, x):
        self.count[...] += 1
        self._cache = float(self.count)
        return x * self._cache

    def backward(self, dout):
        return dout * take_cache(self)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_buffers_are_reset_before_every_forward(mode):
    module = ScaleByForwardCount()
    x = _rng(9).standard_normal((2, 3))
    result = gradcheck(module, x, mode=mode)
    _assert_clean(result, ["input"], mode, {"input": 6})
    assert module.count == 0                              # the original was never run


# ----------------------------------------------------------------------------------------------------------
# 3. Kinks
# ----------------------------------------------------------------------------------------------------------
def _relu_input_with_zeros():
    x = _rng(31).standard_normal((3, 8))
    x.flat[::3] = 0.0
    return x


def test_relu_at_zero_is_a_kink_not_a_failure():
    x = _relu_input_with_zeros()
    zeros = int(np.sum(x == 0))
    result = gradcheck(nn.ReLU(), x, mode="full")
    assert result.passed, result.table()
    r = row(result, "input")
    assert r.status == "pass" and r.kinks == zeros, result.table()
    assert f"pass ({zeros} kink probes skipped)" in result.table()
    # all-zero input: every probe is a kink
    result = gradcheck(nn.ReLU(), np.zeros((2, 3)), mode="full")
    assert result.passed and row(result, "input").status == "kink" and row(result, "input").kinks == 6
    assert "non-differentiable here" in result.table()


def _tied_maxpool_input(ties=8):
    """(1, 2, 4, 4) input for MaxPool2d(2) whose first ``ties`` windows each hold two tied maxima."""
    x = _rng(32).standard_normal((1, 2, 4, 4))
    windows = [(c, i, j) for c in range(2) for i in (0, 2) for j in (0, 2)][:ties]
    for c, i, j in windows:
        w = x[0, c, i:i + 2, j:j + 2]                       # a view
        w[0, 0] = w[1, 1] = w.max() + 0.5                  # two maxima, tied
    return x, len(windows)


def test_maxpool_tied_maxima_are_kinks_not_failures():
    x, windows = _tied_maxpool_input()
    result = gradcheck(nn.MaxPool2d(2), x, mode="full")
    assert result.passed, result.table()
    r = row(result, "input")
    assert r.status == "pass" and r.kinks == 2 * windows, result.table()   # both tied elements per window


class ReLUDoubleGrad(nn.ReLU):
    """2*dy where x > 0."""

    def backward(self, dout):
        return 2 * super().backward(dout)


class ReLUWrongAtZero(nn.ReLU):
    """Correct away from 0, but 2*dy exactly at x == 0: not a one-sided derivative there."""

    def forward(self, x):
        self._at_zero = x == 0
        return super().forward(x)

    def backward(self, dout):
        return super().backward(dout) + 2 * dout * self._at_zero


class ReLUOneAtZero(nn.ReLU):
    """dy at x == 0 (mask x >= 0): a valid one-sided derivative, so a kink, not a bug."""

    def forward(self, x):
        self._at_zero = x == 0
        return super().forward(x)

    def backward(self, dout):
        return super().backward(dout) + dout * self._at_zero


@pytest.mark.parametrize("mode", ALL_MODES)
def test_wrong_relu_gradient_near_kinks_still_fails(mode):
    x = _relu_input_with_zeros()
    result = gradcheck(ReLUDoubleGrad(), x, mode=mode)
    assert failing(result) == {"input"}, result.table()
    if mode == "full":
        assert x[row(result, "input").worst] > 0


def test_wrong_gradient_exactly_at_a_kink_fails():
    x = _relu_input_with_zeros()
    result = gradcheck(ReLUWrongAtZero(), x, mode="full")
    assert failing(result) == {"input"}, result.table()
    r = row(result, "input")
    assert x[r.worst] == 0
    assert r.analytic == pytest.approx(2 * r.numeric * 2, rel=1e-6)   # 2*g vs the average slope g/2
    # the other side of the same coin: a different but valid one-sided derivative is accepted
    result = gradcheck(ReLUOneAtZero(), x, mode="full")
    assert result.passed and row(result, "input").kinks == int(np.sum(x == 0)), result.table()


# Known weaknesses, pinned (see the module docstring).
class ReLUDropsOneCoordinate(nn.ReLU):
    """dx zeroed at one coordinate where x > 0 (its true derivative is dy there)."""
    index = None

    def backward(self, dout):
        dx = np.array(super().backward(dout), copy=True)
        dx.flat[ReLUDropsOneCoordinate.index] = 0.0
        return dx


def _relu_many_kinks():
    x = _rng(0).standard_normal((4, 50))
    x[:, :25] = 0.0
    ReLUDropsOneCoordinate.index = int(np.flatnonzero(x.ravel() > 0)[-1])
    return x


def test_dropped_coordinate_among_kinks_is_caught_in_full_mode():
    x = _relu_many_kinks()
    result = gradcheck(ReLUDropsOneCoordinate(), x, mode="full")
    assert failing(result) == {"input"}
    assert np.ravel_multi_index(row(result, "input").worst, x.shape) == ReLUDropsOneCoordinate.index


def test_dropped_coordinate_among_kinks_is_caught_in_directional_mode():
    x = _relu_many_kinks()
    result = gradcheck(ReLUDropsOneCoordinate(), x, mode="directional")
    assert failing(result) == {"input"}, result.table()


class MaxPoolGradToEveryTiedMax(fast.MaxPool2d):
    """Sends the full gradient to *every* tied maximum: double counting (the true sum is dy, not 2*dy)."""

    def forward_cnhw(self, x):
        self._x = x.copy()
        return super().forward_cnhw(x)

    def backward_cnhw(self, dout):
        take_cache(self)
        out = super().forward_cnhw(self._x)
        take_cache(self)
        dx = np.zeros_like(self._x)
        for _, rows, cols in self._windows(*out.shape[2:]):
            dx[:, :, rows, cols] += np.where(self._x[:, :, rows, cols] == out, dout, 0)
        return dx


def test_maxpool_double_counting_matches_on_untied_input():
    x = _rng(33).standard_normal((1, 2, 4, 4))            # no ties: the buggy routing is the correct one
    assert gradcheck(MaxPoolGradToEveryTiedMax(2), x, mode="full").passed


@pytest.mark.parametrize("seed", range(6))
def test_maxpool_double_counting_at_a_tie_is_caught_in_directional_mode(seed):
    """Each tied element alone has a valid value (so full and sampled modes cannot see this bug), but along a
    direction that moves both tied elements the same way, the sum lies outside the hull of the derivatives at
    nearby points (sampled at tie-breaking perturbations). Was a strict xfail before issue 12."""
    x, _ = _tied_maxpool_input(ties=1)
    result = gradcheck(MaxPoolGradToEveryTiedMax(2), x, mode="directional", seed=seed, directions=8)
    assert failing(result) == {"input"}, result.table()
    assert "outside the hull" in row(result, "input").note


# ----------------------------------------------------------------------------------------------------------
# 4. Argument validation
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["Full", "", "coordinates", None])
def test_bad_mode_is_a_value_error(mode):
    with pytest.raises(ValueError, match="mode must be one of"):
        gradcheck(nn.ReLU(), np.ones((2, 2)), mode=mode)


@pytest.mark.parametrize("eps", [0.0, -1e-6, float("nan")])
def test_non_positive_eps_is_a_value_error(eps):
    with pytest.raises(ValueError, match="eps must be positive"):
        gradcheck(nn.ReLU(), np.ones((2, 2)), eps=eps)


@pytest.mark.parametrize("module", [lambda x: x, nn.ReLU, object(), "ReLU", None])
def test_non_module_is_a_type_error(module):
    with pytest.raises(TypeError, match="module must be a numpy_densenet Module"):
        gradcheck(module, np.ones((2, 2)))


@pytest.mark.parametrize("arg, value", [(arg, value) for arg in ("samples", "directions") for value in (0, -3, 2.5)]
                         + [("locate_samples", -3), ("locate_samples", 2.5)])  # locate_samples=0: test below
def test_non_positive_counts_are_value_errors(arg, value):
    kind = "non-negative" if arg == "locate_samples" else "positive"
    with pytest.raises(ValueError, match=f"{arg} must be a {kind} int"):
        gradcheck(nn.ReLU(), np.ones((2, 2)), **{arg: value})


def test_locate_samples_zero_reports_the_failing_direction_as_it_is():
    result = gradcheck(_subtle_module(), SUBTLE_X, mode="directional", locate_samples=0)
    r = row(result, "input")
    assert r.status == "FAIL" and r.probes == 3 and str(r.worst).startswith("dir ")
    assert "not located coordinate by coordinate" in r.note


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_directional_fallback_probes_at_most_locate_samples_coordinates(k):
    result = gradcheck(_subtle_module(), SUBTLE_X, mode="directional", locate_samples=k)
    r = row(result, "input")
    assert r.status == "FAIL" and "direction dir" in r.note
    assert r.probes <= k, result.table()


def test_non_array_input_is_a_type_error():
    with pytest.raises(TypeError, match="input 0 must be a NumPy array"):
        gradcheck(nn.ReLU(), [[1.0, 2.0]])
