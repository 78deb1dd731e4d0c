"""PyTorch-Hub-style ImageNet inference: self-describing converted weights, torchvision's preprocessing, top-k.

torchvision cannot be installed beside the CPU build of PyTorch on the machines these tests were written on (its
wheels need the CUDA build), so the preprocessing is checked against ``reference_preprocess`` below: torchvision's
documented evaluation steps written out independently with Pillow and NumPy (Resize(256): shorter side to 256,
the other int(256 * long / short), Pillow bilinear; CenterCrop(224): top = int(round((h - 224) / 2)); ToTensor:
uint8 / 255 in float32; Normalize with ImageNet's mean and std), and the network against the torch.nn replica of
torchvision's DenseNet in ``tests/torch_densenet.py``.
"""
import contextlib
import io
import json

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from numpy_densenet import densenet121  # noqa: E402
from numpy_densenet.cli import main  # noqa: E402
from numpy_densenet.data.imagenet import IMAGENET_MEAN, IMAGENET_STD, imagenet_classes  # noqa: E402
from numpy_densenet.hub import load, preprocess, top_k  # noqa: E402
from numpy_densenet.io.torchvision import describe_torchvision_state  # noqa: E402
from numpy_densenet.zoo import DenseNet  # noqa: E402

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def reference_preprocess(path):
    """torchvision's Resize(256), CenterCrop(224), ToTensor(), Normalize(mean, std), step by step."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    if w <= h:
        size = (256, int(256 * h / w))
    else:
        size = (int(256 * w / h), 256)
    img = img.resize(size, Image.BILINEAR)
    a = np.array(img)                                                 # (H, W, 3) uint8
    H, W = a.shape[:2]
    top, left = int(round((H - 224) / 2.0)), int(round((W - 224) / 2.0))
    a = a[top:top + 224, left:left + 224]
    t = a.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    return (t - MEAN[:, None, None]) / STD[:, None, None]


def photo(path, w, h, seed=0, mode="RGB"):
    """A smooth picture with some noise (so resizing and cropping are visible), saved by extension."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([128 + 100 * np.sin(xx / (7 + c) + yy / (11 + 2 * c) + c) for c in range(3)], axis=-1)
    a = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(a, "RGB").convert(mode)
    img.save(path)
    return path


def cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


# -- the pieces -------------------------------------------------------------------------------------------------
def test_class_names_are_torchvisions_1000():
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet tissue"
    assert all(n and n == n.strip() for n in names)


@pytest.mark.parametrize("size", [(300, 400), (400, 300), (256, 256), (517, 333), (224, 230), (1000, 260)])
def test_preprocess_matches_the_documented_torchvision_steps(tmp_path, size):
    path = photo(tmp_path / "p.png", *size, seed=sum(size))
    ours = preprocess(str(path))
    ref = reference_preprocess(path)
    assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-6)


def test_preprocess_converts_grey_and_rgba_images_to_rgb(tmp_path):
    for mode in ("L", "RGBA", "P"):
        path = photo(tmp_path / f"p_{mode}.png", 320, 240, mode=mode)
        np.testing.assert_allclose(preprocess(str(path)), reference_preprocess(path), atol=1e-6)


def test_preprocess_of_a_flat_grey_image_is_the_normalised_constant(tmp_path):
    Image.new("RGB", (500, 300), (128, 128, 128)).save(tmp_path / "g.png")
    x = preprocess(str(tmp_path / "g.png"))
    expected = (np.float32(128) / np.float32(255) - MEAN) / STD
    np.testing.assert_allclose(x[:, 0, 0], expected, atol=1e-6)
    assert np.ptp(x, axis=(1, 2)).max() == 0


def test_top_k_orders_by_probability_then_index():
    p = np.array([0.1, 0.3, 0.3, 0.05, 0.25])
    assert top_k(p, 3, list("abcde")) == [("b", 0.3), ("c", 0.3), ("e", 0.25)]
    assert len(top_k(p, 99)) == 5 and top_k(p, 0)[0] == ("1", 0.3)


def small_imagenet_model(seed=0, **kw):
    cfg = dict(growth_rate=8, block_config=(2, 3, 2, 2), num_init_features=16, num_classes=1000, seed=seed)
    cfg.update(kw)
    model = DenseNet(**cfg)
    rng = np.random.default_rng(seed + 1)
    for name, b in model.named_buffers():
        if name.endswith("running_mean"):
            b[...] = rng.normal(0, 0.1, b.shape)
        elif name.endswith("running_var"):
            b[...] = rng.uniform(0.5, 2.0, b.shape)
    return model


@pytest.mark.parametrize("kw", [{}, dict(stem="cifar", num_classes=10), dict(bn_size=None, compression=1.0),
                                dict(block_config=(3,), in_channels=1, num_classes=7),
                                dict(compression=0.29, bn_size=2)])
def test_the_architecture_is_inferred_from_the_shapes(kw):
    model = small_imagenet_model(**kw)
    described = describe_torchvision_state(model.state_dict())
    if "compression" in kw or len(model.config["block_config"]) == 1:
        # theta = 0.29 comes back as another theta with the same channel counts (and one block has no transition)
        DenseNet(**described, fast=False).load_state_dict(model.state_dict())     # strict: every shape fits
        described.pop("compression")
        assert {k: v for k, v in model.config.items() if k != "compression"} == described
    else:
        assert described == model.config


def test_densenet121_is_recognised():
    config = describe_torchvision_state(densenet121().state_dict())
    assert config == dict(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4,
                          drop_rate=0.0, num_classes=1000, compression=0.5, stem="imagenet", in_channels=3)


def test_describe_names_what_is_missing():
    state = small_imagenet_model().state_dict()
    del state["features.conv0.weight"]
    with pytest.raises(ValueError, match="features.conv0.weight"):
        describe_torchvision_state(state)


