"""PyTorch-Hub-style ImageNet inference with converted torchvision weights.

PyTorch Hub's DenseNet example loads ``densenet121``, resizes a photo so that its shorter side is 256 pixels
(bilinear, antialiased, as Pillow does), crops the central 224x224, scales the pixels to [0, 1], normalises
them with ImageNet's mean and standard deviation and prints the five most probable of the 1000 ImageNet classes.
The same, without PyTorch::

    from numpy_densenet.hub import load

    model = load("densenet121.npz")             # written by `numpy-densenet convert`
    for name, p in model.predict("photo.jpg"):  # the top 5 (top=K for more or fewer)
        print(f"{p:.3f}  {name}")

``densenet121.npz`` is *self-describing*: :func:`describe_torchvision_state` infers the architecture from the
tensors' shapes, and the file carries the preprocessing and the class names (``numpy_densenet/data/
imagenet_classes.txt``, torchvision's ImageNet-1k names in class-index order), so nothing else is needed.

Pillow is needed to read images (``pip install "numpy_densenet[images]"``).
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_PREPROCESS", "imagenet_classes",
           "describe_torchvision_state", "hub_metadata", "resize_shorter_side", "center_crop", "preprocess",
           "top_k", "HubModel", "load"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: torchvision's ImageNet evaluation transforms (Resize(256), CenterCrop(224), ToTensor(), Normalize(...)).
IMAGENET_PREPROCESS = {"resize": 256, "crop": 224, "interpolation": "bilinear", "scale": 255.0,
                       "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}

_CLASSES_FILE = Path(__file__).resolve().parent / "data" / "imagenet_classes.txt"


def imagenet_classes():
    """The 1000 ImageNet-1k class names, index = class id, as torchvision's weight metadata lists them."""
    names = _CLASSES_FILE.read_text(encoding="utf-8").splitlines()
    if len(names) != 1000:
        raise RuntimeError(f"{_CLASSES_FILE} should hold 1000 class names, one a line; it holds {len(names)}")
    return names


# -- the architecture, from the tensors' shapes -------------------------------------------------------------
def describe_torchvision_state(state):
    """Infer the ``DenseNet(...)`` keyword arguments from a torchvision-style DenseNet state dict.

    Parameters
    ----------
    state : mapping of key -> array
        torchvision's key names (``features.conv0.weight``, ``features.denseblock1.denselayer1.conv1.weight``,
        ...); old ``norm.1``-style keys should already be renamed.

    Returns
    -------
    dict with growth_rate, block_config, num_init_features, bn_size, drop_rate (0: not recorded in weights),
    num_classes, compression, stem ("imagenet" for a 7x7 first convolution, "cifar" for 3x3) and in_channels.

    Raises
    ------
    ValueError
        When a tensor needed for the description is missing or the shapes do not fit a DenseNet.
    """
    def shape(key):
        if key not in state:
            raise ValueError(f"not a torchvision DenseNet state dict: there is no {key!r}")
        return tuple(np.shape(state[key]))

    conv0 = shape("features.conv0.weight")
    if len(conv0) != 4 or conv0[2] not in (3, 7):
        raise ValueError(f"features.conv0.weight has shape {conv0}; expected (C, in_channels, 7, 7) for the "
                         f"ImageNet stem or (C, in_channels, 3, 3) for the CIFAR stem")
    stem = "imagenet" if conv0[2] == 7 else "cifar"
    layers = {}
    for key in state:
        m = re.match(r"features\.denseblock(\d+)\.denselayer(\d+)\.", key)
        if m:
            b, l = int(m.group(1)), int(m.group(2))
            layers[b] = max(layers.get(b, 0), l)
    if not layers or sorted(layers) != list(range(1, len(layers) + 1)):
        raise ValueError(f"the dense blocks should be numbered 1, 2, ...; found {sorted(layers)}")
    block_config = tuple(layers[b] for b in sorted(layers))
    first = "features.denseblock1.denselayer1."
    if first + "conv2.weight" in state:                                   # bottleneck layers
        growth_rate = shape(first + "conv2.weight")[0]
        width = shape(first + "conv1.weight")[0]
        if width % growth_rate:
            raise ValueError(f"{first}conv1 has {width} output channels, not a multiple of the growth rate "
                             f"{growth_rate}")
        bn_size = width // growth_rate
    else:
        growth_rate, bn_size = shape(first + "conv1.weight")[0], None
    compression = 0.5                                                    # the default; no transition uses it
    pairs = [shape(f"features.transition{t}.conv.weight")[:2] for t in range(1, len(block_config))]
    if pairs:                                                            # (out, in) = (floor(theta * in), in)
        fits = [c for c in (0.5, 1.0) if all(math.floor(c * i + 1e-9) == o for o, i in pairs)]
        low, high = max(o / i for o, i in pairs), min((o + 1) / i for o, i in pairs)
        if not fits and not low < high:
            raise ValueError(f"the transitions' channel counts (out, in) {pairs} fit no single compression")
        compression = fits[0] if fits else low
    classifier = shape("classifier.weight")
    return dict(growth_rate=int(growth_rate), block_config=block_config, num_init_features=int(conv0[0]),
                bn_size=None if bn_size is None else int(bn_size), drop_rate=0.0, num_classes=int(classifier[0]),
                compression=float(compression), stem=stem, in_channels=int(conv0[1]))


