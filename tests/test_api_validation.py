"""The Python API refuses bad arguments with a clear error and changes nothing on a failed load (issue 15)."""
from __future__ import annotations

import numpy as np
import pytest

from numpy_densenet import densenet_bc, fast, nn


@pytest.mark.parametrize("make, error, message", [
    (lambda: nn.Conv2d(2, 3, 3, generator=42), TypeError, "generator must be a numpy.random.Generator"),
    (lambda: nn.Linear(2, 3, generator="seed"), TypeError, "generator must be a numpy.random.Generator"),
    (lambda: fast.Conv2d(2, 3, 3, generator=1.5), TypeError, "generator must be a numpy.random.Generator"),
    (lambda: nn.Flatten(1.5), TypeError, "start_dim must be a non-negative int, got 1.5"),
    (lambda: nn.Flatten(-1), TypeError, "start_dim must be a non-negative int"),
    (lambda: nn.Sequential(1, 2), TypeError, "every child must be a Module, got int"),
    (lambda: nn.Sequential({"a": nn.ReLU(), "b": "relu"}), TypeError, "child 'b'"),
    (lambda: nn.BatchNorm2d(3, eps=float("inf")), ValueError, "eps must be a finite positive number"),
    (lambda: nn.BatchNorm2d(3, eps=float("nan")), ValueError, "eps must be a finite positive number"),
    (lambda: nn.BatchNorm2d(3, eps=True), ValueError, "eps must be a finite positive number"),
    (lambda: nn.BatchNorm2d(3, momentum="0.1"), ValueError, "momentum must be a number in"),
    (lambda: fast.BatchNormReLU2d(3, eps=0), ValueError, "eps must be a finite positive number"),
    (lambda: nn.Conv2d(2.0, 3, 3), ValueError, "in_channels must be a positive int, got 2.0"),
    (lambda: nn.Dropout(0.5, seed=1.5), TypeError, "seed must be an int or None"),
])
def test_constructors_check_their_arguments(make, error, message):
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("bad", [None, [1, 2], "x", np.ones((2, 1, 3, 3), dtype=np.int64)])
def test_concat_rejects_non_float_arrays_by_name(bad):
    x = np.ones((2, 1, 3, 3))
    with pytest.raises(TypeError, match=r"Concat: input 1 must be a float32 or float64 NumPy array"):
        nn.Concat()(x, bad)


def state_of(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("corrupt, message", [
    (lambda s, k: s.__setitem__(k, np.full(s[k].shape, "x")), "dtype <U1 cannot be loaded"),
    (lambda s, k: s.__setitem__(k, s[k].astype(np.complex64)), "dtype complex64 cannot be loaded"),
    (lambda s, k: s.__setitem__(k, np.where(np.arange(s[k].size).reshape(s[k].shape) == 0, np.nan, s[k])),
     "non-finite"),
    (lambda s, k: s.__setitem__(k, s[k].astype(bool)), "dtype bool cannot be loaded"),
])
def test_load_state_dict_validates_everything_before_changing_anything(corrupt, message):
    """A bad value anywhere (here: the last tensor in order) leaves every tensor as it was."""
    model = densenet_bc(16, 4, seed=0)
    before = state_of(model)
    new = state_of(densenet_bc(16, 4, seed=1))
    last = [k for k in new if k.endswith("weight")][-1]
    corrupt(new, last)
    with pytest.raises(ValueError, match=message):
        model.load_state_dict(new)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def test_load_state_dict_refuses_negative_running_variance_and_names_it():
    bn = nn.BatchNorm2d(3)
    state = bn.state_dict()
    state["running_var"] = np.array([1.0, -0.5, 1.0], dtype=np.float32)
    with pytest.raises(ValueError, match=r"running_var: a running variance must be >= 0"):
        bn.load_state_dict(state)
    np.testing.assert_array_equal(bn.running_var, np.ones(3, dtype=np.float32))


def test_load_state_dict_refuses_integer_values_for_float_tensors_instead_of_casting():
    """Issue 22: an int64 tensor in a converted file was cast silently, then refused by the file's reader after
    the file was written; integers are refused where floats belong (and the model is left unchanged)."""
    bn = nn.BatchNorm2d(2)
    with pytest.raises(ValueError, match=r"weight: dtype int64 cannot be loaded into a float32 tensor"):
        bn.load_state_dict({"weight": np.array([2, 3]), "bias": np.zeros(2), "running_mean": np.zeros(2),
                            "running_var": np.ones(2), "num_batches_tracked": np.array(4)})
    assert bn.weight.data.tolist() == [1.0, 1.0]
    bn.load_state_dict({"weight": np.array([2.0, 3.0]), "bias": np.zeros(2), "running_mean": np.zeros(2),
                        "running_var": np.ones(2), "num_batches_tracked": np.array(4)})
    assert bn.weight.data.dtype == np.float32 and bn.weight.data.tolist() == [2.0, 3.0]


def test_standalone_batchnorm_loads_a_state_dict_without_num_batches_tracked():
    bn = nn.BatchNorm2d(2)
    bn.num_batches_tracked[...] = 5
    missing, unexpected = bn.load_state_dict({"weight": np.ones(2), "bias": np.zeros(2),
                                              "running_mean": np.zeros(2), "running_var": np.ones(2)})
    assert (missing, unexpected) == ([], []) and int(bn.num_batches_tracked) == 0


def test_load_state_dict_needs_a_mapping():
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        nn.BatchNorm2d(2).load_state_dict([("weight", np.ones(2))])
