"""check_backward: the gradient checker on a NumPy forward/backward pair (CS231n style), and the hypothesis
strategies for inputs that break naive checkers."""
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import numpy_densenet
from numpy_densenet.gradcheck import GradcheckError, check_backward, gradcheck, strategies

ROOT = Path(__file__).resolve().parents[1]
MODES = ("full", "sampled", "directional")


# -- CS231n-style layers, correct ------------------------------------------------------------------------------
def affine_forward(x, w, b):
    return x.reshape(x.shape[0], -1) @ w + b, (x, w)


def affine_backward(dout, cache):
    x, w = cache
    return (dout @ w.T).reshape(x.shape), x.reshape(x.shape[0], -1).T @ dout, dout.sum(axis=0)


def relu_forward(x):
    return np.maximum(x, 0), x


def relu_backward(dout, x):
    return dout * (x > 0)


def softmax_loss_forward(x, y):
    shifted = x - x.max(axis=1, keepdims=True)
    p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
    return -np.log(p[np.arange(len(y)), y]).mean(), (p, y)


def softmax_loss_backward(dout, cache):
    p, y = cache
    dx = p.copy()
    dx[np.arange(len(y)), y] -= 1
    return dout * dx / len(y), None


def dropout_forward(x, param):
    mask = (np.random.rand(*x.shape) >= param["p"]) / (1 - param["p"])      # the global generator, unseeded
    return x * mask, mask


def dropout_backward(dout, mask):
    return dout * mask


def max_forward(x):
    i = x.argmax(axis=1)
    return x[np.arange(len(x)), i], (x.shape, i)


def max_backward(dout, cache):
    shape, i = cache
    dx = np.zeros(shape)
    dx[np.arange(shape[0]), i] = dout                     # the first maximum, as PyTorch's max pooling
    return dx


def batchnorm_forward(x, gamma, beta):
    mu, var = x.mean(axis=0), x.var(axis=0)
    xhat = (x - mu) / np.sqrt(var + 1e-5)
    return gamma * xhat + beta, (xhat, gamma, np.sqrt(var + 1e-5))


def batchnorm_backward(dout, cache):
    xhat, gamma, std = cache
    dxhat = dout * gamma
    dx = (dxhat - dxhat.mean(axis=0) - xhat * (dxhat * xhat).mean(axis=0)) / std
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)


def split_forward(x):
    return (x[:, :2] * 2, np.tanh(x[:, 2:])), x


def split_backward(douts, x):
    d0, d1 = douts
    return np.concatenate([d0 * 2, d1 * (1 - np.tanh(x[:, 2:]) ** 2)], axis=1)


def rng_arrays(*shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s) for s in shapes]


@pytest.mark.parametrize("mode", MODES)
def test_correct_pairs_pass_in_every_mode(mode):
    x, w, b = rng_arrays((3, 2, 2), (4, 3), (3,))
    assert check_backward(affine_forward, affine_backward, x, w, b, mode=mode).passed
    assert check_backward(relu_forward, relu_backward, x, mode=mode).passed
    assert check_backward(batchnorm_forward, batchnorm_backward, *rng_arrays((5, 3), (3,), (3,)), mode=mode).passed
    assert check_backward(split_forward, split_backward, *rng_arrays((3, 5)), mode=mode).passed


@given(strategies.hard_arrays((3, 4)))
def test_relu_and_max_pass_on_the_inputs_that_break_naive_checkers(x):
    for forward, backward in ((relu_forward, relu_backward), (max_forward, max_backward)):
        result = check_backward(forward, backward, x)
        assert result.passed, result.table()


def test_integer_labels_and_other_values_pass_through_unchecked():
    x, = rng_arrays((4, 3))
    result = check_backward(softmax_loss_forward, softmax_loss_backward, x, np.array([0, 2, 1, 1]))
    assert result.passed and [r.name for r in result.rows] == ["input"]
    result = check_backward(dropout_forward, dropout_backward, x, {"p": 0.5})
    assert result.passed, result.table()                 # the global generator is restored before every forward
    assert "passed through unchecked: input 1 (dict)" in result.notes


def test_the_callers_global_random_state_is_left_as_it_was():
    np.random.seed(5)
    expected = np.random.rand(3)
    np.random.seed(5)
    check_backward(dropout_forward, dropout_backward, *rng_arrays((4, 3)), {"p": 0.5})
    assert np.array_equal(np.random.rand(3), expected)


