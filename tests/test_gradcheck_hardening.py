"""The gradient checker's hardening (issue 12): every weakness found by the outside mutation study, as a
planted bug that must fail in every mode, or a correct layer that must pass in every mode.

* non-finite values: NaN or inf in an analytic gradient fails with its own diagnosis, never as a protocol
  failure;
* a backward that modifies its upstream gradient in place fails the new protocol check;
* large magnitudes (1e6, 1e9) do not hide a x1.001 bug;
* a bug only in float32 is caught by ``float32=True``;
* kinks: ReLU's 2*dy at 0 fails, PyTorch's first-max convention at overlapping max-pool ties passes, ReLU with
  30 % exact zeros at 3,200 entries passes, BatchNorm on 1e4 + N(0, 1) passes;
* the report: a legend, each row's effective atol and rtol, err/tol and the smallest detectable error;
* a hypothesis property: correct layers with ties and zeros injected, at magnitudes from 1e-6 to 1e6, pass.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from numpy_densenet import check_backward, fast, gradcheck, nn
from numpy_densenet.nn.module import Module

MODES = ("full", "sampled", "directional")
F64 = np.float64


def failing(result):
    return {r.name for r in result.rows if r.status == "FAIL"}


def failing32(result):
    return {r.name for r in result.float32_rows if r.status == "FAIL"}


def row(result, name):
    (r,) = [r for r in result.rows if r.name == name]
    return r


def _rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------------------------------------
# Non-finite values
# ----------------------------------------------------------------------------------------------------------
class LinearNaNInWeightGrad(nn.Linear):
    """weight.grad[1, 2] is NaN (accumulated consistently, so the protocol checks hold)."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.weight.grad[1, 2] = np.nan
        return dx


class LinearInfInInputGrad(nn.Linear):
    """dx[0, 1] = inf."""

    def backward(self, dout):
        dx = np.array(super().backward(dout), copy=True)
        dx[0, 1] = np.inf
        return dx


class LinearNaNEverywhere(nn.Linear):
    """Every gradient NaN: in directional mode, inf - inf and NaN comparisons used to pass."""

    def backward(self, dout):
        super().backward(dout)
        self.weight.grad[...] = np.nan
        self.bias.grad[...] = np.nan
        return np.full((dout.shape[0], self.in_features), np.nan)


class SqrtForward(Module):
    """y = sqrt(x): NaN in the output (and every numeric derivative) for x < 0; backward is 'correct'."""

    def forward(self, x):
        self._x = x
        with np.errstate(invalid="ignore"):
            return np.sqrt(x)

    def backward(self, dout):
        with np.errstate(invalid="ignore", divide="ignore"):
            return dout / (2 * np.sqrt(self._x))


@pytest.mark.parametrize("mode", MODES)
def test_nan_in_analytic_weight_gradient_fails_with_its_own_diagnosis(mode):
    layer = LinearNaNInWeightGrad(4, 3, dtype=F64, generator=_rng(1))
    result = gradcheck(layer, _rng(2).standard_normal((5, 4)), mode=mode)
    assert not result.passed and failing(result) == {"weight"}, result.table()
    r = row(result, "weight")
    assert "NaN in analytic d(weight) at (1, 2)" in r.note, result.table()
    assert r.worst == (1, 2) and np.isnan(r.analytic) and np.isfinite(r.numeric)
    assert result.reentrant and result.accumulates and result.upstream_intact, result.table()
    assert not any("state leaks" in n or "did not add" in n for n in result.notes)
    assert result.table().splitlines()[-1] == "FAILED"


@pytest.mark.parametrize("mode", MODES)
def test_inf_in_analytic_input_gradient_fails(mode):
    layer = LinearInfInInputGrad(4, 3, dtype=F64, generator=_rng(1))
    result = gradcheck(layer, _rng(2).standard_normal((5, 4)), mode=mode)
    assert failing(result) == {"input"}, result.table()
    assert "inf in analytic d(input) at (0, 1)" in row(result, "input").note
    assert result.reentrant and result.accumulates


