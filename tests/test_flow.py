"""Gradient flow through concatenation, feature reuse, the inspect / explain commands and docs/walkthrough.md."""
import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

from numpy_densenet import fast as fast_tier, study as flow
from numpy_densenet.cli import main, study as study_cli
from numpy_densenet.io import save_npz, save_weights
from numpy_densenet.model import DenseBlock
from numpy_densenet.study.explain import fast_tier_block
from numpy_densenet.zoo import DenseNet
from numpy_densenet.nn import CrossEntropyLoss

WALKTHROUGH = Path(__file__).resolve().parents[1] / "docs" / "walkthrough.md"

TINY = {  # small models covering bottleneck and plain layers, dropout, and a block of a single layer
    "bottleneck": dict(growth_rate=3, block_config=(3, 2), num_init_features=5, bn_size=2),
    "plain": dict(growth_rate=2, block_config=(2, 3), num_init_features=4, bn_size=None, compression=1.0),
    "dropout": dict(growth_rate=3, block_config=(1, 3), num_init_features=4, bn_size=2, drop_rate=0.3),
}


def tiny_model(kind, dtype=np.float64, seed=0, fast=True):
    return DenseNet(**TINY[kind], num_classes=4, stem="cifar", in_channels=1, dtype=dtype, seed=seed, fast=fast)


TIERS = pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])


def batch(dtype=np.float64, n=5, size=6, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, size, size)).astype(dtype), rng.integers(0, 4, n)


def run_with_actual_gradients(model, x, y, train):
    """block_gradient_flow, plus the gradient each feature map actually received, caught independently.

    x_j (j >= 1) receives its gradient as the argument of H_j's backward; x_0 receives what the block's backward
    returns, which is the argument of the backward of the stage before the block.
    """
    stages = list(model.features.named_children())
    before = [stages[i - 1][1] for i, (_, s) in enumerate(stages) if isinstance(s, DenseBlock)]
    layers = [layer for block in model.blocks() for layer in block.layers()]
    with flow.record_backward_inputs(before) as dx0, flow.record_backward_inputs(layers) as dnew:
        reports = flow.block_gradient_flow(model, x, y, train=train)
    actual, it = [], iter(dnew)
    for b, block in enumerate(model.blocks()):
        actual.append([dx0[b]] + [next(it) for _ in range(block.num_layers)])
    return reports, actual


# -- the sum over consumers ------------------------------------------------------------------------------------
@TIERS
@pytest.mark.parametrize("kind", sorted(TINY))
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_sum_over_consumers_is_the_gradient(kind, train, fast):
    model = tiny_model(kind, fast=fast)
    x, y = batch()
    reports, actual = run_with_actual_gradients(model, x, y, train)
    assert [r.name for r in reports] == ["denseblock1", "denseblock2"]
    for report, grads in zip(reports, actual):
        assert report.mode == ("train" if train else "eval")
        size = 6 if report.name == "denseblock1" else 3                   # transition1 halves H and W
        for i, g in enumerate(grads):
            assert g is not None
            total = report.gradient(i)                                    # sum over j of the per-consumer parts
            assert total.shape == g.shape == (5, report.channels[i], size, size)
            np.testing.assert_allclose(total, g, rtol=1e-12, atol=1e-15)
            assert np.linalg.norm(g) > 0
        np.testing.assert_allclose(report.total_norms, [np.linalg.norm(g) for g in grads], rtol=1e-12)


@TIERS
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_sum_over_consumers_float32(train, fast):
    model = tiny_model("bottleneck", np.float32, fast=fast)
    x, y = batch(np.float32)
    reports, actual = run_with_actual_gradients(model, x, y, train)
    for report, grads in zip(reports, actual):
        for i, g in enumerate(grads):
            scale = max(np.abs(p).max() for p in report.parts[i] if p is not None)
            np.testing.assert_allclose(report.gradient(i), g, rtol=0, atol=1e-5 * scale)