def test_rows_are_named_by_position_or_by_keyword():
    x, w, b = rng_arrays((3, 4), (4, 2), (2,))
    by_position = check_backward(affine_forward, affine_backward, x, w, b)
    by_keyword = check_backward(affine_forward, affine_backward, {"x": x, "w": w, "b": b})
    assert [r.name for r in by_position.rows] == ["input[0]", "input[1]", "input[2]"]
    assert [r.name for r in by_keyword.rows] == ["x", "w", "b"]
    assert [r.max_abs_err for r in by_position.rows] == [r.max_abs_err for r in by_keyword.rows]
    assert by_position.accumulates is None and by_position.inputs_intact is True
    assert "accumulates" not in by_position.table() and "inputs left unchanged by forward and backward: yes" in \
        by_position.table()


# -- planted bugs ------------------------------------------------------------------------------------------
def affine_backward_db_mean(dout, cache):
    dx, dw, db = affine_backward(dout, cache)
    return dx, dw, dout.mean(axis=0)                       # should be the sum over the batch


def relu_backward_at_zero(dout, x):
    return dout * (x >= 0) * 2.0 ** (x == 0)              # 2*dy at x == 0: outside the hull [0, dy]


def batchnorm_backward_no_mean_term(dout, cache):
    xhat, gamma, std = cache
    dxhat = dout * gamma
    return (dxhat - xhat * (dxhat * xhat).mean(axis=0)) / std, (dout * xhat).sum(axis=0), dout.sum(axis=0)


@pytest.mark.parametrize("mode", MODES)
def test_planted_bugs_fail_on_their_own_row(mode):
    x, w, b = rng_arrays((3, 4), (4, 2), (2,))
    result = check_backward(affine_forward, affine_backward_db_mean, {"x": x, "w": w, "b": b}, mode=mode)
    assert [r.name for r in result.failures] == ["b"]
    zeros = x.copy()
    zeros[:, 1] = 0.0
    assert [r.name for r in check_backward(relu_forward, relu_backward_at_zero, zeros, mode=mode).failures] == \
        ["input"]
    result = check_backward(batchnorm_forward, batchnorm_backward_no_mean_term, *rng_arrays((5, 3), (3,), (3,)),
                            mode=mode)
    assert [r.name for r in result.failures] == ["input[0]"]


def test_protocol_bugs_are_named():
    x, = rng_arrays((3, 4))

    def scales_dout(dout, x):
        dout *= 2
        return dout * (x > 0) / 2

    def writes_into_cache(dout, x):
        x[x < 0] = 0                                        # the cached input *is* the caller's array
        return dout * (x > 0)

    def relu_in_place(x):
        np.maximum(x, 0, out=x)
        return x.copy(), x

    calls = []

    def leaky_state(dout, x):
        calls.append(1)
        return dout * (x > 0) * (1 + 1e-3 * len(calls))

    result = check_backward(relu_forward, scales_dout, x)
    assert not result.passed and not result.upstream_intact and "upstream gradient" in " ".join(result.notes)
    result = check_backward(relu_forward, writes_into_cache, x)
    assert not result.inputs_intact and "backward changed input 0" in " ".join(result.notes)
    result = check_backward(relu_in_place, relu_backward, x)
    assert not result.inputs_intact and "forward changed input 0" in " ".join(result.notes)
    assert not check_backward(relu_forward, leaky_state, x).reentrant


def test_float32_rows_catch_a_backward_wrong_only_in_float32():
    def relu_backward_float32(dout, x):
        dx = dout * (x > 0)
        return dx * np.float32(1.001) if dx.dtype == np.float32 else dx

    x, = rng_arrays((4, 5))
    result = check_backward(relu_forward, relu_backward_float32, x, float32=True)
    assert all(r.passed for r in result.rows)
    assert [r.name for r in result.failures] == ["input (float32)"]
    assert check_backward(relu_forward, relu_backward, x.astype(np.float32), float32=True).passed


def test_an_executor_gives_the_serial_result_bit_for_bit():
    x, w, b = rng_arrays((3, 4), (4, 2), (2,))
    numpy_densenet.set_num_threads(1)
    with ThreadPoolExecutor(2) as pool:
        for mode in MODES:
            serial = check_backward(affine_forward, affine_backward_db_mean, x, w, b, mode=mode)
            parallel = check_backward(affine_forward, affine_backward_db_mean, x, w, b, mode=mode, executor=pool)
            assert parallel.rows == serial.rows and parallel.table() == serial.table()
        with pytest.raises(TypeError, match="picklable"):
            check_backward(lambda x: (x * 2, None), lambda d, c: d * 2, x, executor=pool)