def checked_description(state):
    """:func:`describe_torchvision_state`, checked by loading ``state`` into the model it describes (strict:
    every key and shape must fit). Raises ValueError otherwise."""
    from .model import DenseNet
    config = describe_torchvision_state(state)
    DenseNet(**config, fast=False).load_state_dict(state)
    return config


def hub_metadata(model_config, classes=None):
    """The arrays that make converted weights self-describing (keys start with "_", as in ``train``'s files).

    ``_model_config``: the architecture. For an ImageNet model (the ImageNet stem on RGB images, as torchvision's
    DenseNets) also ``_preprocess``: :data:`IMAGENET_PREPROCESS`, ``_mean`` / ``_std``: the normalisation, and
    ``_classes``: the class names (ImageNet's 1000 when the model has 1000 outputs). Other models (a CIFAR stem,
    grey images) get the architecture only: their preprocessing is not ImageNet's and is not known here.
    """
    config = dict(model_config, block_config=list(model_config["block_config"]))
    arrays = {"_model_config": np.array(json.dumps(config))}
    if config["stem"] != "imagenet" or config["in_channels"] != 3:
        return arrays
    if classes is None and config["num_classes"] == 1000:
        classes = imagenet_classes()
    arrays.update({"_preprocess": np.array(json.dumps(IMAGENET_PREPROCESS)),
                   "_mean": np.array(IMAGENET_MEAN), "_std": np.array(IMAGENET_STD)})
    if classes is not None:
        arrays["_classes"] = np.array(json.dumps(list(classes)))
    return arrays


# -- preprocessing, step by step as torchvision does it -----------------------------------------------------
def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError('reading and resizing images needs Pillow: pip install "numpy_densenet[images]"') \
            from None
    return Image


#: the largest photo :func:`open_image` decodes: 64 megapixels (Pillow's decompression-bomb guard is set to it)
MAX_PHOTO_PIXELS = 64_000_000


def open_image(path, mode="RGB"):
    """Open an image file with Pillow as a PIL image in ``mode``; a clear ValueError naming the file otherwise.

    Photos are resized before they reach the network, so any size up to :data:`MAX_PHOTO_PIXELS` is taken; the
    size is checked from the header before decoding, with Pillow's decompression-bomb guard set to the same
    limit and PNG text chunks capped, as for every other image the package reads
    (:func:`numpy_densenet.data.files.open_image`).
    """
    from .data.files import open_image as open_checked
    _pil()                                                     # a clear ImportError without Pillow
    return open_checked(path, mode, what="image", max_pixels=MAX_PHOTO_PIXELS, as_array=False)


def resize_shorter_side(img, size):
    """``torchvision.transforms.Resize(size)`` on a PIL image: the shorter side becomes ``size``, the longer
    ``int(size * long / short)``; Pillow's bilinear filter, which antialiases when shrinking."""
    Image = _pil()
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if (new_w, new_h) == (w, h):
        return img
    return img.resize((new_w, new_h), Image.BILINEAR)


