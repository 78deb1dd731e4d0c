"""Tests of the DenseNet model, its weights files and its CLI commands (no PyTorch needed).

Parameter counts and state_dict names are checked against torchvision's (facts sheet) and against counts
derived here from first principles; the whole-model backward pass is checked with finite differences, and a
deliberately broken dense block must fail that check.
"""
import copy
import math
import os
import pickle
from collections import OrderedDict
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from numpy_densenet import fast
from numpy_densenet.cli import main
from numpy_densenet.gradcheck import gradcheck, model_cases
from numpy_densenet.io import WeightsFileError, load_weights, save_weights
from numpy_densenet.model import DenseBlock, rename_old_keys
from numpy_densenet.zoo import DenseNet, densenet, densenet121, densenet161, densenet169, densenet201, densenet_bc

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def tiny(**overrides):
    """A tiny float64 DenseNet-BC with the CIFAR stem (override anything)."""
    cfg = dict(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=5, stem="cifar",
               dtype=np.float64, seed=0)
    cfg.update(overrides)
    return DenseNet(**cfg)


def randomize_bn(model, seed=0):
    """Non-trivial BN affine parameters and running statistics (so eval mode is not an identity)."""
    rng = np.random.default_rng(seed)
    state = model.state_dict()
    for key, value in state.items():
        if key.startswith("classifier") or value.ndim != 1:
            continue
        if key.endswith(".weight"):
            state[key] = rng.uniform(0.5, 1.5, value.shape)
        elif key.endswith(".bias") or key.endswith("running_mean"):
            state[key] = rng.normal(0, 0.2, value.shape)
        elif key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, value.shape)
    model.load_state_dict(state)
    return model


def floor_theta(theta, channels):
    """floor(theta * C) computed exactly (theta as the exact rational value of the float)."""
    return math.floor(Fraction(theta) * channels)


# -- parameter counts ---------------------------------------------------------------------------------------
def expected_param_count(growth_rate, block_config, num_init_features, bn_size=4, num_classes=1000,
                         compression=0.5, stem="imagenet", in_channels=3):
    """Trainable scalars of a DenseNet, from the architecture alone."""
    k = growth_rate
    n = in_channels * num_init_features * (49 if stem == "imagenet" else 9)          # conv0
    n += 2 * num_init_features if stem == "imagenet" else 0                            # norm0
    c = num_init_features
    for b, num_layers in enumerate(block_config):
        for l in range(num_layers):
            cin = c + l * k
            n += 2 * cin                                                                # norm1
            if bn_size is None:
                n += cin * k * 9                                                        # conv1 3x3
            else:
                n += cin * bn_size * k + 2 * bn_size * k + bn_size * k * k * 9          # conv1, norm2, conv2
        c += num_layers * k
        if b != len(block_config) - 1:
            out = floor_theta(compression, c)
            n += 2 * c + c * out                                                        # norm, conv
            c = out
    return n + 2 * c + c * num_classes + num_classes                                    # norm5, classifier


TORCHVISION = [  # facts sheet: torchvision.models.densenet, 1000 classes
    (densenet121, (32, (6, 12, 24, 16), 64), 7_978_856),
    (densenet161, (48, (6, 12, 36, 24), 96), 28_681_000),
    (densenet169, (32, (6, 12, 32, 32), 64), 14_149_480),
    (densenet201, (32, (6, 12, 48, 32), 64), 20_013_928),
]


@pytest.mark.parametrize("factory, arch, count", TORCHVISION, ids=lambda v: getattr(v, "__name__", None))
def test_torchvision_parameter_counts(factory, arch, count):
    model = factory()
    assert model.num_parameters() == count
    assert sum(p.size for p in model.parameters()) == count
    assert expected_param_count(*arch) == count               # the first-principles count agrees too
    assert model.config["growth_rate"] == arch[0] and model.config["block_config"] == arch[1]


@pytest.mark.parametrize("depth, k, count", [(100, 12, 769_162), (250, 24, 15_324_406), (190, 40, 25_624_430)])
def test_densenet_bc_parameter_counts(depth, k, count):
    model = densenet_bc(depth, k, num_classes=10)
    assert model.num_parameters() == count
    n = (depth - 4) // 6
    assert model.config["block_config"] == (n, n, n) and model.config["num_init_features"] == 2 * k
    assert expected_param_count(k, (n, n, n), 2 * k, 4, 10, 0.5, "cifar") == count