@TIERS
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_sum_over_consumers_matches_finite_differences(train, fast):
    """The sum over consumers is dL/dx_i itself: a central difference along a random direction agrees."""
    rng = np.random.default_rng(3)
    make = fast_tier_block if fast else DenseBlock
    block = make(3, 4, 2, 2, dtype=np.float64, rng=rng).train(train)
    entry = "forward_cnhw" if fast else "forward"                        # what the block calls on its layers
    layout = fast_tier.swap01 if fast else (lambda a: a)
    for m in block.modules():                                            # eval mode: non-trivial statistics
        if hasattr(m, "running_var"):
            m.running_mean[...] = rng.standard_normal(m.num_features) * 0.1
            m.running_var[...] = rng.uniform(0.5, 2.0, m.num_features)
    x0 = rng.standard_normal((3, 4, 3, 3))                               # (N, k0, H, W)
    R = rng.standard_normal((3, block.num_output_features, 3, 3))

    def loss(i=None, v=None):
        """sum(out * R), with x_i perturbed by v (for i >= 1, right after H_i computes it)."""
        layers = block.layers()
        if i is not None and i >= 1:
            original = getattr(layers[i - 1], entry)

            def perturbed(*h, **kw):            # in place: the fast block has H_i write into its buffer (out=)
                out = original(*h, **kw)
                out += layout(v)
                return out
            object.__setattr__(layers[i - 1], entry, perturbed)
        try:
            out = block(x0 + v if i == 0 else x0)
        finally:
            if i is not None and i >= 1:
                object.__delattr__(layers[i - 1], entry)
        for m in block.modules():
            m.clear_cache()
        return float(np.sum(out * R))

    block(x0)
    with flow.record_backward_outputs(block.layers()) as sent:
        block.backward(R)
    report = flow.gradient_flow(block, R, sent)
    eps = 1e-6
    for i in range(block.num_layers + 1):
        v = rng.standard_normal((3, report.channels[i], 3, 3))
        numeric = (loss(i, eps * v) - loss(i, -eps * v)) / (2 * eps)
        analytic = float(np.sum(report.gradient(i) * v))
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-8)


@TIERS
def test_parts_are_the_channel_slices_of_flow(fast):
    model = tiny_model("bottleneck", fast=fast)
    x, y = batch()
    criterion = CrossEntropyLoss()
    blocks = model.blocks()
    with flow.record_backward_inputs(blocks) as douts, flow.record_backward_outputs(blocks[0].layers()) as sent:
        criterion(model.forward(x), y)
        model.backward(criterion.backward())
    block, dout = blocks[0], douts[0]
    report = flow.gradient_flow(block, dout, sent, "b")
    off, L = block.offsets, block.num_layers
    assert off == [0, 5, 8, 11, 14] and report.channels == (5, 3, 3, 3)
    for i in range(L + 1):
        for c in range(L + 1):
            part = report.parts[i][c]
            if c < i:
                assert part is None and np.isnan(report.norms[i, c])
                continue
            expected = dout[:, off[i]:off[i + 1]] if c == L else sent[c][:, off[i]:off[i + 1]]
            assert part.shape == x.shape[:1] + (off[i + 1] - off[i], 6, 6)
            np.testing.assert_array_equal(part, expected)
            assert report.norms[i, c] == pytest.approx(np.linalg.norm(expected))
            assert report.normalised[i, c] == pytest.approx(np.linalg.norm(expected) / np.sqrt(off[i + 1] - off[i]))
    text = report.table(normalised=True)
    assert "sqrt(channels of x_i)" in text and "x0 (5)" in text and text.count("\n") == L + 2


@TIERS
def test_train_mode_contributions_have_zero_channel_sums(fast):
    """BatchNorm's train-mode backward removes the mean: every layer's contribution sums to 0 per channel."""
    model = tiny_model("bottleneck", fast=fast)
    x, y = batch()
    for report in flow.block_gradient_flow(model, x, y, train=True):
        for i, row in enumerate(report.parts):
            for c, part in enumerate(row[:-1]):
                if part is not None:
                    assert np.abs(part.sum(axis=(0, 2, 3))).max() < 1e-12 * max(1.0, np.abs(part).max())


