"""predict respects what the model was trained on: image size (refused unless --resize) and pixel range (warned)."""
import json

import numpy as np
import pytest

from numpy_densenet.data import load_dataset
from numpy_densenet.hub import fit_image_size, pixel_range_warning
from numpy_densenet.io import load_model_file
from numpy_densenet.training import TrainConfig, train
from test_train import cli, quiet


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "run"
    train(TrainConfig(depth=10, growth_rate=4, epochs=1, batch_size=256, out=str(out)), log=quiet)
    return out / "best.npz"


def test_weights_record_the_training_images_size_and_range(digits_model):
    with np.load(digits_model, allow_pickle=False) as z:
        inputs = json.loads(str(z["_inputs"][()]))
    x = load_dataset("digits").x_train
    assert inputs["image_size"] == [8, 8]
    assert inputs["pixel_range"] == [float(x.min()), float(x.max())]
    _, meta = load_model_file(digits_model)
    assert meta["inputs"] == inputs and meta["preprocess"] is None


def test_an_image_of_another_size_is_refused_naming_the_expected_size(digits_model, tmp_path):
    PIL = pytest.importorskip("PIL.Image")
    digit = (load_dataset("digits").x_test[3, 0] * 255).astype(np.uint8)
    PIL.fromarray(digit).resize((32, 32), PIL.BILINEAR).save(tmp_path / "big.png")
    code, stdout, stderr = cli(["predict", "--weights", digits_model, tmp_path / "big.png"])
    assert code == 2 and stdout == ""
    assert "32x32" in stderr and "8x8" in stderr and "--resize" in stderr and "big.png" in stderr
    code, stdout, stderr = cli(["predict", "--weights", digits_model, "--resize", tmp_path / "big.png"])
    assert code == 0, stderr
    assert stdout.startswith(f"{tmp_path / 'big.png'}: ") and "warning" not in stderr


def test_resize_gives_the_training_size():
    pytest.importorskip("PIL")
    x = np.random.default_rng(0).uniform(0, 1, (2, 1, 32, 24))
    y = fit_image_size(x, "x.npy", (8, 8), resize=True)
    assert y.shape == (2, 1, 8, 8) and 0 <= y.min() and y.max() <= 1
    const = fit_image_size(np.full((1, 3, 5, 7), 0.25), "c", (8, 8), resize=True)
    np.testing.assert_allclose(const, 0.25, atol=1e-6)
    assert fit_image_size(x, "x", (32, 24)) is x
    with pytest.raises(ValueError, match=r"32x24 images.*8x8.*--resize"):
        fit_image_size(x, "x.npy", (8, 8))


def test_pixel_values_outside_the_training_range_are_warned_about(digits_model, tmp_path):
    images = load_dataset("digits").x_test[:3]                          # floats in [0, 1]
    np.save(tmp_path / "ok.npy", images)
    np.save(tmp_path / "scaled.npy", images * 255)                       # a float array in 0..255: wrong units
    code, stdout, stderr = cli(["predict", "--weights", digits_model, tmp_path / "ok.npy"])
    assert code == 0 and stderr == ""
    code, stdout, stderr = cli(["predict", "--weights", digits_model, tmp_path / "scaled.npy"])
    assert code == 0 and len(stdout.splitlines()) == 3
    assert "warning" in stderr and "scaled.npy" in stderr and "[0, 255]" in stderr and "[0, 1]" in stderr
    assert pixel_range_warning(np.array([0.2, 0.8]), "a", (0, 1)) is None
    assert pixel_range_warning(np.array([-0.5, 0.8]), "a", (0, 1)) is not None