def center_crop(img, size):
    """``torchvision.transforms.CenterCrop(size)``: top = int(round((h - size) / 2)), left likewise."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"the image is {w}x{h}, smaller than the {size}x{size} crop")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def preprocess(image, config=None, dtype=np.float32):
    """A PIL image or an image file -> a (3, crop, crop) array, ready for the network.

    Resize (shorter side to ``config["resize"]``), center-crop ``config["crop"]``, pixels / 255 to [0, 1], then
    ``(x - mean) / std`` per channel, all in float32 as torchvision's ``ToTensor`` and ``Normalize`` compute.
    ``config`` defaults to :data:`IMAGENET_PREPROCESS`.
    """
    c = IMAGENET_PREPROCESS if config is None else config
    img = image if hasattr(image, "convert") and hasattr(image, "size") else open_image(image)
    img = img.convert("RGB")
    img = center_crop(resize_shorter_side(img, int(c["resize"])), int(c["crop"]))
    x = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(c["scale"])
    mean = np.asarray(c["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(c["std"], dtype=np.float32)[:, None, None]
    return ((x - mean) / std).astype(dtype, copy=False)


def softmax(logits):
    """Row-wise softmax in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(probs, k, classes=None):
    """The ``k`` most probable classes of one probability vector: a list of (name, probability), best first
    (ties: the lower class index first)."""
    probs = np.asarray(probs)
    k = max(1, min(int(k), probs.shape[-1]))
    order = np.argsort(-probs, kind="stable")[:k]
    names = classes if classes is not None else [str(i) for i in range(probs.shape[-1])]
    return [(names[i], float(probs[i])) for i in order]


class HubModel:
    """A converted model with its preprocessing and class names: ``load(path)`` returns one.

    Attributes
    ----------
    model : DenseNet, in eval mode
    classes : list of str
    config : dict, the preprocessing (see :data:`IMAGENET_PREPROCESS`)
    """

    def __init__(self, model, classes, config):
        self.model = model.eval()
        self.classes = list(classes) if classes is not None else [str(i) for i in range(model.config["num_classes"])]
        self.config = dict(config)

    def preprocess(self, image):
        """One image (a path or a PIL image) -> (3, crop, crop) array in the model's dtype."""
        return preprocess(image, self.config, dtype=self.model.dtype)

    def logits(self, images):
        """Logits (N, num_classes) for a list of images (paths or PIL images) or a preprocessed (N, 3, H, W)
        array."""
        from .nn import no_grad
        if isinstance(images, np.ndarray):
            x = images.astype(self.model.dtype, copy=False)
        else:
            x = np.stack([self.preprocess(im) for im in images])
        with no_grad():
            return self.model(x)

    def __call__(self, images):
        """Class probabilities (N, num_classes), float64."""
        return softmax(self.logits(images))

    def predict(self, image, top=5):
        """The ``top`` most probable classes of one image: a list of (class name, probability), best first."""
        return top_k(self(list([image]))[0], top, self.classes)


def load(path, dtype=None):
    """Load a self-describing weights file (from ``numpy-densenet convert``) for Hub-style inference.

    Parameters
    ----------
    path : str or path-like
        A ``.npz`` written by ``numpy-densenet convert``. (Files written by ``train`` describe their model but
        not a photo preprocessing: load them with ``numpy_densenet.train.load_model_file``.)
    dtype : float32 (default: the file's) or float64

    Returns
    -------
    HubModel
    """
    from .io import WeightsFileError
    from .train import load_model_file
    model, meta = load_model_file(path, dtype=dtype)
    if meta["preprocess"] is None:
        raise WeightsFileError(f"weights file {os.fspath(path)!r} has no preprocessing description (_preprocess): "
                               f"it was not written by `numpy-densenet convert`; use numpy_densenet.train."
                               f"load_model_file for files written by `train`")
    return HubModel(model, meta["classes"], meta["preprocess"])