@TIERS
def test_block_gradient_flow_leaves_the_model_unchanged(fast):
    model = tiny_model("dropout", fast=fast)
    x, y = batch()
    before = model.state_dict()
    for p in model.parameters():
        p.grad[...] = 0.5
    model.eval()
    dropout_state = model.blocks()[0].denselayer1.dropout.generator.bit_generator.state
    flow.block_gradient_flow(model, x, y, train=True)
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)        # BN running statistics restored
    assert all((p.grad == 0.5).all() for p in model.parameters())
    assert not any(m.training for m in model.modules())
    assert all("backward_cnhw" not in m.__dict__ and "backward" not in m.__dict__
               for b in model.blocks() for m in [b] + b.layers())       # the recording wrappers removed
    assert model.blocks()[0].denselayer1.dropout.generator.bit_generator.state == dropout_state


def test_gradient_flow_errors():
    block = DenseBlock(2, 3, 2, dtype=np.float64, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="record_backward_outputs"):
        flow.gradient_flow(block, np.zeros((7, 1, 2, 2)), [None, None])
    block(np.random.default_rng(1).standard_normal((2, 3, 2, 2)))
    with flow.record_backward_outputs(block.layers()) as sent:
        block.backward(np.ones((2, 7, 2, 2)))
    with pytest.raises(ValueError, match="expected the block output"):
        flow.gradient_flow(block, np.ones((2, 6, 2, 2)), sent)
    with pytest.raises(TypeError):
        flow.gradient_flow(object(), None)


# -- feature reuse ---------------------------------------------------------------------------------------------
def test_feature_reuse_hand_set_weights_bottleneck():
    model = tiny_model("bottleneck")
    block = model.blocks()[0]                                             # k0 = 5, k = 3, L = 3
    off = block.offsets
    for c, layer in enumerate(block.layers()):
        w = layer.conv1.weight.data                                       # (bn_size*k, off[c+1], 1, 1)
        assert w.shape == (6, off[c + 1], 1, 1)
        for i in range(c + 1):
            w[:, off[i]:off[i + 1]] = -(10 * (c + 1) + i)                 # the sign must not matter
    trans = model.features.transition1.conv.weight.data                  # (7, 14, 1, 1)
    for i in range(4):
        trans[:, off[i]:off[i + 1]] = 0.5 * (i + 1)
    reuse = flow.feature_reuse(model)
    assert [r.name for r in reuse] == ["denseblock1", "denseblock2"]
    R = reuse[0].values
    assert R.shape == (4, 4) and reuse[0].channels == (5, 3, 3, 3)
    for i in range(4):
        for c in range(4):
            if c < i:
                assert np.isnan(R[i, c])
            elif c < 3:
                assert R[i, c] == 10 * (c + 1) + i
            else:
                assert R[i, c] == 0.5 * (i + 1)
    assert "transition1 conv" in reuse[0].table() and "classifier" in reuse[1].table()


def test_feature_reuse_plain_layers_average_over_kernel_positions():
    model = tiny_model("plain")
    block = model.blocks()[1]                                             # k0 = 8, k = 2, L = 3
    rng = np.random.default_rng(5)
    off = block.offsets
    for layer in block.layers():
        layer.conv1.weight.data[...] = rng.standard_normal(layer.conv1.weight.shape)  # (k, C_in, 3, 3)
    model.classifier.weight.data[...] = rng.standard_normal(model.classifier.weight.shape)  # (4, 14)
    R = flow.feature_reuse(model)[1].values
    assert R.shape == (4, 4)
    for c, layer in enumerate(block.layers()):
        w = layer.conv1.weight.data
        assert w.shape[2:] == (3, 3)
        for i in range(c + 1):
            assert R[i, c] == pytest.approx(np.abs(w[:, off[i]:off[i + 1], :, :]).mean())
    for i in range(4):
        assert R[i, 3] == pytest.approx(np.abs(model.classifier.weight.data[:, off[i]:off[i + 1]]).mean())


