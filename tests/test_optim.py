"""Tests of numpy_densenet.optim: SGD and the LR schedules, against torch.optim where torch is installed."""
import io

import numpy as np
import pytest
from hypothesis import given, strategies as st

from numpy_densenet.optim import SGD, CosineAnnealingLR, MultiStepLR, paper_schedule

from numpy_densenet.nn.module import Module, Parameter


SHAPES = [(3, 4), (5,), (2, 3, 2, 2)]
CONFIGS = {
    "plain": {},
    "momentum": dict(momentum=0.9),
    "dampening": dict(momentum=0.9, dampening=0.3),
    "nesterov": dict(momentum=0.9, nesterov=True),
    "weight_decay": dict(weight_decay=1e-2),
    "momentum_wd": dict(momentum=0.8, weight_decay=5e-2),
    "all_damp": dict(momentum=0.7, dampening=0.5, weight_decay=1e-2),
    "nesterov_wd": dict(momentum=0.9, weight_decay=1e-2, nesterov=True),
}
TOL = {np.float32: dict(rtol=1e-6, atol=1e-6), np.float64: dict(rtol=1e-12, atol=1e-13)}


def make_params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [Parameter(rng.standard_normal(s).astype(dtype)) for s in SHAPES]


def random_grads(params, rng):
    for p in params:
        p.grad[...] = rng.standard_normal(p.shape)