@pytest.mark.parametrize("depth, k, millions", [(40, 12, 1.0), (100, 12, 7.0), (100, 24, 27.2)])
def test_plain_densenet_parameter_counts_match_paper_table(depth, k, millions):
    model = densenet(depth, k, num_classes=10)
    n = (depth - 4) // 3
    assert model.config["block_config"] == (n, n, n) and model.config["bn_size"] is None
    count = model.num_parameters()
    assert round(count / 1e6, 1) == millions
    assert count == expected_param_count(k, (n, n, n), 16, None, 10, 1.0, "cifar")


configs = st.fixed_dictionaries(dict(
    growth_rate=st.integers(1, 6),
    block_config=st.lists(st.integers(1, 3), min_size=1, max_size=4).map(tuple),
    num_init_features=st.integers(1, 10),
    bn_size=st.one_of(st.none(), st.integers(1, 4)),
    num_classes=st.integers(1, 7),
    compression=st.sampled_from([1.0, 0.5, 0.25, 0.75, 0.625, 0.875]),
    stem=st.sampled_from(["imagenet", "cifar"]),
    in_channels=st.integers(1, 4),
))


@settings(max_examples=40)
@given(cfg=configs)
def test_parameter_count_and_channel_growth_any_config(cfg):
    """Random configurations: parameter count, block offsets k0 + l*k, transition widths floor(theta*C)."""
    c, widths = cfg["num_init_features"], []
    for n in cfg["block_config"][:-1]:
        c = floor_theta(cfg["compression"], c + n * cfg["growth_rate"])
        widths.append(c)
    if 0 in widths:                       # a transition with no output channels cannot be built
        with pytest.raises(ValueError):
            DenseNet(**cfg, seed=0)
        return
    model = DenseNet(**cfg, seed=0)
    assert model.num_parameters() == expected_param_count(**cfg)
    k = cfg["growth_rate"]
    c = cfg["num_init_features"]
    blocks = model.blocks()
    assert len(blocks) == len(cfg["block_config"])
    for b, (block, num_layers) in enumerate(zip(blocks, cfg["block_config"])):
        assert block.offsets == [0] + [c + l * k for l in range(num_layers + 1)]
        for l, layer in enumerate(block.layers()):
            assert layer.norm1.num_features == c + l * k
            assert layer.conv1.weight.shape[1] == c + l * k
            last_conv = layer.conv2 if cfg["bn_size"] is not None else layer.conv1
            assert last_conv.weight.shape[0] == k
        c += num_layers * k
        assert block.num_output_features == c
        if b != len(blocks) - 1:
            trans = getattr(model.features, f"transition{b + 1}")
            assert trans.conv.weight.shape[:2] == (floor_theta(cfg["compression"], c), c)
            c = floor_theta(cfg["compression"], c)
    assert model.features.norm5.num_features == c == model.num_features
    assert model.classifier.weight.shape == (cfg["num_classes"], c)


def test_transition_width_floors():
    """theta = 0.5 halves with floor (torchvision's C // 2); other theta floor theta*C; theta = 1 keeps C."""
    m = DenseNet(3, (3, 1, 1), 7, bn_size=2, compression=0.5, stem="cifar", num_classes=2)   # 7 + 9 = 16
    assert m.features.transition1.conv.weight.shape[:2] == (8, 16)
    assert m.features.transition2.conv.weight.shape[:2] == (5, 11)                          # 11 // 2 = 5
    m = DenseNet(5, (3, 2), 10, bn_size=3, compression=0.7, stem="cifar", num_classes=2)    # 10 + 15 = 25
    assert m.features.transition1.conv.weight.shape[:2] == (17, 25)                         # floor(17.5)
    m = DenseNet(3, (2, 2), 5, bn_size=None, compression=1.0, stem="cifar", num_classes=2)
    assert m.features.transition1.conv.weight.shape[:2] == (11, 11)