@pytest.mark.parametrize("mode", MODES)
def test_all_nan_gradients_fail_every_row(mode):
    layer = LinearNaNEverywhere(4, 3, dtype=F64, generator=_rng(1))
    result = gradcheck(layer, _rng(2).standard_normal((5, 4)), mode=mode)
    assert failing(result) == {"input", "weight", "bias"}, result.table()
    assert result.reentrant and result.accumulates, result.table()


@pytest.mark.parametrize("mode", MODES)
def test_nan_in_the_forward_output_fails(mode):
    x = np.abs(_rng(3).standard_normal((3, 4))) + 0.5
    assert gradcheck(SqrtForward(), x, mode=mode).passed         # the module is right where it is defined
    x[1, 2] = -1.0
    result = gradcheck(SqrtForward(), x, mode=mode)
    assert failing(result) == {"input"}, result.table()
    assert any("NaN in the forward output at (1, 2)" in n for n in result.notes), result.table()


# ----------------------------------------------------------------------------------------------------------
# The upstream gradient must be left unchanged
# ----------------------------------------------------------------------------------------------------------
class ReLUHalvesItsUpstream(nn.ReLU):
    """Correct dx, then scales the upstream gradient in place."""

    def backward(self, dout):
        dx = super().backward(dout)
        dout *= 0.5
        return dx


class DoubleInPlace(Module):
    """y = 2x with backward ``dx = dout; dx *= 2``: right values, but the returned view aliases the upstream
    gradient, which it overwrites (the DenseNet bug of a dropped ``.copy()``)."""

    def forward(self, x):
        self._shape = x.shape
        return 2 * x

    def backward(self, dout):
        dx = dout.reshape(self._shape)
        dx *= 2
        return dx


class DoubleCorrect(DoubleInPlace):
    def backward(self, dout):
        return dout.reshape(self._shape) * 2


@pytest.mark.parametrize("mode", MODES)
def test_backward_modifying_its_upstream_gradient_fails(mode):
    x = _rng(4).standard_normal((3, 5))
    result = gradcheck(ReLUHalvesItsUpstream(), x, mode=mode)
    assert not result.passed and result.upstream_intact is False, result.table()
    assert failing(result) == set()                         # the gradients themselves are right
    assert result.reentrant and result.accumulates
    assert "upstream gradient left unchanged: NO" in result.table()
    assert any("modified the upstream gradient" in n for n in result.notes)


@pytest.mark.parametrize("mode", MODES)
def test_returned_view_written_in_place_is_named(mode):
    x = _rng(4).standard_normal((3, 5))
    result = gradcheck(DoubleInPlace(), x, mode=mode)
    assert not result.passed and result.upstream_intact is False, result.table()
    assert any("returned a view of it" in n for n in result.notes), result.table()
    good = gradcheck(DoubleCorrect(), x, mode=mode)
    assert good.passed and good.upstream_intact, good.table()


def test_a_view_of_the_upstream_gradient_is_fine_when_nothing_writes_into_it():
    result = gradcheck(nn.Flatten(), _rng(5).standard_normal((2, 3, 2, 2)))     # returns dout.reshape(...)
    assert result.passed and result.upstream_intact, result.table()


# ----------------------------------------------------------------------------------------------------------
# Large magnitudes
# ----------------------------------------------------------------------------------------------------------
class LinearDxTimes1001(nn.Linear):
    def backward(self, dout):
        return super().backward(dout) * 1.001


@pytest.mark.parametrize("magnitude", [1e6, 1e9])
@pytest.mark.parametrize("mode", MODES)
def test_large_magnitudes_do_not_hide_a_1001_bug(mode, magnitude):
    x = magnitude * (1 + _rng(6).standard_normal((4, 5)))
    bad = gradcheck(LinearDxTimes1001(5, 3, dtype=F64, generator=_rng(7)), x, mode=mode)
    assert failing(bad) == {"input"}, bad.table()
    assert row(bad, "input").max_rel_err == pytest.approx(1e-3, rel=0.05), bad.table()
    good = gradcheck(nn.Linear(5, 3, dtype=F64, generator=_rng(7)), x, mode=mode)
    assert good.passed, good.table()
    assert row(good, "input").max_rel_err < 1e-6, good.table()