def run(opt, params, steps, seed):
    """``steps`` SGD steps with random gradients drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        opt.zero_grad()
        random_grads(params, rng)
        opt.step()


def roundtrip_npz(state):
    """Save with np.savez and load back without pickle."""
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


# -- SGD against torch ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_sgd_matches_torch(config, dtype):
    torch = pytest.importorskip("torch")
    kwargs = CONFIGS[config]
    params = make_params(dtype)
    arrays = [p.data for p in params]
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt = SGD(params, lr=0.1, **kwargs)
    topt = torch.optim.SGD(tparams, lr=0.1, **kwargs)
    rng = np.random.default_rng(1)
    for step in range(6):
        if step == 3:  # as a scheduler would
            opt.lr = 0.05
            topt.param_groups[0]["lr"] = 0.05
        random_grads(params, rng)
        for p, tp in zip(params, tparams):
            tp.grad = torch.from_numpy(p.grad.copy())
        opt.step()
        topt.step()
        for p, tp, a in zip(params, tparams, arrays):
            assert p.data is a and p.data.dtype == dtype
            np.testing.assert_allclose(p.data, tp.detach().numpy(), **TOL[dtype])
    assert opt.step_count == 6


@given(lr=st.floats(0, 1), momentum=st.floats(0, 0.99), dampening=st.floats(0, 1),
       weight_decay=st.floats(0, 0.1), nesterov=st.booleans(), seed=st.integers(0, 2**31))
def test_sgd_matches_torch_random_hyperparameters(lr, momentum, dampening, weight_decay, nesterov, seed):
    torch = pytest.importorskip("torch")
    if nesterov and (momentum == 0 or dampening != 0):
        dampening = 0.0
        momentum = max(momentum, 0.5)
    kwargs = dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov)
    params = make_params(np.float64, seed)
    tparams = [torch.tensor(p.data.copy(), requires_grad=True) for p in params]
    opt, topt = SGD(params, **kwargs), torch.optim.SGD(tparams, **kwargs)
    rng = np.random.default_rng(seed)
    for _ in range(4):
        random_grads(params, rng)
        for p, tp in zip(params, tparams):
            tp.grad = torch.from_numpy(p.grad.copy())
        opt.step()
        topt.step()
    for p, tp in zip(params, tparams):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-13)


# -- SGD without torch -----------------------------------------------------------------------------

def test_sgd_by_hand():
    p = Parameter(np.array([1.0, -2.0]))
    opt = SGD([p], lr=0.5, momentum=0.9, dampening=0.5, weight_decay=0.1)
    p.grad[...] = [1.0, 1.0]
    opt.step()  # d_p = g + 0.1 p = [1.1, 0.8]; buf = d_p; p -= 0.5 buf
    np.testing.assert_allclose(p.data, [1.0 - 0.55, -2.0 - 0.4], rtol=1e-15)
    p.grad[...] = [0.0, 2.0]
    opt.step()  # d_p = [0.045, 1.76]; buf = 0.9 * [1.1, 0.8] + 0.5 * d_p
    buf = 0.9 * np.array([1.1, 0.8]) + 0.5 * np.array([0.045, 1.76])
    np.testing.assert_allclose(p.data, np.array([0.45, -2.4]) - 0.5 * buf, rtol=1e-15)


def test_sgd_nesterov_by_hand():
    p = Parameter(np.array([0.0]))
    opt = SGD([p], lr=1.0, momentum=0.5, nesterov=True)
    p.grad[...] = 1.0
    opt.step()  # buf = 1; d_p = 1 + 0.5 * 1
    assert p.data[0] == -1.5
    opt.step()  # buf = 0.5 + 1 = 1.5; d_p = 1 + 0.75
    assert p.data[0] == -3.25


def test_sgd_does_not_touch_grad_and_zero_grad():
    params = make_params(np.float64)
    random_grads(params, np.random.default_rng(0))
    grads = [p.grad.copy() for p in params]
    opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1, nesterov=True)
    opt.step()
    opt.step()
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(p.grad, g)
    grad_arrays = [p.grad for p in params]
    opt.zero_grad()
    for p, g in zip(params, grad_arrays):
        assert p.grad is g and not p.grad.any()


@pytest.mark.parametrize("config", ["plain", "nesterov_wd", "all_damp"])
def test_dtype_preserved_float32(config):
    params = make_params(np.float32)
    arrays = [p.data for p in params]
    opt = SGD(params, lr=np.float64(0.1), **CONFIGS[config])
    reference = [p.data.copy() for p in params]
    rng = np.random.default_rng(3)
    random_grads(params, rng)
    opt.step()
    opt.lr = np.float64(1 / 3)  # a float64 scalar must not upcast the arithmetic
    opt.step()
    for p, a in zip(params, arrays):
        assert p.data is a and p.data.dtype == np.float32 and p.grad.dtype == np.float32
    for name, buf in opt.state_dict().items():
        if name.startswith("momentum_buffer."):
            assert buf.dtype == np.float32
    if config == "plain":  # p -= lr * g, computed in float32
        g = params[0].grad
        expected = reference[0] - np.float32(0.1) * g
        expected -= np.float32(1 / 3) * g
        np.testing.assert_array_equal(params[0].data, expected)


def test_grad_dtype_mismatch_raises_before_updating():
    params = make_params(np.float32)
    params[-1].grad = params[-1].grad.astype(np.float64)
    before = [p.data.copy() for p in params]
    with pytest.raises(TypeError, match="float64"):
        SGD(params, lr=0.1).step()
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p.data, b)


def test_named_parameters_from_module():

    class Tiny(Module):
        def __init__(self):
            super().__init__()
            self.weight = Parameter(np.ones((2, 2)))
            self.bias = Parameter(np.zeros(2))

    class Net(Module):
        def __init__(self):
            super().__init__()
            self.fc = Tiny()
            self.scale = Parameter(np.ones(1))

    net = Net()
    opt = SGD(net.named_parameters(), lr=0.1, momentum=0.9)
    assert opt.names == [name for name, _ in net.named_parameters()]
    for p in net.parameters():
        p.grad[...] = 1.0
    opt.step()
    keys = {k for k in opt.state_dict() if k.startswith("momentum_buffer.")}
    assert keys == {"momentum_buffer." + n for n in opt.names}
    assert "momentum_buffer.fc.weight" in keys
    np.testing.assert_allclose(net.fc.weight.data, 0.9)
    net.zero_grad()
    opt2 = SGD(dict(net.named_parameters()), lr=0.1)
    assert opt2.names == opt.names


def test_unnamed_params_get_index_names():
    opt = SGD(make_params(np.float64), lr=0.1, momentum=0.5)
    assert opt.names == ["0", "1", "2"]
    opt.step()
    assert sorted(k for k in opt.state_dict() if k.startswith("momentum_buffer.")) == [
        "momentum_buffer.0", "momentum_buffer.1", "momentum_buffer.2"]


# -- validation -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-0.1), r"lr.*-0\.1"),
    (dict(lr=float("nan")), r"lr"),
    (dict(lr=0.1, momentum=-0.5), r"momentum.*-0\.5"),
    (dict(lr=0.1, weight_decay=-1e-4), r"weight_decay.*-0\.0001"),
    (dict(lr=0.1, nesterov=True), r"[Nn]esterov.*momentum > 0.*dampening = 0.*momentum=0"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), r"[Nn]esterov.*dampening=0\.1"),
])
def test_sgd_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SGD(make_params(np.float64), **kwargs)


def test_sgd_validation_params_and_lr_setter():
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)
    p = Parameter(np.zeros(2))
    with pytest.raises(ValueError, match="more than once"):
        SGD([p, p], lr=0.1)
    with pytest.raises(ValueError, match="duplicate.*'a'"):
        SGD([("a", p), ("a", Parameter(np.zeros(2)))], lr=0.1)
    with pytest.raises(ValueError, match="mix"):
        SGD([("a", p), Parameter(np.zeros(2))], lr=0.1)
    with pytest.raises(TypeError, match="ndarray"):
        SGD([np.zeros(2)], lr=0.1)
    opt = SGD([p], lr=0.1)
    opt.lr = 0.01
    assert opt.lr == 0.01
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    assert opt.lr == 0.01
    with pytest.raises(AttributeError):
        opt.momentum = 0.5


# -- state dict -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("config", ["plain", "momentum", "nesterov_wd", "all_damp"])
def test_sgd_state_dict_bit_identical_continuation(config, dtype):
    kwargs = CONFIGS[config]
    params = make_params(dtype)
    opt = SGD(params, lr=0.1, **kwargs)
    run(opt, params, 3, seed=10)
    opt.lr = 0.03  # the saved lr must be the current one
    state = roundtrip_npz(opt.state_dict())
    saved_data = [p.data.copy() for p in params]
    run(opt, params, 3, seed=11)

    fresh = [Parameter(d.copy()) for d in saved_data]
    opt2 = SGD(fresh, lr=1.0)  # hyper-parameters come from the state dict
    opt2.load_state_dict(state)
    assert (opt2.lr, opt2.momentum, opt2.dampening, opt2.weight_decay, opt2.nesterov, opt2.step_count) == (
        0.03, kwargs.get("momentum", 0.0), kwargs.get("dampening", 0.0), kwargs.get("weight_decay", 0.0),
        kwargs.get("nesterov", False), 3)
    run(opt2, fresh, 3, seed=11)
    for p, q in zip(params, fresh):
        assert q.data.dtype == dtype
        np.testing.assert_array_equal(p.data, q.data)
        assert p.data.tobytes() == q.data.tobytes()
    for k, v in opt.state_dict().items():
        np.testing.assert_array_equal(v, opt2.state_dict()[k])


def test_sgd_state_dict_is_a_copy_and_plain():
    params = make_params(np.float64)
    opt = SGD(params, lr=0.1, momentum=0.9)
    run(opt, params, 1, seed=0)
    state = opt.state_dict()
    assert all(type(v) is np.ndarray and v.dtype != object for v in state.values())
    assert set(state) == {"lr", "momentum", "dampening", "weight_decay", "nesterov", "step",
                          "momentum_buffer.0", "momentum_buffer.1", "momentum_buffer.2"}
    assert state["step"] == 1 and state["lr"] == 0.1
    state["momentum_buffer.0"][...] = 123.0
    assert not np.any(opt.state_dict()["momentum_buffer.0"] == 123.0)
    loaded = dict(state)
    opt.load_state_dict(loaded)
    loaded["momentum_buffer.0"][...] = -1.0  # the optimizer must not alias the loaded arrays
    assert np.all(opt.state_dict()["momentum_buffer.0"] == 123.0)


def test_sgd_state_dict_before_any_step_has_no_buffers():
    params = make_params(np.float64)
    opt = SGD(params, lr=0.1, momentum=0.9)
    state = opt.state_dict()
    assert not any(k.startswith("momentum_buffer.") for k in state)
    fresh = make_params(np.float64)
    opt2 = SGD(fresh, lr=0.5)
    opt2.load_state_dict(state)
    run(opt, params, 2, seed=4)
    run(opt2, fresh, 2, seed=4)
    for p, q in zip(params, fresh):
        np.testing.assert_array_equal(p.data, q.data)


def test_sgd_load_state_dict_errors():
    params = make_params(np.float64)
    opt = SGD(params, lr=0.1, momentum=0.9)
    run(opt, params, 2, seed=0)
    good = opt.state_dict()
    target = SGD(make_params(np.float64), lr=0.7)
    before = target.state_dict()

    missing = {k: v for k, v in good.items() if k not in ("momentum_buffer.1", "lr")}
    with pytest.raises(ValueError, match="missing keys: lr"):
        target.load_state_dict(missing)
    missing = {k: v for k, v in good.items() if k != "momentum_buffer.1"}
    with pytest.raises(ValueError, match=r"missing keys: momentum_buffer\.1"):
        target.load_state_dict(missing)
    with pytest.raises(ValueError, match=r"unexpected keys: momentum_buffer\.9, extra"):
        target.load_state_dict({**good, "momentum_buffer.9": np.zeros(1), "extra": np.zeros(1)})
    with pytest.raises(ValueError, match=r"size mismatch for momentum_buffer\.0.*\(4, 3\).*\(3, 4\)"):
        target.load_state_dict({**good, "momentum_buffer.0": np.zeros((4, 3))})
    with pytest.raises(ValueError, match="momentum"):
        target.load_state_dict({**good, "momentum": np.array(-1.0)})
    with pytest.raises(ValueError, match="step"):
        target.load_state_dict({**good, "step": np.array(1.5)})
    with pytest.raises(ValueError, match="lr must be a scalar"):
        target.load_state_dict({**good, "lr": np.array([0.1, 0.2])})
    after = target.state_dict()  # nothing changed by the failed loads
    assert set(after) == set(before)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


# -- schedules --------------------------------------------------------------------------------------

def torch_lrs(torch, make_scheduler, base_lr, epochs):
    """Learning rates of a torch scheduler for epochs 0..epochs-1."""
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=base_lr)
    sched = make_scheduler(topt)
    lrs = []
    for _ in range(epochs):
        lrs.append((sched.get_last_lr()[0], topt.param_groups[0]["lr"]))
        topt.step()
        sched.step()
    return lrs


def our_lrs(scheduler, opt, epochs):
    lrs = []
    for _ in range(epochs):
        lrs.append((scheduler.get_last_lr(), opt.lr))
        scheduler.step()
    return lrs


@pytest.mark.parametrize("milestones, gamma", [([5, 10, 15], 0.1), ([12, 3, 7, 7], 0.5), ([0, 4], 0.2),
                                               ([], 0.1), ([30], 0.1)])
def test_multistep_matches_torch(milestones, gamma):
    torch = pytest.importorskip("torch")
    opt = SGD(make_params(np.float64), lr=0.1)
    ours = our_lrs(MultiStepLR(opt, milestones, gamma), opt, 20)
    theirs = torch_lrs(torch, lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones, gamma), 0.1, 20)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=0)


@pytest.mark.parametrize("T_max, eta_min", [(20, 0.0), (7, 0.001), (10, 0.05), (1, 0.0)])
def test_cosine_matches_torch(T_max, eta_min):
    torch = pytest.importorskip("torch")
    opt = SGD(make_params(np.float64), lr=0.1)
    ours = our_lrs(CosineAnnealingLR(opt, T_max, eta_min), opt, 20)
    theirs = torch_lrs(torch, lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max, eta_min),
                       0.1, 20)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


def test_schedules_closed_form_without_torch():
    opt = SGD(make_params(np.float64), lr=0.2)
    sched = MultiStepLR(opt, [3, 6], gamma=0.5)
    assert [sched.lr_at(e) for e in range(8)] == [0.2, 0.2, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05]
    assert sched.last_epoch == 0 and opt.lr == 0.2
    opt = SGD(make_params(np.float64), lr=0.2)
    cos = CosineAnnealingLR(opt, T_max=4, eta_min=0.02)
    np.testing.assert_allclose([cos.lr_at(e) for e in (0, 2, 4, 8)], [0.2, 0.11, 0.02, 0.2], rtol=1e-14)


def test_lr_at_is_pure_and_matches_step():
    opt = SGD(make_params(np.float64), lr=0.1)
    sched = CosineAnnealingLR(opt, T_max=9, eta_min=0.001)
    expected = [sched.lr_at(e) for e in range(15)]
    assert sched.last_epoch == 0 and opt.lr == expected[0]
    for e in range(1, 15):
        sched.step()
        assert sched.last_epoch == e
        assert opt.lr == sched.get_last_lr() == expected[e]
    with pytest.raises(ValueError, match="epoch"):
        sched.lr_at(-1)


def test_paper_schedule():
    opt = SGD(make_params(np.float64), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    sched = paper_schedule(opt, 300)
    assert isinstance(sched, MultiStepLR)
    assert sched.milestones == [150, 225] and sched.gamma == 0.1
    lrs = our_lrs(sched, opt, 300)
    assert lrs[149][1] == 0.1 and lrs[150][1] == pytest.approx(0.01, rel=1e-15)
    assert lrs[224][1] == pytest.approx(0.01, rel=1e-15) and lrs[225][1] == pytest.approx(0.001, rel=1e-15)
    assert paper_schedule(SGD(make_params(np.float64), lr=0.1), 7).milestones == [3, 5]
    with pytest.raises(ValueError, match="epochs"):
        paper_schedule(opt, 0)


@pytest.mark.parametrize("make, make_other", [
    (lambda o: MultiStepLR(o, [2, 5, 5], gamma=0.3), lambda o: MultiStepLR(o, [1], gamma=0.9)),
    (lambda o: CosineAnnealingLR(o, T_max=6, eta_min=0.01), lambda o: CosineAnnealingLR(o, T_max=2)),
], ids=["multistep", "cosine"])
def test_scheduler_state_dict_roundtrip(make, make_other):
    opt = SGD(make_params(np.float64), lr=0.1)
    sched = make(opt)
    for _ in range(4):
        sched.step()
    state = roundtrip_npz(sched.state_dict())
    assert all(type(v) is np.ndarray for v in state.values())
    later = [sched.lr_at(e) for e in range(4, 12)]

    opt2 = SGD(make_params(np.float64), lr=0.1)
    sched2 = make_other(opt2)  # hyper-parameters come from the state dict
    sched2.load_state_dict(state)
    assert sched2.last_epoch == 4 and opt2.lr == later[0] == opt.lr
    got = []
    for _ in range(8):
        got.append(opt2.lr)
        sched2.step()
    assert got == later

    with pytest.raises(ValueError, match="missing keys: last_epoch"):
        sched2.load_state_dict({k: v for k, v in state.items() if k != "last_epoch"})
    with pytest.raises(ValueError, match="unexpected keys: bogus"):
        sched2.load_state_dict({**state, "bogus": np.zeros(1)})
    assert sched2.last_epoch == 12


def test_scheduler_validation():
    opt = SGD(make_params(np.float64), lr=0.1)
    with pytest.raises(ValueError, match="T_max"):
        CosineAnnealingLR(opt, T_max=0)
    with pytest.raises(ValueError, match="eta_min"):
        CosineAnnealingLR(opt, T_max=5, eta_min=-1)
    with pytest.raises(ValueError, match="milestone"):
        MultiStepLR(opt, [3, -1])
    with pytest.raises(ValueError, match="milestone"):
        MultiStepLR(opt, [2.5])
    with pytest.raises(ValueError, match="gamma"):
        MultiStepLR(opt, [3], gamma=-0.1)
    assert opt.lr == 0.1