# -- state_dict names ---------------------------------------------------------------------------------------
def torchvision_keys(block_config, bn_size=4, stem="imagenet"):
    """torchvision's state_dict keys, in order (norm0 only with the ImageNet stem, conv2/norm2 only -B)."""
    keys = ["features.conv0.weight"]
    if stem == "imagenet":
        keys += [f"features.norm0.{s}" for s in BN_KEYS]
    for b, num_layers in enumerate(block_config, 1):
        for l in range(1, num_layers + 1):
            p = f"features.denseblock{b}.denselayer{l}."
            keys += [p + "norm1." + s for s in BN_KEYS] + [p + "conv1.weight"]
            if bn_size is not None:
                keys += [p + "norm2." + s for s in BN_KEYS] + [p + "conv2.weight"]
        if b != len(block_config):
            keys += [f"features.transition{b}.norm.{s}" for s in BN_KEYS] + [f"features.transition{b}.conv.weight"]
    return keys + [f"features.norm5.{s}" for s in BN_KEYS] + ["classifier.weight", "classifier.bias"]


def test_densenet121_state_dict_keys_are_torchvisions():
    model = densenet121()
    state = model.state_dict()
    assert list(state) == torchvision_keys((6, 12, 24, 16))
    assert len(state) == 121 * 5 + 120 + 2       # 121 BatchNorms x 5 entries, 120 convs, classifier weight+bias
    shapes = {
        "features.conv0.weight": (64, 3, 7, 7), "features.norm0.running_var": (64,),
        "features.denseblock1.denselayer1.conv1.weight": (128, 64, 1, 1),
        "features.denseblock1.denselayer1.conv2.weight": (32, 128, 3, 3),
        "features.denseblock1.denselayer6.norm1.weight": (64 + 5 * 32,),
        "features.transition1.conv.weight": (128, 256, 1, 1),
        "features.denseblock4.denselayer16.norm1.running_mean": (512 + 15 * 32,),
        "features.transition3.conv.weight": (512, 1024, 1, 1),
        "features.norm5.weight": (1024,), "classifier.weight": (1000, 1024), "classifier.bias": (1000,),
    }
    for key, shape in shapes.items():
        assert state[key].shape == shape, key
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            assert value.shape == () and value.dtype == np.int64 and value == 0
        else:
            assert value.dtype == np.float32, key


@pytest.mark.parametrize("cfg", [
    dict(block_config=(2, 3), bn_size=2, stem="cifar"),
    dict(block_config=(2, 1, 2), bn_size=None, stem="cifar", compression=1.0),
    dict(block_config=(1, 2), bn_size=3, stem="imagenet", in_channels=1),
], ids=["bc-cifar", "plain-cifar", "bc-imagenet-grey"])
def test_small_model_state_dict_keys(cfg):
    model = DenseNet(4, num_init_features=6, num_classes=3, **cfg)
    assert list(model.state_dict()) == torchvision_keys(cfg["block_config"], cfg["bn_size"], cfg["stem"])


@pytest.mark.parametrize("factory", [densenet121, lambda: tiny(), lambda: tiny(bn_size=None, stem="imagenet")])
def test_named_parameters_are_the_state_dict_parameter_keys(factory):
    model = factory()
    state_params = [k for k in model.state_dict() if not k.endswith(BUFFER_SUFFIXES)]
    names = [n for n, _ in model.named_parameters()]
    assert names == state_params
    assert len(set(names)) == len(names)
    buffers = [n for n, _ in model.named_buffers()]
    assert buffers == [k for k in model.state_dict() if k.endswith(BUFFER_SUFFIXES)]
    state = model.state_dict()
    for (name, p), key in zip(model.named_parameters(), state_params):
        np.testing.assert_array_equal(p.data, state[key])


def test_buffers_stay_registered_after_train_forward():
    """In-place running-statistics updates must not unregister the buffers (state_dict keeps them)."""
    model = tiny()
    keys = list(model.state_dict())
    model(np.random.default_rng(0).standard_normal((2, 3, 6, 6)))
    assert len(list(model.named_buffers())) == 3 * 10     # 10 BatchNorms in tiny(), 3 buffers each
    assert list(model.state_dict()) == keys
    assert int(model.state_dict()["features.norm5.num_batches_tracked"]) == 1
    model.double()                                         # .to() still reaches them
    assert model.features.norm5.running_var.dtype == np.float64