@pytest.mark.parametrize("mode", MODES)
def test_tiny_magnitudes_are_checked_at_their_own_scale(mode):
    x = 1e-6 * _rng(8).standard_normal((4, 5))
    bad = gradcheck(LinearDxTimes1001(5, 3, dtype=F64, generator=_rng(7)), x, mode=mode)
    assert failing(bad) == {"input"}, bad.table()
    assert gradcheck(nn.Linear(5, 3, dtype=F64, generator=_rng(7)), x, mode=mode).passed


# ----------------------------------------------------------------------------------------------------------
# float32
# ----------------------------------------------------------------------------------------------------------
class LinearWrongInFloat32(nn.Linear):
    """dx x1.001, only when running in float32."""

    def backward(self, dout):
        dx = super().backward(dout)
        return dx * np.float32(1.001) if dx.dtype == np.float32 else dx


class BatchNormWrongInFloat32(nn.BatchNorm2d):
    """weight.grad off by 1e-3 relative, only in float32."""

    def backward(self, dout):
        before = self.weight.grad.copy()
        dx = super().backward(dout)
        if dx.dtype == np.float32:
            self.weight.grad[...] = before + (self.weight.grad - before) * np.float32(1.001)
        return dx


@pytest.mark.parametrize("mode", MODES)
def test_float32_only_bug_is_caught_with_float32_true(mode):
    x = _rng(9).standard_normal((4, 6)).astype(np.float32)
    layer = LinearWrongInFloat32(6, 3, generator=_rng(10))
    assert gradcheck(layer, x, mode=mode).passed                # invisible in float64
    result = gradcheck(layer, x, mode=mode, float32=True)
    assert not result.passed and failing(result) == set(), result.table()
    assert failing32(result) == {"input (float32)"}, result.table()
    assert "float32 run" in result.table()

    bn = BatchNormWrongInFloat32(3)
    xb = _rng(11).standard_normal((4, 3, 3, 3)).astype(np.float32)
    result = gradcheck(bn, xb, mode=mode, float32=True)
    assert failing(result) == set() and failing32(result) == {"weight (float32)"}, result.table()


def test_float32_rows_pass_on_correct_modules_with_dropout_and_batchnorm():
    rng = _rng(12)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, generator=rng), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.Dropout(0.3, seed=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(3, 2, generator=rng))
    x = rng.standard_normal((2, 2, 4, 4)).astype(np.float32)
    for mode in MODES:
        result = gradcheck(model, x, mode=mode, float32=True)
        assert result.passed, result.table()
        assert [r.name for r in result.float32_rows] == [r.name + " (float32)" for r in result.rows]
        for r in result.float32_rows:
            assert 0 < r.rtol < 1e-3 and r.atol > 0 and r.worst_ratio <= 1, result.table()
    assert all(p.dtype == np.float32 for p in model.parameters())


@pytest.mark.parametrize("layer", [fast.BatchNorm2d, fast.BatchNormReLU2d])
def test_float32_batchnorm_on_a_large_offset_passes(layer):
    """The fast tier keeps its mean's rounding correction: float32 keeps float32's precision on 1e4 + N(0, 1)."""
    x = (1e4 + _rng(13).standard_normal((4, 3, 5, 5))).astype(np.float32)
    result = gradcheck(layer(3), x, mode="sampled", float32=True)
    assert result.passed, result.table()


def test_float32_textbook_batchnorm_on_a_large_offset_fails_its_float32_rows():
    """The plain tier's textbook BatchNorm computes its mean in float32: off by up to half a unit in its last place
    (5e-4 at 1e4), which shifts every xhat; its float64 rows pass, its float32 rows of d input and d weight say so
    (d bias = sum(dy) does not depend on the mean)."""
    x = (1e4 + _rng(13).standard_normal((4, 3, 5, 5))).astype(np.float32)
    result = gradcheck(nn.BatchNorm2d(3), x, mode="sampled", float32=True)
    assert failing(result) == set(), result.table()
    assert failing32(result) == {"input (float32)", "weight (float32)"}, result.table()