def test_feature_reuse_of_a_fresh_model_follows_the_initialisation():
    """Kaiming init: E|w| = sqrt(2/fan_in) * sqrt(2/pi), the same for every source of a consumer."""
    model = DenseNet(8, (4,), 32, bn_size=4, num_classes=3, stem="cifar", seed=0)
    reuse = flow.feature_reuse(model)[0]
    for c, layer in enumerate(model.blocks()[0].layers()):
        fan_in = layer.conv1.weight.shape[1]
        expected = np.sqrt(2 / fan_in) * np.sqrt(2 / np.pi)
        assert reuse.values[0, c] == pytest.approx(expected, rel=0.05)   # x0: 32 channels, 1,024 weights


def test_block_feature_reuse_checks_the_out_weight():
    block = DenseBlock(2, 3, 2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="reads 6 channels"):
        flow.block_feature_reuse(block, np.ones((2, 6)))
    assert np.isnan(flow.block_feature_reuse(block).values[:, -1]).all()


# -- explain ---------------------------------------------------------------------------------------------------
def test_explain_default(capsys):
    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    assert "L = 5 layers, growth rate k = 4, on an input x0 of k0 = 8 channels" in out
    assert "tier: plain (Concat forward, split backward)" in out
    assert "layer 3: concat[x0, x1, x2] -> 16 = 8 + 2*4 channels, offsets [0, 8, 12, 16]" in out
    assert "out = concat[x0, x1, x2, x3, x4, x5]: k0 + L*k = 8 + 5*4 = 28 channels, shape (2, 28, 4, 4)" in out
    assert "split at offsets [0, 8, 12, 16, 20, 24]" in out
    assert "floor(0.5*28) = 14" in out
    worst = float(re.search(r"gradient the block used\| over every x_i: (\S+)", out).group(1))
    assert worst < 1e-12


def test_explain_fast_tier_tells_the_buffer_story_with_the_same_numbers():
    plain, quick = flow.explain_block(), flow.explain_block(fast=True)
    text = "\n".join(quick)
    assert "k0 + L*k = 8 + 5*4 = 28 channels" in text
    assert "layer 3: reads buffer[0:16] = [x0, x1, x2], 16 = 8 + 2*4 channels" in text
    assert "writes x5 to buffer[24:28]" in text
    numbers = lambda lines: [float(v) for line in lines for v in re.findall(r"norm (\S+e[+-]\d+)", line)]  # noqa
    assert len(numbers(plain)) > 20 and numbers(plain) == numbers(quick)      # printed to 3 digits: equal


def test_explain_options(capsys):
    assert main(["explain", "--layers", "2", "--growth-rate", "3", "--k0", "5", "--plain", "--eval",
                 "--batch", "1", "--size", "3", "--compression", "1"]) == 0
    out = capsys.readouterr().out
    assert "eval mode" in out and "plain layer" in out and "5 + 2*3 = 11" in out
    assert "layer 2: 3x3 conv 8 -> 3: 9*8*3 = 216" in out
    assert "zero sum" not in out                                         # a train-mode-only remark
    assert main(["explain", "--layers", "0"]) == 2
    assert "--layers must be at least 1" in capsys.readouterr().err
    assert main(["explain", "--batch", "1", "--size", "1"]) == 2
    assert "--eval" in capsys.readouterr().err


# -- inspect ---------------------------------------------------------------------------------------------------
INSPECT = ["inspect", "--depth", "16", "--growth-rate", "2", "--batch-size", "6"]   # BC: 3 blocks of 2 layers