def test_save_load_after_training_keeps_running_stats(tmp_path):
    model = tiny()
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    model(x)
    model(x)
    expected = model.features.norm5.running_mean.copy()
    assert np.any(expected != 0)
    save_weights(model, tmp_path / "trained.npz")
    fresh = tiny(seed=1)
    load_weights(fresh, tmp_path / "trained.npz")
    np.testing.assert_array_equal(fresh.features.norm5.running_mean, expected)
    assert int(fresh.features.norm5.num_batches_tracked) == 2
    np.testing.assert_array_equal(fresh.eval()(x), model.eval()(x))


def test_rename_old_keys():
    old = OrderedDict([
        ("features.denseblock1.denselayer1.norm.1.weight", 1),
        ("features.denseblock1.denselayer1.norm.1.running_var", 2),
        ("features.denseblock1.denselayer1.conv.1.weight", 3),
        ("features.denseblock2.denselayer10.norm.2.bias", 4),
        ("features.denseblock2.denselayer10.conv.2.weight", 5),
        ("features.denseblock1.denselayer2.norm1.weight", 6),      # already new-style: unchanged
        ("features.transition1.norm.weight", 7),                    # not a dense layer: unchanged
        ("features.norm5.running_mean", 8),
        ("features.denseblock1.denselayer1.norm.1.num_batches_tracked", 9),   # not in torchvision's pattern
    ])
    assert list(rename_old_keys(old).items()) == [
        ("features.denseblock1.denselayer1.norm1.weight", 1),
        ("features.denseblock1.denselayer1.norm1.running_var", 2),
        ("features.denseblock1.denselayer1.conv1.weight", 3),
        ("features.denseblock2.denselayer10.norm2.bias", 4),
        ("features.denseblock2.denselayer10.conv2.weight", 5),
        ("features.denseblock1.denselayer2.norm1.weight", 6),
        ("features.transition1.norm.weight", 7),
        ("features.norm5.running_mean", 8),
        ("features.denseblock1.denselayer1.norm.1.num_batches_tracked", 9),
    ]


def test_load_state_dict_accepts_old_keys():
    src = randomize_bn(tiny(seed=3), 1)
    state = OrderedDict()
    for key, value in src.state_dict().items():
        for part in ("norm1", "norm2", "conv1", "conv2"):
            if f".{part}." in key and "denselayer" in key and not key.endswith("num_batches_tracked"):
                key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
        state[key] = value
    assert any(".norm.1." in k for k in state)
    dst = tiny(seed=4)
    dst.load_state_dict(state)
    for key, value in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[key], value, err_msg=key)


# -- whole-model gradient checks ----------------------------------------------------------------------------
def gradcheck_models():
    rng = np.random.default_rng(0)
    x = lambda *s: rng.standard_normal(s)  # noqa: E731
    return {
        "bc-cifar-compression0.5": (tiny(), x(3, 3, 6, 6)),
        "plain-cifar-no-compression": (tiny(growth_rate=3, bn_size=None, compression=1.0, num_classes=4, seed=1),
                                       x(2, 3, 5, 6)),
        "bc-imagenet-odd": (tiny(block_config=(2, 1), num_init_features=6, stem="imagenet", num_classes=3, seed=2),
                            x(2, 3, 13, 15)),
        "bc-compression0.625-grey": (tiny(growth_rate=3, block_config=(2, 2), num_init_features=5, bn_size=3,
                                          compression=0.625, in_channels=1, seed=3), x(3, 1, 6, 6)),
        "bc-dropout0.2": (tiny(drop_rate=0.2, seed=4), x(3, 3, 6, 6)),
        "plain-eval-mode": (randomize_bn(tiny(bn_size=None, seed=5), 2).eval(), x(2, 3, 6, 6)),
        "bc-imagenet-eval-mode": (randomize_bn(tiny(stem="imagenet", seed=6), 3).eval(), x(2, 3, 11, 9)),
        # the plain tier (Concat forward, split backward), train and eval
        "plain-tier-bc-imagenet-dropout": (tiny(block_config=(2, 1), num_init_features=6, stem="imagenet",
                                                drop_rate=0.2, num_classes=3, seed=7, fast=False), x(2, 3, 13, 15)),
        "plain-tier-plain-layers-eval": (randomize_bn(tiny(bn_size=None, seed=8, fast=False), 4).eval(),
                                         x(2, 3, 6, 6)),
    }


GRADCHECK_MODELS = gradcheck_models()


