"""PyTorch-Hub-style ImageNet inference with converted torchvision weights.

PyTorch Hub's DenseNet example loads ``densenet121``, resizes a photo so that its shorter side is 256 pixels
(bilinear, antialiased, as Pillow does), crops the central 224x224, scales the pixels to [0, 1], normalises
them with ImageNet's mean and standard deviation and prints the five most probable of the 1000 ImageNet classes.
The same, without PyTorch::

    from numpy_densenet.hub import load

    model = load("densenet121.npz")             # written by `numpy-densenet convert`
    for name, p in model.predict("photo.jpg"):  # the top 5 (top=K for more or fewer)
        print(f"{p:.3f}  {name}")

``densenet121.npz`` is *self-describing*: conversion (:mod:`numpy_densenet.io.torchvision`) infers the
architecture from the tensors' shapes, and the file carries the preprocessing and the class names
(:mod:`numpy_densenet.data.imagenet`), so nothing else is needed.

This module also holds what ``numpy-densenet predict`` checks before it classifies with a model from ``train``,
which records the size and the pixel range of its training images (``_inputs`` in best.npz):

* an image of another size is refused, naming the expected size, unless ``--resize`` is given (then it is
  resized with Pillow's bilinear filter, antialiased when shrinking): :func:`fit_image_size`;
* pixel values outside the training images' range are warned about (a float array in 0..255 instead of [0, 1],
  for instance), since the model's answer on them means little: :func:`pixel_range_warning`.

Pillow is needed to read images (``pip install "numpy_densenet[images]"``).
"""
from __future__ import annotations

import os

import numpy as np
from scipy import special

from .data.files import open_image as open_checked_image
from .data.imagenet import IMAGENET_MEAN, IMAGENET_PREPROCESS, IMAGENET_STD, imagenet_classes
from .io.files import WeightsFileError, printable
from .io.weights import load_model_file
from .nn import no_grad

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_PREPROCESS", "imagenet_classes", "resize_shorter_side", "center_crop", "preprocess", "open_image", "softmax", "top_k", "HubModel", "load",
           "fit_image_size", "resize_images", "pixel_range_warning", "predict_photos", "MAX_PHOTO_PIXELS"]


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
    _pil()                                                     # a clear ImportError without Pillow
    return open_checked_image(path, mode, what="image", max_pixels=MAX_PHOTO_PIXELS, as_array=False)


def resize_shorter_side(img, size):
    """``torchvision.transforms.Resize(size)`` on a PIL image: the shorter side becomes ``size``, the longer
    ``int(size * long / short)``; Pillow's bilinear filter, which antialiases when shrinking.

    The resized image is bounded like the input: at most :data:`MAX_PHOTO_PIXELS` pixels, checked before
    resizing (a 60000x1 image would become 15,360,000x256 pixels: a ValueError names the aspect ratio)."""
    Image = _pil()
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    if new_w * new_h > MAX_PHOTO_PIXELS:
        raise ValueError(f"the image is {w}x{h} pixels, an aspect ratio of {long / short:,.0f}:1: resizing its "
                         f"shorter side to {size} would make it {new_w}x{new_h} = {new_w * new_h:,} pixels, more "
                         f"than the limit of {MAX_PHOTO_PIXELS:,}; crop it to an aspect ratio of at most "
                         f"{MAX_PHOTO_PIXELS // (size * size):,}:1 first")
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
    """Row-wise softmax in float64 (SciPy's, which subtracts each row's maximum first)."""
    return special.softmax(np.asarray(logits, dtype=np.float64), axis=-1)


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
        not a photo preprocessing: load them with ``numpy_densenet.io.load_model_file``.)
    dtype : float32 (default: the file's) or float64

    Returns
    -------
    HubModel
    """
    model, meta = load_model_file(path, dtype=dtype)
    if meta["preprocess"] is None:
        raise WeightsFileError(f"weights file {os.fspath(path)!r} has no preprocessing description (_preprocess): "
                               f"it was not written by `numpy-densenet convert`; use numpy_densenet.io."
                               f"load_model_file for files written by `train`")
    return HubModel(model, meta["classes"], meta["preprocess"])


# -- predict's checks, for models from train ------------------------------------------------------------------
#: how far (in [0, 1] units) an input may stray outside the training range before a warning: about 3/255
RANGE_TOLERANCE = 0.01


def resize_images(x, size):
    """Resize images (N, C, H, W) of floats to ``size`` = (H', W') with Pillow's bilinear filter per channel."""
    Image = _pil()
    h, w = int(size[0]), int(size[1])
    out = np.empty(x.shape[:2] + (h, w), dtype=np.float64)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            img = Image.fromarray(np.ascontiguousarray(x[n, c], dtype=np.float32), mode="F")
            out[n, c] = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.float64)
    return out


def fit_image_size(x, label, expected, resize=False):
    """Return images ``x`` (N, C, H, W) at the training size ``expected`` = (H, W).

    Raises
    ------
    ValueError
        When the size differs and ``resize`` is False; the message names the input, both sizes and ``--resize``.
    """
    expected = tuple(int(v) for v in expected)
    if tuple(x.shape[2:]) == expected:
        return x
    if not resize:
        raise ValueError(f"{label} holds {x.shape[2]}x{x.shape[3]} images, but the model was trained on "
                         f"{expected[0]}x{expected[1]} images; give --resize to resize the inputs to "
                         f"{expected[0]}x{expected[1]} (bilinear)")
    return resize_images(x, expected)


def pixel_range_warning(x, label, trained_range):
    """A warning (str) when the pixel values of ``x`` ([0, 1] units) leave ``trained_range`` = (lo, hi), else None."""
    lo, hi = float(np.min(x)), float(np.max(x))
    t_lo, t_hi = (float(v) for v in trained_range)
    if lo >= t_lo - RANGE_TOLERANCE and hi <= t_hi + RANGE_TOLERANCE:
        return None
    return (f"warning: {label} has pixel values in [{lo:.4g}, {hi:.4g}], outside the range of the training images, "
            f"[{t_lo:.4g}, {t_hi:.4g}] (in [0, 1] units: integer arrays and image files are read as 8-bit pixels "
            f"/ 255, float arrays must already be in [0, 1]); the predictions may mean little")


def predict_photos(weights, paths, top=5, log=print):
    """Hub-style inference on image files with converted weights; prints one line per image.

    Parameters
    ----------
    weights : path of a .npz from ``convert``, or a :class:`~numpy_densenet.hub.HubModel`
    paths : image files
    top : int
    log : callable receiving each line

    Each line is ``path: name (probability), ...`` with the ``top`` most probable classes, best first (a path
    holding a newline or another unprintable character is shown escaped, so each image stays one line).
    Returns the list of (path, [(name, probability), ...]).
    """
    model = weights if isinstance(weights, HubModel) else load(weights)
    results = []
    for path in paths:                                         # one at a time: photos differ in size
        if str(path).lower().endswith(".npy"):
            raise ValueError(f"{printable(path)}: converted ImageNet weights take image files (JPEG, PNG, ...), "
                             f"which are resized and cropped as torchvision does; for arrays use "
                             f"numpy_densenet.hub.load from Python")
        try:
            probabilities = model([path])[0]
        except ValueError as e:                               # a resize or crop it cannot take: name the file
            raise (e if str(path) in str(e) else ValueError(f"{printable(path)}: {e}")) from None
        best = top_k(probabilities, top, model.classes)
        results.append((path, best))
        log(f"{printable(path)}: " + ", ".join(f"{name} ({p:.3f})" for name, p in best))
    return results
