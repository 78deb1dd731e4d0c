"""load_state_dict details that PyTorch users rely on."""
import numpy as np

from numpy_densenet import fast, nn


def _stats(bn, seed=0):
    rng = np.random.default_rng(seed)
    return {"weight": rng.standard_normal(bn.num_features), "bias": rng.standard_normal(bn.num_features),
            "running_mean": rng.standard_normal(bn.num_features),
            "running_var": rng.uniform(0.5, 2.0, bn.num_features)}


def test_standalone_batchnorm_accepts_a_state_dict_without_num_batches_tracked():
    """PyTorch's BatchNorm2d fills a missing counter with 0; a standalone layer (no dotted keys) too."""
    for layer in (nn.BatchNorm2d(3), fast.BatchNormReLU2d(3)):
        layer.num_batches_tracked[...] = 7
        state = _stats(layer)
        missing, unexpected = layer.load_state_dict(state)
        assert missing == [] and unexpected == []
        assert int(layer.num_batches_tracked) == 0
        dtype = layer.running_var.dtype
        np.testing.assert_array_equal(layer.running_var, state["running_var"].astype(dtype))
        np.testing.assert_array_equal(layer.weight.data, state["weight"].astype(dtype))


def test_a_missing_weight_is_still_an_error():
    bn = nn.BatchNorm2d(3)
    state = _stats(bn)
    del state["weight"]
    try:
        bn.load_state_dict(state)
    except ValueError as e:
        assert "weight" in str(e)
    else:
        raise AssertionError("a state dict without 'weight' was accepted")
