"""gradcheck(model, x, locate=True): the innermost submodules whose own backward is wrong, named, on both tiers."""
import numpy as np
import pytest

from numpy_densenet import DenseNet, fast, gradcheck, nn
from numpy_densenet.cli import main
from numpy_densenet.fast import densenet as fast_densenet
from numpy_densenet.gradcheck.cases import Case
from numpy_densenet.gradcheck.locate import record_inputs, standalone
from numpy_densenet.model import DenseNet as PlainDenseNet

X = np.random.default_rng(0).standard_normal((2, 3, 8, 8))


def tiny(fast_tier, **kwargs):
    return DenseNet(4, (2, 2), 8, bn_size=2, num_classes=5, stem="cifar", seed=1, fast=fast_tier, **kwargs)


class WrongConv(nn.Conv2d):
    def backward(self, dout):
        return super().backward(dout) * 1.001


class WrongFastConv(fast.Conv2d):
    def backward_cnhw(self, dout, *args, **kwargs):
        return super().backward_cnhw(dout, *args, **kwargs) * 1.001


class WrongBlock(fast_densenet.DenseBlock):
    """The block's own code wrong (its layers are right)."""

    def backward_cnhw(self, dout, out=None):
        return super().backward_cnhw(dout, out=out) * 1.001


class WrongInWorkspace(fast.Conv2d):
    """Wrong only when backward writes its input gradient into a workspace its block hands its layer (``out``
    without ``x``: a layer that is not memory-efficient, inside its block): a path no piece runs alone."""

    def backward_cnhw(self, dout, x=None, out=None):
        dx = super().backward_cnhw(dout, x=x, out=out)
        return dx * 1.001 if out is not None and x is None else dx


class WrongDenseNet(PlainDenseNet):
    """The model's own code wrong: the gradient of the pooled features scaled."""

    def backward(self, dout):
        return super().backward(dout * 1.001)


def planted(model, path, cls):
    module = dict(model.named_modules())[path]
    module.__class__ = cls
    return model


@pytest.mark.parametrize("fast_tier, cls", [(False, WrongConv), (True, WrongFastConv)])
def test_a_wrong_layer_is_named(fast_tier, cls):
    name = "features.denseblock2.denselayer1.conv2"
    result = gradcheck(planted(tiny(fast_tier), name, cls), X, mode="directional", locate=True)
    assert not result.passed and result.culprits == [name]
    culprit = result.located[name]
    assert [r.name for r in culprit.failures] == ["input"] and culprit.rows[0].probes > 3   # located entries
    lines = result.table().splitlines()
    assert lines[0].startswith(f"located: the wrong backward is in '{name}'")
    assert lines[1].startswith(f"== '{name}' ({cls.__name__})") and "FAIL" in lines[3]
    passing = [n for n, r in result.located.items() if r.passed]
    assert "features.denseblock1.denselayer1.conv1" in passing and name not in passing
    assert not any(name.startswith(n + ".") for n in result.located)         # its ancestors are not checked


def test_a_wrong_block_with_right_layers_is_named():
    result = gradcheck(planted(tiny(True), "features.denseblock2", WrongBlock), X, mode="directional", locate=True)
    assert result.culprits == ["features.denseblock2"]
    assert result.located["features.denseblock2.denselayer1"].passed


def test_a_fused_piece_that_is_wrong_only_inside_its_block_is_answered_for_by_the_block():
    name = "features.denseblock1.denselayer2.conv1"
    model = tiny(True, memory_efficient=False)
    result = gradcheck(planted(model, name, WrongInWorkspace), X, mode="directional", locate=True)
    assert result.located[name].passed and result.located["features.denseblock1.denselayer2"].passed
    assert result.culprits == ["features.denseblock1"]


def test_the_models_own_code_is_named_when_every_submodule_passes():
    model = WrongDenseNet(4, (2,), 8, bn_size=2, num_classes=3, stem="cifar", seed=2)
    result = gradcheck(model, X, mode="directional", locate=True)
    assert result.culprits == [""] and all(r.passed for r in result.located.values())
    assert "(the model itself, WrongDenseNet)" in result.table()


def test_a_wrong_layer_after_dropout_is_checked_on_the_mask_it_saw():
    model = nn.Sequential(nn.Linear(6, 8, generator=np.random.default_rng(0)), nn.Dropout(0.5, seed=3), nn.ReLU(),
                          WrongLinear(8, 3, generator=np.random.default_rng(1)))
    x = np.random.default_rng(1).standard_normal((4, 6))
    result = gradcheck(model, x, locate="full")
    assert result.culprits == ["3"] and result.located["1"].passed and result.located["3"].mode == "full"
    record = record_inputs(model, x)["1"]
    alone = standalone(model[1], record)
    assert np.array_equal(alone(record["inputs"][0]), record_inputs(model, x)["2"]["inputs"][0])


class WrongLinear(nn.Linear):
    def backward(self, dout):
        self.weight.grad[...] = 0                 # = instead of +=: only the protocol check sees it
        return super().backward(dout)


class CountingReLU(nn.ReLU):
    forwards = 0

    def forward(self, x):
        CountingReLU.forwards += 1
        return super().forward(x)


def test_locate_on_a_passing_model_changes_nothing_and_runs_nothing_more():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, generator=np.random.default_rng(0)), CountingReLU(),
                          nn.AvgPool2d(2))
    results = []
    for locate in (False, True):
        CountingReLU.forwards = 0
        results.append((gradcheck(model, X, mode="directional", locate=locate), CountingReLU.forwards))
    (plain, n_plain), (located, n_located) = results
    assert located.passed and located.culprits == [] and located.located == {}
    assert n_located == n_plain and located.rows == plain.rows and located.table() == plain.table()


def test_every_submodule_of_every_cli_model_runs_alone_and_passes():
    for fast_tier in (False, True):
        model = tiny(fast_tier, drop_rate=0.2)
        records = record_inputs(model, X)
        assert set(records) == {name for name, _ in model.named_modules() if name}
        for name, module in model.named_modules():
            if name:
                assert gradcheck(standalone(module, records[name]), records[name]["inputs"],
                                 mode="directional").passed, name


@pytest.mark.parametrize("locate", ["everything", 1, "Full"])
def test_a_bad_locate_is_a_value_error(locate):
    with pytest.raises(ValueError, match="locate must be True, False or one of"):
        gradcheck(nn.ReLU(), np.ones((2, 2)), locate=locate)


def test_cli_locate_names_the_wrong_layer(monkeypatch, capsys):
    name = "features.denseblock1.denselayer1.conv1"
    cases = [Case("a tiny DenseNet with a wrong layer", planted(tiny(False), name, WrongConv), X, {})]
    monkeypatch.setattr("numpy_densenet.cli.gradcheck.model_cases", lambda rng, thorough: cases)
    assert main(["gradcheck", "--model", "--locate"]) == 1
    out = capsys.readouterr().out
    assert f"located: the wrong backward is in '{name}'" in out
    assert f"failed: a tiny DenseNet with a wrong layer (in '{name}')" in out
