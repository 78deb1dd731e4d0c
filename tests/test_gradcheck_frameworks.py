"""check_torch and check_jax: our finite differences against the framework's own vector-Jacobian products.

Each test skips cleanly when its framework is not installed (neither is a dependency)."""
import numpy as np
import pytest

from numpy_densenet.gradcheck import check_jax, check_torch


# -- PyTorch ---------------------------------------------------------------------------------------------------
@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def rms_norm(torch, forget_eps):
    class RMSNorm(torch.autograd.Function):
        """y = x / sqrt(mean(x^2) + eps) over the last axis."""

        @staticmethod
        def forward(ctx, x, eps=1e-5):
            ctx.save_for_backward(x)
            return x * (x.pow(2).mean(-1, keepdim=True) + eps).rsqrt()

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            r = (x.pow(2).mean(-1, keepdim=True) + (0.0 if forget_eps else 1e-5)).rsqrt()
            return r * g - x * r ** 3 * (g * x).mean(-1, keepdim=True), None
    return RMSNorm


def row_max(torch):
    class RowMax(torch.autograd.Function):
        """max over the last axis, the gradient to the first maximum: a valid gradient at a tie."""

        @staticmethod
        def forward(ctx, x):
            i = x.argmax(-1, keepdim=True)
            ctx.save_for_backward(i)
            ctx.shape = x.shape
            return x.gather(-1, i).squeeze(-1)

        @staticmethod
        def backward(ctx, g):
            i, = ctx.saved_tensors
            return torch.zeros(ctx.shape, dtype=g.dtype).scatter(-1, i, g.unsqueeze(-1))
    return RowMax


def test_a_bug_below_torchs_tolerance_is_caught(torch):
    x = torch.randn(4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    wrong, right = rms_norm(torch, forget_eps=True), rms_norm(torch, forget_eps=False)
    assert torch.autograd.gradcheck(wrong.apply, (x,), raise_exception=False)       # torch: passes
    result = check_torch(wrong.apply, x)
    assert [r.name for r in result.failures] == ["input"] and result.module == "RMSNorm.apply"
    assert check_torch(right.apply, x).passed


def test_a_valid_gradient_at_ties_passes(torch):
    x = torch.tensor([[1., 3., 3., 0.], [2., 2., -1., 2.]], dtype=torch.float64, requires_grad=True)
    fn = row_max(torch).apply
    assert not torch.autograd.gradcheck(fn, (x,), raise_exception=False)            # torch: a false alarm
    result = check_torch(fn, x)
    assert result.passed and result.rows[0].kinks > 0


def test_a_modules_parameters_get_their_own_rows_and_the_module_is_untouched(torch):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(),
                                 torch.nn.Dropout(0.3), torch.nn.Linear(6, 2))
    before = {k: v.clone() for k, v in module.state_dict().items()}
    x = torch.randn(5, 4)
    state = torch.get_rng_state()
    result = check_torch(module, x, mode="directional", float32=True)
    assert result.passed, result.table()
    assert [r.name for r in result.rows] == ["input"] + [n for n, _ in module.named_parameters()]
    assert len(result.float32_rows) == len(result.rows)
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())
    assert next(module.parameters()).dtype == torch.float32
    assert torch.equal(torch.get_rng_state(), state)


def test_labels_pass_through_and_keywords_name_rows(torch):
    logits, labels = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0])
    result = check_torch(torch.nn.CrossEntropyLoss(), logits, labels)
    assert result.passed and [r.name for r in result.rows] == ["input"]
    result = check_torch(lambda a, b: (a * b).sum(-1), {"a": torch.randn(3, 2), "b": np.ones((3, 2))})
    assert result.passed and [r.name for r in result.rows] == ["a", "b"]
    result = check_torch(lambda x: x.max(-1), logits)                       # (values, indices)
    assert result.passed and "integer outputs left out (no gradient)" in result.notes


def test_protocol_bugs_are_named(torch):
    class ScalesGradOutput(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g.mul_(2)                     # the right value, written into grad_output

    class ClampsItsInput(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x.clamp_(min=0) * 1.0         # the caller's tensor changed

        @staticmethod
        def backward(ctx, g):
            x, = ctx.saved_tensors
            return g * (x > 0)

    x = torch.randn(3, 4, dtype=torch.float64)
    result = check_torch(ScalesGradOutput.apply, x)
    assert not result.passed and not result.upstream_intact
    result = check_torch(ClampsItsInput.apply, x)
    assert not result.passed and not result.inputs_intact and "forward changed input 0" in " ".join(result.notes)


def test_bad_use_is_named(torch):
    x = torch.randn(3, 4, dtype=torch.float64)
    cases = [
        (lambda: check_torch(lambda x: x.detach() * 2, x), "output does not require grad"),
        (lambda: check_torch(lambda x: torch.from_numpy(x.detach().numpy() * 2), x), "output does not require grad"),
        (lambda: check_torch(lambda x: (x * 2).float(), x), "torch.float32 tensor as its output for torch.float64"),
        (lambda: check_torch(lambda x: 3, x), "fn returned int as its output, expected a tensor"),
        (lambda: check_torch(lambda x: x * 2, torch.randn(3, dtype=torch.complex128)), "complex inputs are not"),
        (lambda: check_torch("relu", x), "fn must be callable"),
        (lambda: check_torch(lambda x: x, x, samples=0), "check_torch: samples must be a positive int"),
    ]
    for call, message in cases:
        with pytest.raises((TypeError, ValueError), match=message):
            call()


# -- JAX -------------------------------------------------------------------------------------------------------
@pytest.fixture
def jax():
    return pytest.importorskip("jax")


def test_jax_functions_are_checked_in_float64(jax):
    jnp = jax.numpy
    rng = np.random.default_rng(0)
    result = check_jax(lambda x, w: jnp.tanh(x @ w), rng.standard_normal((3, 4)), rng.standard_normal((4, 2)),
                       float32=True)
    assert result.passed and [r.name for r in result.rows] == ["input[0]", "input[1]"]
    assert result.rows[0].detects < 1e-5                                  # float64 resolution, not float32's
    assert jnp.asarray(1.0).dtype == jnp.float32 or jax.config.jax_enable_x64   # x64 only inside the check


def test_a_wrong_custom_vjp_is_caught(jax):
    jnp = jax.numpy

    @jax.custom_vjp
    def relu(x):
        return jnp.maximum(x, 0)

    relu.defvjp(lambda x: (relu(x), x), lambda x, g: (g * (x > 0) * 1.0001,))
    result = check_jax(relu, np.random.default_rng(1).standard_normal(10))
    assert [r.name for r in result.failures] == ["input"]


def test_jax_keywords_and_pass_through(jax):
    jnp = jax.numpy
    result = check_jax(lambda x, k: (jnp.sum(x ** k), x * 2), {"x": np.arange(1.0, 4.0), "k": 3})
    assert result.passed and [r.name for r in result.rows] == ["x"]
    with pytest.raises(TypeError, match="int32 array as its output|int64 array as its output"):
        check_jax(lambda x: jnp.round(x).astype(int), np.ones(3))