# ----------------------------------------------------------------------------------------------------------
# Kinks
# ----------------------------------------------------------------------------------------------------------
class ReLUTwiceAtZero(nn.ReLU):
    """Correct away from 0, but 2*dy exactly at x == 0: outside the hull [0, dy] of nearby derivatives."""

    def forward(self, x):
        self._at_zero = x == 0
        return super().forward(x)

    def backward(self, dout):
        return super().backward(dout) + 2 * dout * self._at_zero


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mode", MODES)
def test_relu_twice_dy_at_zero_fails(mode, seed):
    x = _rng(14).standard_normal((4, 10))
    x[_rng(15).random(x.shape) < 0.3] = 0.0
    result = gradcheck(ReLUTwiceAtZero(), x, mode=mode, seed=seed)
    assert failing(result) == {"input"}, result.table()
    if mode == "full":
        assert x[row(result, "input").worst] == 0


def _relu_output(shape, seed):
    """A ReLU's output after a BatchNorm shifted to the negative: whole windows of exact zeros."""
    return np.maximum(_rng(seed).standard_normal(shape) - 1.0, 0.0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("mode", MODES)
def test_maxpool_overlapping_ties_pass(mode, seed):
    """DenseNet's stem pool MaxPool2d(3, 2, 1) after a ReLU: tied zeros in overlapping windows. PyTorch's
    first-maximum gradient lies outside the one-sided interval there, but in the hull sampled at the
    tie-breaking perturbations."""
    x = _relu_output((2, 4, 6, 6), seed)                             # 288 entries
    result = gradcheck(nn.MaxPool2d(3, 2, 1), x, mode=mode, seed=seed)
    assert result.passed, result.table()
    if mode == "full":
        assert row(result, "input").kinks > 0


class MaxPoolLastTie(nn.MaxPool2d):
    """Routes the gradient to the *last* maximum of each window: also a valid selection at ties."""

    def backward(self, dout):
        return np.flip(super().backward(np.flip(dout, (2, 3)).copy()), (2, 3)) if self._flip else \
            super().backward(dout)

    def forward(self, x):
        self._flip = True
        return np.flip(super().forward(np.flip(x, (2, 3)).copy()), (2, 3))


@pytest.mark.parametrize("mode", MODES)
def test_maxpool_last_max_convention_at_ties_passes_too(mode):
    x = _relu_output((1, 2, 6, 6), 3)
    assert gradcheck(MaxPoolLastTie(2), x, mode=mode).passed


class MaxPoolDoubledAtTies(nn.MaxPool2d):
    """Right away from ties, but 2x the routed gradient where the window's maximum is tied."""

    def forward(self, x):
        y = super().forward(x)
        n, c, ho, wo = y.shape
        windows = x.reshape(n, c, ho, 2, wo, 2)
        self._tied = ((windows == y[:, :, :, None, :, None]).sum(axis=(3, 5)) > 1)
        return y

    def backward(self, dout):
        return super().backward(dout * np.where(self._tied, 2.0, 1.0))


@pytest.mark.parametrize("mode", MODES)
def test_tie_convention_first_requires_pytorchs_first_maximum(mode):
    """tie_convention="first": any valid subgradient is no longer enough at a tie; the gradient must go to the
    first maximum, as PyTorch routes it (the checker-level counterpart of the parity tests)."""
    x = _relu_output((1, 2, 6, 6), 3)
    assert gradcheck(MaxPoolLastTie(2), x, mode=mode).passed
    result = gradcheck(MaxPoolLastTie(2), x, mode=mode, tie_convention="first")
    assert failing(result) == {"input"}, result.table()
    assert "tie_convention='first'" in row(result, "input").note, result.table()
    for pool in (nn.MaxPool2d(2), nn.MaxPool2d(3, 2, 1), fast.MaxPool2d(2), fast.MaxPool2d(3, 2, 1)):
        result = gradcheck(pool, x, mode=mode, tie_convention="first")
        assert result.passed, result.table()


def test_tie_convention_is_validated():
    with pytest.raises(ValueError, match="tie_convention must be one of"):
        gradcheck(nn.ReLU(), np.ones((2, 2)), tie_convention="last")
    with pytest.raises(ValueError, match="check_backward: tie_convention must be one of"):
        check_backward(lambda x: (x, None), lambda d, c: d, np.ones(3), tie_convention="last")


def _row_max(first):
    """A NumPy max over the last axis whose backward routes to the first (or the last) maximum of a row."""
    def forward(x):
        return x.max(axis=-1), x

    def backward(dout, x):
        at = np.argmax(x, axis=-1) if first else x.shape[-1] - 1 - np.argmax(x[..., ::-1], axis=-1)
        dx = np.zeros_like(x)
        np.put_along_axis(dx, at[..., None], dout[..., None], axis=-1)
        return dx
    return forward, backward


@pytest.mark.parametrize("mode", MODES)
def test_tie_convention_reaches_check_backward(mode):
    """The front doors take tie_convention too: a NumPy max routed to the last of tied maxima passes "any" and
    fails "first"; routed to the first, it passes both."""
    x = np.array([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, -1.0], [0.5, 4.0, 1.0, 4.0]])
    assert check_backward(*_row_max(first=False), x, mode=mode).passed
    assert not check_backward(*_row_max(first=False), x, mode=mode, tie_convention="first").passed
    assert check_backward(*_row_max(first=True), x, mode=mode, tie_convention="first").passed