# -- bad use gets a clear error ------------------------------------------------------------------------------
def test_bad_use_is_named():
    x, w, b = rng_arrays((3, 4), (4, 2), (2,))
    cases = [
        (lambda: check_backward(lambda x: x * 2, lambda d, c: d, x), TypeError, r"forward must return \(out, cache\)"),
        (lambda: check_backward(affine_forward, lambda d, c: affine_backward(d, c)[:2], x, w, b), ValueError,
         "backward returned 2 gradients for 3 inputs"),
        (lambda: check_backward(affine_forward, lambda d, c: affine_backward(d, c)[::-1], x, w, b), ValueError,
         r"gradient of input 0 has shape \(2,\), expected \(3, 4\)"),
        (lambda: check_backward(relu_forward, lambda d, c: relu_backward(d, c).astype(np.float32), x), TypeError,
         "gradient of input 0 is float32, expected float64"),
        (lambda: check_backward(relu_forward, lambda d, c: relu_backward(d, c).tolist(), x), TypeError,
         "gradient of input 0 is a list"),
        (lambda: check_backward(relu_forward, relu_backward, x.astype(np.complex128)), TypeError,
         "input 0 is complex128: complex inputs are not supported"),
        (lambda: check_backward(relu_forward, relu_backward, [1.0, 2.0]), ValueError, "no float array"),
        (lambda: check_backward(relu_forward, None, x), TypeError, "backward must be callable"),
        (lambda: check_backward(relu_forward, relu_backward, x, mode="every"), ValueError,
         "check_backward: mode must be one of"),
        (lambda: check_backward(relu_forward, relu_backward, x, rtoll=1e-3), TypeError, "unknown option 'rtoll'"),
        (lambda: check_backward(lambda x: (x.astype(int), x), relu_backward, x), TypeError,
         "forward's out is a int64 array, expected a float array"),
    ]
    for call, kind, message in cases:
        with pytest.raises(kind, match=message):
            call()


def test_gradcheck_points_a_function_to_check_backward():
    with pytest.raises(TypeError, match="use check_backward"):
        gradcheck(relu_forward, np.ones(3))


def test_raise_exception_inside_pytest_shows_the_whole_report(tmp_path):
    test = tmp_path / "test_user.py"
    test.write_text(textwrap.dedent("""
        import numpy as np
        from numpy_densenet import check_backward

        def forward(x, w):
            return x @ w, (x, w)

        def backward(dout, cache):
            x, w = cache
            return dout @ w.T, x.T @ dout * 1.001

        def test_layer():
            rng = np.random.default_rng(0)
            check_backward(forward, backward, rng.standard_normal((3, 4)), rng.standard_normal((4, 2)),
                           raise_exception=True)
    """))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300).stdout
    assert "1 failed" in out
    report = GradcheckError.__name__ + ": "
    assert report in out
    for line in ("gradcheck forward/backward: mode=full", "input[1]", "FAIL", "legend:",
                 "nearby differentiable points.", "FAILED"):
        assert line in out, out
    assert "engine.py" not in out                   # the engine's frames are hidden: the report is the message


# -- the strategies -------------------------------------------------------------------------------------------
@given(st.data())
def test_strategies_draw_what_they_promise(data):
    shape = data.draw(strategies.shapes(min_dims=2, max_dims=3, min_side=2))
    ties = data.draw(strategies.ties(shape))
    assert ties.shape == shape and ties.dtype == np.float64 and np.unique(ties).size < ties.size
    zeros = data.draw(strategies.kink_zeros(shape))
    assert (zeros == 0).sum() >= max(1, zeros.size // 3)
    offset = data.draw(strategies.large_offsets(shape))
    assert np.all(np.abs(offset - 1e4) < 10)
    tiny = data.draw(strategies.tiny(shape))
    assert np.abs(tiny).max() < 1e-4 and np.abs(tiny).max() > 0
    x32 = data.draw(strategies.float32(shape, kinds=("ties",)))
    assert x32.dtype == np.float32 and np.unique(x32).size < x32.size
    assert data.draw(strategies.hard_arrays()).ndim >= 1


def test_an_unknown_kind_is_named():
    with pytest.raises(ValueError, match="kind must be one of"):
        strategies.make("spiky", (3,), 0)