# -- end to end, against PyTorch (these tests skip without it) ---------------------------------------------
def torch_reference(seed=0):
    """torchvision's densenet121 (the torch.nn replica), random weights, BatchNorm statistics set, eval mode."""
    torch = pytest.importorskip("torch")
    import torch_densenet as tdn
    torch.manual_seed(seed)
    ref = tdn.DenseNet().eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
    return ref


def old_style_keys(state):
    """Rename keys as torchvision's published .pth files have them (norm.1, conv.2, ...; no counters)."""
    import re
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        out[re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k)] = v
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """densenet121 with random weights: the .pth as torchvision publishes it, converted, plus two photos."""
    torch = pytest.importorskip("torch")
    folder = tmp_path_factory.mktemp("hub")
    ref = torch_reference()
    torch.save(old_style_keys(ref.state_dict()), folder / "densenet121.pth")
    code, stdout, stderr = cli(["convert", folder / "densenet121.pth", folder / "densenet121.npz"])
    assert code == 0, stderr
    photos = [photo(folder / "photo.jpg", 500, 375, seed=1), photo(folder / "other.png", 240, 320, seed=2)]
    return dict(ref=ref, folder=folder, photos=photos, npz=folder / "densenet121.npz", stdout=stdout)


def test_convert_writes_a_self_describing_file(converted):
    with np.load(converted["npz"], allow_pickle=False) as z:
        config = json.loads(str(z["_model_config"][()]))
        pre = json.loads(str(z["_preprocess"][()]))
        classes = json.loads(str(z["_classes"][()]))
        np.testing.assert_array_equal(z["_mean"], IMAGENET_MEAN)
        np.testing.assert_array_equal(z["_std"], IMAGENET_STD)
    assert config["block_config"] == [6, 12, 24, 16] and config["growth_rate"] == 32
    assert (pre["resize"], pre["crop"], pre["interpolation"]) == (256, 224, "bilinear")
    assert classes == imagenet_classes()
    assert "densenet121.npz" in converted["stdout"] and "predict" in converted["stdout"]


def test_hub_load_agrees_with_torch_on_the_reference_preprocessing(converted):
    import torch
    model = load(converted["npz"])
    logits = model.logits([str(p) for p in converted["photos"]])
    x = torch.from_numpy(np.stack([reference_preprocess(p) for p in converted["photos"]]))
    with torch.no_grad():
        expected = converted["ref"](x).numpy()
    assert np.abs(logits - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    probs = model([str(p) for p in converted["photos"]])
    ref_probs = torch.softmax(torch.from_numpy(expected).double(), dim=1).numpy()
    for p, r in zip(probs, ref_probs):
        assert [n for n, _ in top_k(p, 5, model.classes)] == [n for n, _ in top_k(r, 5, model.classes)]
    best = model.predict(str(converted["photos"][0]), top=3)
    assert [n for n, _ in best] == [n for n, _ in top_k(ref_probs[0], 3, imagenet_classes())]


def test_cli_predict_prints_the_top_5_names_per_image(converted):
    import torch
    code, stdout, stderr = cli(["predict", "--weights", converted["npz"], *converted["photos"]])
    assert code == 0, stderr
    lines = stdout.strip().splitlines()
    assert len(lines) == 2
    x = torch.from_numpy(np.stack([reference_preprocess(p) for p in converted["photos"]]))
    with torch.no_grad():
        ref_probs = torch.softmax(converted["ref"](x).double(), dim=1).numpy()
    names = imagenet_classes()
    for line, path, p in zip(lines, converted["photos"], ref_probs):
        expected = ", ".join(f"{n} ({q:.3f})" for n, q in top_k(p, 5, names))
        assert line == f"{path}: {expected}"
    code, stdout, _ = cli(["predict", "--weights", converted["npz"], "--top", 2, converted["photos"][1]])
    assert code == 0 and stdout.count("(") == 2


def test_cli_predict_with_converted_weights_refuses_arrays_and_non_images(converted, tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((224, 224, 3), np.uint8))
    code, _, stderr = cli(["predict", "--weights", converted["npz"], tmp_path / "a.npy"])
    assert code == 2 and "image files" in stderr
    (tmp_path / "notes.jpg").write_text("not a picture")
    code, _, stderr = cli(["predict", "--weights", converted["npz"], tmp_path / "notes.jpg"])
    assert code == 2 and "notes.jpg" in stderr and "Traceback" not in stderr


def test_convert_refuses_a_state_dict_that_is_not_a_densenet(tmp_path):
    torch = pytest.importorskip("torch")
    torch.save({"weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    code, _, stderr = cli(["convert", tmp_path / "other.pth", tmp_path / "o.npz"])
    assert code == 2 and "features.conv0.weight" in stderr
    assert not (tmp_path / "o.npz").exists()


def test_hub_load_refuses_a_file_from_train(tmp_path):
    from numpy_densenet.io import WeightsFileError
    from numpy_densenet.training import TrainConfig, train
    train(TrainConfig(depth=10, growth_rate=2, epochs=1, batch_size=256, out=str(tmp_path / "r")), log=lambda _: None)
    with pytest.raises(WeightsFileError, match="convert"):
        load(tmp_path / "r" / "best.npz")


def test_only_imagenet_models_get_imagenet_preprocessing():
    from numpy_densenet.io.torchvision import converted_metadata
    imagenet = converted_metadata(small_imagenet_model().config)
    assert {"_model_config", "_preprocess", "_mean", "_std", "_classes"} == set(imagenet)
    for kw in (dict(stem="cifar", num_classes=10), dict(in_channels=1)):
        assert set(converted_metadata(small_imagenet_model(**kw).config)) == {"_model_config"}