def _symmetric_integers(seed):
    """Integer BatchNorm inputs whose batch mean is exactly 0: the BN output is exactly 0 at every tied 0."""
    x = _rng(seed).integers(-2, 3, (3, 2, 3, 3)).astype(np.float64)
    return np.concatenate([x, -x])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("mode", MODES)
def test_batchnorm_then_relu_at_tied_exact_zeros_passes(mode, seed):
    """A BatchNorm ignores a uniform shift of its input, so tie-breaking points that move every coordinate the
    same way leave its tied zeros at the ReLU's kink; the points that move the tied entries only do not."""
    x = _symmetric_integers(seed)
    for module in (fast.BatchNormReLU2d(2, dtype=F64), nn.Sequential(nn.BatchNorm2d(2, dtype=F64), nn.ReLU())):
        result = gradcheck(module, x, mode=mode, seed=seed)
        assert result.passed, result.table()
        assert row(result, "input").kinks > 0, result.table()
    wrong = nn.Sequential(nn.BatchNorm2d(2, dtype=F64), ReLUTwiceAtZero())
    assert "input" in failing(gradcheck(wrong, x, mode=mode, seed=seed))


@pytest.mark.parametrize("mode", MODES)
def test_maxpool_wrong_value_at_a_tie_fails(mode):
    x = _relu_output((2, 3, 6, 6), 4)
    result = gradcheck(MaxPoolDoubledAtTies(2), x, mode=mode)
    assert failing(result) == {"input"}, result.table()


@pytest.mark.parametrize("mode", MODES)
def test_relu_with_30_percent_exact_zeros_at_3200_entries_passes(mode):
    x = _rng(16).standard_normal((2, 4, 20, 20))
    x[_rng(17).random(x.shape) < 0.3] = 0.0
    result = gradcheck(nn.ReLU(), x, mode=mode)
    assert result.passed, result.table()


class BatchNormDxTimes1001(nn.BatchNorm2d):
    def backward(self, dout):
        return super().backward(dout) * 1.001


@pytest.mark.parametrize("mode", MODES)
def test_batchnorm_train_on_a_large_offset(mode):
    x = 1e4 + _rng(18).standard_normal((4, 3, 3, 3))
    good = gradcheck(nn.BatchNorm2d(3, dtype=F64), x, mode=mode)
    assert good.passed, good.table()
    bad = gradcheck(BatchNormDxTimes1001(3, dtype=F64), x, mode=mode)
    assert failing(bad) == {"input"}, bad.table()