def test_inspect_prints_tables_and_writes_matrices(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(study_cli, "have_matplotlib", lambda: False)
    assert main(INSPECT + ["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "densenet_bc: growth_rate=2, block_config=(2, 2, 2)" in out and "random initialisation, seed 0" in out
    assert "the first 6 images of digits (train split), shape (6, 1, 8, 8)" in out and "train mode" in out
    assert "denseblock2: k0 = 4 (from transition1: floor(0.5*8) = 4), L = 2, k = 2" in out
    for b in (1, 2, 3):
        assert f"denseblock{b}: gradient flow, ||dL/dx_i via consumer||" in out
        assert f"denseblock{b}: feature reuse" in out
    assert 'pip install "numpy_densenet[plot]"' in out
    assert not list(tmp_path.glob("*.png"))
    with np.load(tmp_path / "matrices.npz") as m:
        assert sorted(m.files)[:2] == ["feature_reuse_denseblock1", "feature_reuse_denseblock2"]
        G = m["gradient_flow_denseblock1"]
        assert G.shape == (3, 3) and np.isnan(G[1, 0]) and (G[np.triu_indices(3)] > 0).all()


def test_inspect_tables_agree_between_the_tiers(capsys):
    """`inspect --tier plain` runs the plain tier; its printed matrices equal the fast tier's (3 digits)."""
    assert main(INSPECT + ["--block", "2"]) == 0
    fast_out = capsys.readouterr().out
    assert main(INSPECT + ["--block", "2", "--tier", "plain"]) == 0
    plain_out = capsys.readouterr().out
    assert "fast=False" in plain_out and "fast=True" in fast_out
    tables = lambda out: [l for l in out.splitlines() if l.startswith("x")]  # noqa: E731
    assert len(tables(fast_out)) >= 6 and tables(plain_out) == tables(fast_out)


def test_inspect_agrees_with_the_library(capsys):
    """The printed table is block_gradient_flow's, on the normalised batch of the first images."""
    from numpy_densenet.data import channel_stats, load_dataset, normalize
    assert main(INSPECT + ["--block", "2", "--eval"]) == 0
    out = capsys.readouterr().out
    assert "denseblock1" not in out and "eval mode" in out and "(add --out DIR" in out
    d = load_dataset("digits")
    x = normalize(d.x_train[:6], *channel_stats(d.x_train))
    model = DenseNet(2, (2, 2, 2), 4, bn_size=4, num_classes=10, stem="cifar", in_channels=1, seed=0)
    report = flow.block_gradient_flow(model, x, d.y_train[:6], train=False)[1]
    assert report.table() in out and flow.feature_reuse(model)[1].table() in out


def test_inspect_defaults_to_the_model_train_uses_on_digits(capsys):
    assert main(["inspect", "--batch-size", "4", "--block", "3"]) == 0
    out = capsys.readouterr().out
    assert "densenet_bc: growth_rate=12, block_config=(2, 2, 2), num_init_features=24" in out   # depth 16


def test_inspect_pngs(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    assert main(INSPECT + ["--block", "1", "--out", str(tmp_path)]) == 0
    assert "wrote 2 PNG heatmaps" in capsys.readouterr().out
    for name in ("gradient_flow_denseblock1.png", "feature_reuse_denseblock1.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_inspect_weights(capsys, tmp_path):
    model = DenseNet(2, (2, 2, 2), 4, bn_size=4, num_classes=10, stem="cifar", in_channels=1, seed=7)
    for layer in model.blocks()[0].layers():
        layer.conv1.weight.data[...] = 0.125
    plain = tmp_path / "w.npz"
    save_weights(model, plain)
    expected = flow.feature_reuse(model)[0].table()
    assert main(INSPECT + ["--weights", str(plain), "--block", "1"]) == 0
    out = capsys.readouterr().out
    assert f"(weights {plain})" in out and expected in out and "0.1250" in out
    # a file from `train` carries its model description: the --model options are not needed
    described = tmp_path / "best.npz"
    save_npz(described, {**model.state_dict(), "_model_config": np.array(json.dumps(model.config))})
    assert main(["inspect", "--weights", str(described), "--batch-size", "4", "--block", "1"]) == 0
    out = capsys.readouterr().out
    assert "model from the file" in out and expected in out


def test_inspect_errors(capsys, tmp_path):
    assert main(INSPECT + ["--block", "4"]) == 2
    assert "--block must be between 1 and 3" in capsys.readouterr().err
    assert main(INSPECT + ["--weights", str(tmp_path / "missing.npz")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(INSPECT + ["--batch-size", "0"]) == 2
    checkpoint = tmp_path / "checkpoint.npz"
    save_npz(checkpoint, {"model.classifier.bias": np.zeros(10), "optim.lr": np.array(0.1)})
    assert main(INSPECT + ["--weights", str(checkpoint)]) == 2      # no model description, keys do not fit
    assert "checkpoint.npz" in capsys.readouterr().err
    assert main(["inspect", "--dataset", "cifar10"]) == 2
    assert "not bundled" in capsys.readouterr().err
    wrong = tmp_path / "wrong.npz"
    save_weights(DenseNet(2, (1, 1, 1), 4, num_classes=10, stem="cifar", in_channels=1), wrong)
    assert main(INSPECT + ["--weights", str(wrong)]) == 2
    assert "does not fit" in capsys.readouterr().err


# -- the walk-through ------------------------------------------------------------------------------------------
def doc_commands():
    """(command line, expected output lines) for every ```console block of the walk-through.

    A block preceded by ``<!-- slow -->`` (a training run of minutes, and what is inspected of it) runs only when
    NUMPY_DENSENET_SLOW_DOCS=1 (see tests/test_docs.py).
    """
    text = WALKTHROUGH.read_text(encoding="utf-8")
    slow_ok = os.environ.get("NUMPY_DENSENET_SLOW_DOCS") == "1"
    found = []
    for marker, body in re.findall(r"(<!--\s*slow\s*-->\n)?```console\n(.*?)```", text, flags=re.S):
        if marker and not slow_ok:
            continue
        lines = body.rstrip("\n").split("\n")
        assert lines[0].startswith("$ numpy-densenet "), lines[0]
        found.append((lines[0][2:], lines[1:]))
    return found


def same_line(expected, actual):
    """Equal word by word, numbers to 1% (or 1e-12 absolute): the BLAS may round the last digit differently."""
    e, a = expected.split(), actual.split()
    if len(e) != len(a):
        return False
    for x, y in zip(e, a):
        if x == y:
            continue
        try:
            fx, fy = float(x.strip(",;:()[]")), float(y.strip(",;:()[]"))
        except ValueError:
            return False
        if not abs(fx - fy) <= max(1e-2 * abs(fy), 1e-12):
            return False
    return True


def match_excerpt(expected, output):
    """Every run of doc lines between ``...`` lines appears in the output, in order."""
    runs, run = [], []
    for line in expected:
        if line.strip() == "...":
            runs.append(run)
            run = []
        else:
            run.append(line)
    runs.append(run)
    position = 0
    for run in filter(None, runs):
        for start in range(position, len(output) - len(run) + 1):
            if all(same_line(e, a) for e, a in zip(run, output[start:start + len(run)])):
                position = start + len(run)
                break
        else:
            return run
    return None


def test_walkthrough_commands_reproduce_their_output(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                        # the walk-through trains a model into runs/small
    commands = doc_commands()
    assert len(commands) >= 3
    for command, expected in commands:
        argv = shlex.split(command)[1:]
        assert main(argv) == 0, command
        output = capsys.readouterr().out.rstrip("\n").split("\n")
        missing = match_excerpt(expected, output)
        assert missing is None, f"`{command}` no longer prints:\n" + "\n".join(missing)


def test_walkthrough_links_point_at_the_code_they_name():
    """Every link to a line range of the package's code lands on the function the text names."""
    text = WALKTHROUGH.read_text(encoding="utf-8")
    links = re.findall(r"\[`([\w./]+)`\]\(\.\./(numpy_densenet/[\w/]+\.py)#L(\d+)-L(\d+)\)", text)
    assert len(links) >= 3
    root = WALKTHROUGH.parents[1]
    for name, path, first, last in links:
        lines = (root / path).read_text(encoding="utf-8").split("\n")[int(first) - 1:int(last)]
        assert lines[0].lstrip().startswith("def "), (path, first, lines[0])
        function = name.rsplit(".", 1)[-1] if not name.endswith(".py") else "backward"
        assert function in lines[0], (name, path, first, lines[0])
        assert "return" in lines[-1], (name, path, last, lines[-1])         # the whole function


def test_walkthrough_code_excerpts_are_the_code():
    """```py blocks of the walk-through are excerpts of model.py: every line (but "...") stands there as shown."""
    text = WALKTHROUGH.read_text(encoding="utf-8")
    excerpts = re.findall(r"^```py\n(.*?)^```", text, re.M | re.S)
    assert excerpts
    code = (WALKTHROUGH.parents[1] / "numpy_densenet" / "model.py").read_text(encoding="utf-8").split("\n")
    for excerpt in excerpts:
        for line in excerpt.rstrip("\n").split("\n"):
            assert line.strip() == "..." or line in code, line


def test_walkthrough_arithmetic():
    """Numbers stated in the prose of the walk-through."""
    text = WALKTHROUGH.read_text(encoding="utf-8")
    k0, L, k = 8, 5, 4
    assert f"{k0} + {L}·{k} = {k0 + L * k}" in text
    assert f"⌊0.5 · {k0 + L * k}⌋ = {(k0 + L * k) // 2}" in text
    assert f"{9 * 4 * k / (9 - 4):.1f}" in text                           # the bottleneck's break-even C_in
    assert f"{np.sqrt(2 / 8) * np.sqrt(2 / np.pi):.3f}" in text           # E|w| of H1 at initialisation


def test_heatmaps_share_one_colour_scale_with_same_scale(tmp_path, monkeypatch):
    """--same-scale passes every block the same (vmin, vmax): the range over all blocks' values."""
    pytest.importorskip("matplotlib")
    seen = []
    real = flow.save_heatmap

    def recording(matrix, path, log=False, title=None, vmin=None, vmax=None, numbers=True):
        seen.append((matrix.name, log, vmin, vmax, matrix.values))
        return real(matrix, path, log=log, title=title, vmin=vmin, vmax=vmax, numbers=numbers)

    monkeypatch.setattr(study_cli, "save_heatmap", recording)
    base = ["inspect", "--depth", "16", "--growth-rate", "4", "--batch-size", "8", "--out"]
    assert main(base + [str(tmp_path / "own")]) == 0
    assert all(vmin is None and vmax is None for _, _, vmin, vmax, _ in seen)
    seen.clear()
    assert main(base + [str(tmp_path / "same"), "--same-scale"]) == 0
    for log in (False, True):
        ranges = {(vmin, vmax) for _, lg, vmin, vmax, _ in seen if lg == log}
        assert len(ranges) == 1
        values = np.concatenate([v[np.isfinite(v)] for _, lg, _, _, v in seen if lg == log])
        values = np.log10(values) if log else values
        assert ranges.pop() == pytest.approx((values.min(), values.max()))
    assert len(list((tmp_path / "same").glob("*.png"))) == 6


def test_heatmap_writes_the_values_in_the_cells(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib.axes
    texts = []
    real_text = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text",
                        lambda self, x, y, s, *a, **k: texts.append((x, y, s)) or real_text(self, x, y, s, *a, **k))
    values = np.array([[0.5, 0.25, 0.125], [np.nan, 0.3, 0.2], [np.nan, np.nan, 0.1]])
    m = flow.BlockMatrix("denseblock1", values, (8, 4, 4), "feature reuse")
    flow.save_heatmap(m, tmp_path / "h.png", vmin=0.0, vmax=1.0)
    assert sorted(texts) == sorted([(0, 0, "0.5"), (1, 0, "0.25"), (2, 0, "0.125"), (1, 1, "0.3"), (2, 1, "0.2"),
                                    (2, 2, "0.1")])
    assert (tmp_path / "h.png").stat().st_size > 0