@pytest.mark.parametrize("mode", ["sampled", "directional"])
@pytest.mark.parametrize("name", list(GRADCHECK_MODELS))
def test_whole_model_gradcheck(name, mode):
    model, x = GRADCHECK_MODELS[name]
    result = gradcheck(model, x, mode=mode, seed=1, samples=8)
    assert result.passed, "\n" + result.table()
    names = [r.name for r in result.rows]
    assert names == ["input"] + [n for n, _ in model.named_parameters()]      # every tensor was checked
    assert result.reentrant and result.accumulates


def test_dropout_model_really_drops_in_gradcheck():
    """The dropout gradcheck above checks a model whose train-mode output depends on the (fixed) mask."""
    model, x = GRADCHECK_MODELS["bc-dropout0.2"]
    no_drop = tiny(seed=4)
    no_drop.load_state_dict(model.state_dict())
    assert not np.allclose(copy.deepcopy(model)(x), no_drop(x))


class OverwritingDenseBlock(fast.DenseBlock):
    """Broken: assigns the gradient of the channels a layer read instead of adding it (grad[:start] = ...)."""

    def backward_cnhw(self, dout, out=None):
        shape, dtype = self._cache
        self._cache = None
        grad = np.array(dout, dtype=dtype, copy=True)
        layers = self.layers()
        for j in reversed(range(self.num_layers)):
            start, stop = self.offsets[j + 1], self.offsets[j + 2]
            grad[:start] = layers[j].backward_cnhw(grad[start:stop])
        return grad[:self.offsets[1]]


class DroppingDenseBlock(fast.DenseBlock):
    """Broken: forgets one consumer -- the second layer's gradient is never added to the features it read."""

    def backward_cnhw(self, dout, out=None):
        shape, dtype = self._cache
        self._cache = None
        grad = np.array(dout, dtype=dtype, copy=True)
        layers = self.layers()
        for j in reversed(range(self.num_layers)):
            start, stop = self.offsets[j + 1], self.offsets[j + 2]
            dinput = layers[j].backward_cnhw(grad[start:stop])
            if j != 1:
                grad[:start] += dinput
        return grad[:self.offsets[1]]


class PlainOverwritingDenseBlock(DenseBlock):
    """Broken plain block: assigns each layer's split gradient instead of adding it (grads[i] = g)."""

    def backward(self, dout):
        grads = list(self.concat.backward(dout))
        layers = self.layers()
        for j in reversed(range(self.num_layers)):
            for i, g in enumerate(layers[j].backward(grads[j + 1])):
                grads[i] = g
        return grads[0]


class PlainDroppingDenseBlock(DenseBlock):
    """Broken plain block: forgets one consumer, the second layer's gradient of the features it read."""

    def backward(self, dout):
        grads = list(self.concat.backward(dout))
        layers = self.layers()
        for j in reversed(range(self.num_layers)):
            received = layers[j].backward(grads[j + 1])
            if j != 1:
                grads = [g + r for g, r in zip(grads, received)] + grads[len(received):]
        return grads[0]


@pytest.mark.parametrize("mode", ["sampled", "directional"])
@pytest.mark.parametrize("broken", [OverwritingDenseBlock, DroppingDenseBlock, PlainOverwritingDenseBlock,
                                    PlainDroppingDenseBlock])
def test_broken_dense_block_fails_whole_model_gradcheck(broken, mode):
    plain = not issubclass(broken, fast.DenseBlock)
    model = tiny(block_config=(2, 2), seed=1, fast=not plain)
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8))
    model = model.double()
    correct = type(model.features.denseblock1)
    model.features.denseblock1.__class__ = broken
    result = gradcheck(model, x, mode=mode, seed=1, samples=8)
    assert not result.passed
    failed = {r.name for r in result.failures}
    assert "input" in failed and "features.conv0.weight" in failed, "\n" + result.table()
    # the same model with the correct block passes (so the failure is the broken concatenation backward)
    model.features.denseblock1.__class__ = correct
    assert gradcheck(model, x, mode=mode, seed=1, samples=8).passed