# ----------------------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------------------
def test_report_has_a_legend_and_each_rows_effective_tolerances():
    result = gradcheck(LinearDxTimes1001(4, 3, dtype=F64, generator=_rng(1)), _rng(2).standard_normal((3, 4)))
    table = result.table()
    header = table.splitlines()[1]
    for column in ("rtol", "atol", "err/tol", "detects"):
        assert column in header
    assert "legend:" in table and "|a - n| <= atol' + rtol*|n|" in table
    for r in result.rows:
        assert r.atol >= 1e-8 and r.rtol == 1e-6
        assert (r.worst_ratio <= 1) == (r.status != "FAIL"), table
        assert 0 < r.detects < 1e-3, table          # a x1.001 bug is within what every row can see
    assert row(result, "input").worst_ratio > 100


# ----------------------------------------------------------------------------------------------------------
# Property: correct layers never fail
# ----------------------------------------------------------------------------------------------------------
def _inject(rng, x, magnitude):
    x = x * magnitude
    flat = x.reshape(-1)
    k = max(1, flat.size // 5)
    flat[rng.choice(flat.size, k, replace=False)] = 0.0
    flat[rng.choice(flat.size, k, replace=False)] = flat[rng.choice(flat.size, k, replace=False)]
    return x


def _case(kind, rng, magnitude):
    n, c, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 3)), int(rng.integers(3, 6)), int(rng.integers(3, 6))
    x = _inject(rng, rng.standard_normal((n, c, h, w)), magnitude)
    if kind == "conv":
        return nn.Conv2d(c, 2, int(rng.integers(1, 4)), padding=1, dtype=F64, generator=rng), x
    if kind == "bn_train":
        bn = nn.BatchNorm2d(c, dtype=F64)
        bn.weight.data[...] = rng.uniform(0.5, 1.5, c)
        return bn, _inject(rng, rng.standard_normal((2, c, h, w)), magnitude) + magnitude * rng.uniform(-10, 10)
    if kind == "relu":
        return nn.ReLU(), x
    if kind == "maxpool":
        return nn.MaxPool2d(3, 2, 1), np.maximum(x, 0.0)
    if kind == "maxpool2":
        return nn.MaxPool2d(2, 1), x
    if kind == "avgpool":
        return nn.AvgPool2d(3, 2, 1, count_include_pad=False), x
    if kind == "linear":
        return nn.Linear(w, 3, dtype=F64, generator=rng), x[0, 0]
    if kind == "concat":
        return nn.Concat(), (x, _inject(rng, rng.standard_normal((n, 1, h, w)), magnitude))
    if kind == "cross_entropy":
        return nn.CrossEntropyLoss(), (_inject(rng, rng.standard_normal((4, 3)), min(magnitude, 10.0)),
                                       rng.integers(0, 3, 4))
    return nn.Dropout(0.3, seed=int(rng.integers(100))), x


KINDS = ["conv", "bn_train", "relu", "maxpool", "maxpool2", "avgpool", "linear", "concat", "cross_entropy",
         "dropout"]


@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), exponent=st.floats(-6, 6), seed=st.integers(0, 2**31 - 1))
def test_correct_layers_with_ties_and_zeros_never_fail(kind, exponent, seed):
    rng = np.random.default_rng(seed)
    module, x = _case(kind, rng, 10.0 ** exponent)
    for mode in MODES:
        result = gradcheck(module, x, mode=mode, seed=seed % 1000)
        assert result.passed, result.table()
        assert all(r.worst_ratio <= 1 for r in result.rows), result.table()     # err/tol <= 1 <=> pass


@pytest.mark.parametrize("arg", ["sampled_directions", "exhaustive_limit", "clear_limit"])
@pytest.mark.parametrize("value", [-1, 2.5, True])
def test_non_negative_int_arguments_are_validated(arg, value):
    with pytest.raises(ValueError, match=f"{arg} must be a non-negative int"):
        gradcheck(nn.ReLU(), np.ones((2, 2)), **{arg: value})


@pytest.mark.parametrize("arg", ["rtol", "atol"])
def test_negative_tolerances_are_value_errors(arg):
    with pytest.raises(ValueError, match=f"{arg} must be non-negative"):
        gradcheck(nn.ReLU(), np.ones((2, 2)), **{arg: -1e-6})