# -- shapes, dtypes, errors ---------------------------------------------------------------------------------
@pytest.mark.parametrize("stem, block_config, shape, spatial", [
    ("imagenet", (1, 2, 1, 2), (2, 3, 45, 51), [(23, 26), (12, 13), (12, 13), (6, 6), (6, 6), (3, 3), (3, 3),
                                                 (1, 1), (1, 1)]),
    ("cifar", (2, 1), (3, 3, 7, 9), [(7, 9), (7, 9), (3, 4), (3, 4)]),
], ids=["imagenet-45x51", "cifar-7x9"])
def test_any_input_size(stem, block_config, shape, spatial):
    model = tiny(stem=stem, block_config=block_config, dtype=np.float32)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    h = x.transpose(1, 0, 2, 3)
    sizes = []
    for name, stage in model.features.named_children():
        if name in ("norm0", "relu0", "norm5"):
            continue
        h = stage.forward_cnhw(h)
        sizes.append(h.shape[2:])
    assert sizes == spatial
    for m in model.modules():
        m.clear_cache()
    logits = model(x)
    assert logits.shape == (shape[0], 5) and np.isfinite(logits).all()
    dx = model.backward(np.ones_like(logits))
    assert dx.shape == x.shape and dx.dtype == np.float32 and np.isfinite(dx).all()


def test_dense_connectivity_block_output_is_the_concatenation():
    """Block output = [x0, H1(x0), H2([x0, x1]), ...]: every layer reads k0 + l*k channels, adds k."""
    block = DenseBlock(3, 5, 4, bn_size=2, dtype=np.float64, rng=np.random.default_rng(0))
    block.eval()
    x0 = np.random.default_rng(1).standard_normal((2, 5, 4, 3))
    out = block(x0)
    assert out.shape == (2, 5 + 3 * 4, 4, 3)
    np.testing.assert_array_equal(out[:, :5], x0)
    for l, layer in enumerate(block.layers()):
        start = 5 + l * 4
        np.testing.assert_allclose(out[:, start:start + 4], layer(out[:, :start]), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_in_dtype_out(dtype):
    model = tiny(dtype=dtype, drop_rate=0.1)
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(dtype)
    logits = model(x)
    assert logits.dtype == dtype
    dx = model.backward(np.ones_like(logits))
    assert dx.dtype == dtype
    for name, p in model.named_parameters():
        assert p.data.dtype == dtype and p.grad.dtype == dtype, name
        assert np.any(p.grad != 0), f"{name} received no gradient"


def test_backward_before_forward_raises():
    model = tiny()
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(np.ones((2, 5)))
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    logits = model(x)
    model.backward(np.ones_like(logits))
    with pytest.raises(RuntimeError, match="before forward"):
        model.backward(np.ones_like(logits))


def test_input_errors():
    model = tiny()
    with pytest.raises(ValueError, match="channels"):
        model(np.zeros((2, 1, 6, 6)))
    with pytest.raises(ValueError, match="in_channels=3"):
        model(np.zeros((2, 4, 6, 6)))
    with pytest.raises(ValueError):
        model(np.zeros((3, 6, 6)))
    with pytest.raises(TypeError, match="dtype"):
        model(np.zeros((2, 3, 6, 6), dtype=np.float32))     # float64 model
    grey = tiny(in_channels=1)
    assert grey(np.zeros((2, 1, 6, 6))).shape == (2, 5)


@pytest.mark.parametrize("kwargs", [dict(growth_rate=0), dict(block_config=()), dict(block_config=(2, 0)),
                                    dict(bn_size=0), dict(compression=0.0), dict(compression=1.5),
                                    dict(drop_rate=1.0), dict(stem="resnet"), dict(in_channels=0),
                                    dict(num_classes=0)])
def test_bad_constructor_arguments(kwargs):
    with pytest.raises(ValueError):
        tiny(**kwargs)


@pytest.mark.parametrize("factory, depth", [(densenet_bc, 41), (densenet_bc, 4), (densenet, 41), (densenet, 4)])
def test_bad_depth(factory, depth):
    with pytest.raises(ValueError, match="depth"):
        factory(depth, 12)


# -- weights files ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip(tmp_path, dtype):
    src = randomize_bn(tiny(dtype=dtype, seed=1), 2)
    for bn in (src.features.norm5, src.features.denseblock1.denselayer1.norm1):
        bn.num_batches_tracked[...] = 7
    path = tmp_path / "weights.npz"
    save_weights(src, path)
    assert sorted(os.listdir(tmp_path)) == ["weights.npz"]               # atomic write: no temporary left
    with np.load(path, allow_pickle=False) as f:                        # plain arrays only, no pickle
        stored = {k: f[k] for k in f.files}
    assert list(stored) == list(src.state_dict())
    for key, value in src.state_dict().items():
        assert stored[key].dtype == value.dtype, key
        np.testing.assert_array_equal(stored[key], value, err_msg=key)
    dst = tiny(dtype=dtype, seed=99)
    load_weights(dst, path)
    for key, value in src.state_dict().items():
        np.testing.assert_array_equal(dst.state_dict()[key], value, err_msg=key)
    assert int(dst.features.norm5.num_batches_tracked) == 7
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(dtype)
    np.testing.assert_array_equal(src.eval()(x), dst.eval()(x))
    save_weights(dst, path)                                             # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["weights.npz"]


def test_load_weights_never_unpickles(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    save_weights(tiny(), path)
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("allow_pickle"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    load_weights(tiny(seed=2), path)
    assert all(c is False for c in calls)        # io reads .npy headers itself: np.load may not be called


def test_failed_save_leaves_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    save_weights(tiny(seed=1), path)
    before = path.read_bytes()

    def failing_savez(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        save_weights(tiny(seed=2), path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]


def _write_bad_files(folder):
    good = folder / "good.npz"
    save_weights(tiny(), good)
    data = good.read_bytes()
    files = {}
    files["garbage.npz"] = b"this is not a zip file at all \x00\x01\x02" * 10
    files["empty.npz"] = b""
    files["truncated.npz"] = data[: len(data) // 2]
    files["corrupt.npz"] = data[:100] + bytes(256) + data[356:]
    for name, content in files.items():
        (folder / name).write_bytes(content)
    np.savez(folder / "pickled.npz", objects=np.array([{"evil": 1}], dtype=object))   # np.savez pickles these
    (folder / "raw_pickle.npz").write_bytes(pickle.dumps({"features.conv0.weight": np.zeros(3)}))
    return ["garbage.npz", "empty.npz", "truncated.npz", "corrupt.npz", "pickled.npz", "raw_pickle.npz"]


def test_bad_weights_files_give_weights_file_error_naming_the_file(tmp_path):
    for name in _write_bad_files(tmp_path):
        with pytest.raises(WeightsFileError) as info:
            load_weights(tiny(), tmp_path / name)
        assert name in str(info.value), str(info.value)
    with pytest.raises(WeightsFileError, match="missing.npz.*does not exist"):
        load_weights(tiny(), tmp_path / "missing.npz")
    with pytest.raises(WeightsFileError, match="pickled"):
        load_weights(tiny(), tmp_path / "pickled.npz")
    assert issubclass(WeightsFileError, ValueError)


def test_npy_file_disguised_as_npz_gives_weights_file_error(tmp_path):
    """A bare .npy (np.save output) named .npz: a WeightsFileError naming the file, not a raw TypeError."""
    path = tmp_path / "array.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(WeightsFileError, match="array.npz"):
        load_weights(tiny(), path)


def mismatched_state(model):
    state = model.state_dict()
    del state["features.conv0.weight"]
    del state["features.denseblock2.denselayer1.norm2.running_var"]
    state["features.extra.weight"] = np.zeros(3)
    state["features.denseblock1.denselayer9.conv1.weight"] = np.zeros((1, 1, 1, 1))
    state["classifier.weight"] = np.zeros((7, 7))
    state["features.norm5.bias"] = np.zeros(99)
    return state


EXPECTED_PROBLEMS = ["features.conv0.weight", "features.denseblock2.denselayer1.norm2.running_var",
                     "features.extra.weight", "features.denseblock1.denselayer9.conv1.weight",
                     "classifier.weight", "features.norm5.bias"]


def test_strict_loading_reports_every_problem_at_once(tmp_path):
    model = tiny(seed=1)
    before = model.state_dict()
    with pytest.raises(ValueError) as info:
        model.load_state_dict(mismatched_state(tiny(seed=2)))
    message = str(info.value)
    for key in EXPECTED_PROBLEMS:
        assert key in message, key
    assert "missing" in message and "unexpected" in message and "(7, 7)" in message and "(99,)" in message
    for key, value in model.state_dict().items():                       # nothing was half-loaded
        np.testing.assert_array_equal(value, before[key], err_msg=key)

    from numpy_densenet.io import save_npz
    save_npz(tmp_path / "bad_fit.npz", mismatched_state(tiny(seed=2)))
    with pytest.raises(WeightsFileError) as info:
        load_weights(model, tmp_path / "bad_fit.npz")
    assert "bad_fit.npz" in str(info.value)
    for key in EXPECTED_PROBLEMS:
        assert key in str(info.value), key


def test_non_strict_loading_returns_missing_and_unexpected():
    model = tiny(seed=1)
    src = randomize_bn(tiny(seed=2), 3)
    state = src.state_dict()
    del state["features.conv0.weight"]
    state["features.extra.weight"] = np.zeros(3)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["features.conv0.weight"] and unexpected == ["features.extra.weight"]
    np.testing.assert_array_equal(model.features.norm5.running_var, src.features.norm5.running_var)
    state["classifier.weight"] = np.zeros((1, 1))
    with pytest.raises(ValueError, match="classifier.weight"):
        model.load_state_dict(state, strict=False)


# -- CLI ----------------------------------------------------------------------------------------------------
def test_cli_summary_densenet121(capsys):
    assert main(["summary", "densenet121"]) == 0
    out = capsys.readouterr().out
    assert "total parameters: 7,978,856" in out
    assert "features.denseblock4.denselayer16" in out and "(1, 1024, 7, 7)" in out


def test_cli_summary_densenet_bc(capsys):
    assert main(["summary", "densenet_bc", "--depth", "100", "--growth-rate", "12"]) == 0
    out = capsys.readouterr().out
    assert "total parameters: 769,162" in out
    assert "reads 24 = 24 + 0*12 ch, adds 12" in out


def test_cli_gradcheck_model(capsys):
    assert main(["gradcheck", "--model"]) == 0
    out = capsys.readouterr().out
    count = len(model_cases(np.random.default_rng(0)))
    assert f"{count} passed, 0 failed" in out and "FAILED" not in out
    assert "DenseNet tier=plain" in out and "DenseNet tier=fast" in out


def test_cli_gradcheck_layers(capsys):
    assert main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    assert "0 failed" in out and "FAILED" not in out


@pytest.mark.parametrize("argv, message", [
    (["summary", "densenet121", "--depth", "40"], "--depth and --growth-rate apply to densenet_bc and densenet"),
    (["summary", "densenet_bc", "--depth", "41"], "depth must be 6n + 4"),
    (["summary", "densenet", "--depth", "42"], "depth must be 3n + 4"),
    (["summary", "densenet_bc", "--growth-rate", "0"], "growth_rate must be a positive int"),
    (["summary", "densenet_bc", "--in-channels", "0"], "in_channels must be a positive int"),
    (["summary", "densenet121", "--num-classes", "-3"], "num_classes must be a positive int"),
])
def test_cli_bad_options_return_2_with_message(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith(f"numpy-densenet {argv[0]}: error:")


@pytest.mark.parametrize("argv, message", [
    (["summary", "resnet50"], "invalid choice: 'resnet50'"),
    (["gradcheck", "--mode", "bogus"], "invalid choice: 'bogus'"),
    (["summary", "densenet_bc", "--depth", "ten"], "invalid int value: 'ten'"),
    (["frobnicate"], "invalid choice"),
])
def test_cli_argparse_errors_exit_2(argv, message, capsys):
    assert main(argv) == 2                      # main() returns argparse's exit code instead of raising
    assert message in capsys.readouterr().err


def test_cli_no_command_prints_help_and_returns_2(capsys):
    assert main([]) == 2
    assert "usage: numpy-densenet" in capsys.readouterr().out


def test_cli_num_classes_zero_is_rejected(capsys):
    """0 is not "use the default" (a `num_classes or 10` slip once made it so)."""
    assert main(["summary", "densenet_bc", "--depth", "40", "--num-classes", "0"]) == 2
    assert "num_classes" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["0", "-3"])
def test_cli_bad_image_size_returns_2(size, capsys):
    """A bad --image-size is a one-line error with exit code 2, not a traceback from inside Conv2d."""
    assert main(["summary", "densenet_bc", "--depth", "40", "--image-size", size]) == 2
    assert "image" in capsys.readouterr().err
