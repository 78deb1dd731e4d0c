"""``numpy-densenet predict``: classify images with a model from ``train`` or converted torchvision weights."""
from __future__ import annotations

import sys

import numpy as np

from ..data.files import MAX_IMAGE_PIXELS, FileFormatError, open_image, read_npy
from ..hub import HubModel, fit_image_size, pixel_range_warning, predict_photos, softmax, top_k
from ..io import load_model_file
from ..nn import no_grad
from .common import UserError, positive_int


def register(sub):
    """Add the ``predict`` subcommand."""
    p = sub.add_parser("predict", help="classify images (.npy arrays, or image files when Pillow is installed)",
                       description="Classify images with a model from train (inputs must have its training image "
                                   "size unless --resize is given) or with converted torchvision weights (photos "
                                   "are resized to 256, center-cropped to 224 and normalised as PyTorch Hub does). "
                                   "Prints the most probable classes of each image with their probabilities.")
    p.add_argument("--weights", required=True, help="best.npz / checkpoint.npz from train, or a .npz from convert "
                                                     "(they describe the model and its preprocessing)")
    p.add_argument("inputs", nargs="+",
                   help=".npy files: (N, C, H, W), (N, H, W, C), (C, H, W), (H, W, C), (H, W), or (N, H, W) for "
                        "grey models; integer arrays are 8-bit pixels 0..255, float arrays are in [0, 1]. "
                        "Or image files: .png, .jpg, ... (needs Pillow). At most 1024x1024 pixels per image for "
                        "models from train; photos for converted weights up to 64 megapixels")
    p.add_argument("--top", type=positive_int, default=None, metavar="K",
                   help="show the K most probable classes (default 5 for converted ImageNet weights, 1 for models "
                        "from train)")
    p.add_argument("--resize", action="store_true",
                   help="resize inputs of another size than the training images to that size (bilinear; needs "
                        "Pillow); without it they are refused")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images per forward pass (default 64)")
    p.set_defaults(func=cmd_predict)


def _as_nchw(a, in_channels):
    """A view of an image array as (N, C, H, W), following the layouts ``predict`` accepts; None if none fits."""
    if a.ndim == 2:                                   # (H, W)
        return a[None, None] if in_channels == 1 else None
    if a.ndim == 3 and a.shape[0] == in_channels:     # (C, H, W)
        return a[None]
    if a.ndim == 3 and a.shape[2] == in_channels:     # (H, W, C)
        return a.transpose(2, 0, 1)[None]
    if a.ndim == 3 and in_channels == 1:              # (N, H, W): a stack of grey images
        return a[:, None]
    if a.ndim == 4 and a.shape[1] != in_channels and a.shape[3] == in_channels:
        return a.transpose(0, 3, 1, 2)                # (N, H, W, C)
    if a.ndim == 4 and a.shape[1] == in_channels:
        return a
    return None


_SCAN = 2 ** 24     # elements per chunk when scanning an input's values


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _open_inputs(paths, in_channels, same_size=True):
    """The inputs as (path, images) with images an (N, C, H, W) view, memory-mapped for .npy files.

    Everything is checked before any image is classified: file type, dtype, layout, emptiness, the pixel limit,
    one image size for all (unless ``same_size`` is False: the caller fits each input to the training size),
    and the values (8-bit integers 0..255, finite floats), scanned in chunks.
    """
    sources = []
    for path in paths:
        lower = path.lower()
        if lower.endswith(".npy"):
            try:
                a = read_npy(path, what="input", mmap=True)
            except FileFormatError as e:
                raise UserError(str(e)) from None
            if a.dtype.kind not in "uif":
                raise UserError(f"{path}: expected a numeric image array (integers 0..255 or floats in [0, 1]), got "
                                f"dtype {a.dtype}")
            if a.size == 0:
                raise UserError(f"{path}: the array holds no images (shape {a.shape})")
            x = _as_nchw(a, in_channels)
            if x is None:
                raise UserError(f"{path}: expected images with {in_channels} channel(s) as (N, C, H, W), "
                                f"(N, H, W, C), (C, H, W), (H, W, C)"
                                f"{', (H, W) or (N, H, W)' if in_channels == 1 else ''}; the file holds shape "
                                f"{a.shape}")
            if x.shape[2] * x.shape[3] > MAX_IMAGE_PIXELS:
                raise UserError(f"{path}: images of {x.shape[2]}x{x.shape[3]} pixels are more than the limit of "
                                f"{MAX_IMAGE_PIXELS:,} (1024x1024); resize them first")
            flat = a.reshape(-1, order="A") if a.ndim else a.reshape(1)
            for start in range(0, flat.size, _SCAN):
                chunk = np.asarray(flat[start:start + _SCAN])
                if a.dtype.kind == "f" and not np.isfinite(chunk).all():
                    raise UserError(f"{path}: the array holds NaN or infinite values")
                if a.dtype.kind in "ui" and (chunk.min() < 0 or chunk.max() > 255):
                    raise UserError(f"{path}: integer images must hold 8-bit pixels 0..255, found values "
                                    f"{chunk.min()}..{chunk.max()}")
            sources.append((path, x))
        elif lower.endswith(IMAGE_SUFFIXES):
            try:
                img = open_image(path, "L" if in_channels == 1 else "RGB", what="input")
            except ImportError:
                raise UserError('reading image files needs Pillow: pip install "numpy_densenet[images]"') from None
            except FileFormatError as e:
                raise UserError(str(e)) from None
            sources.append((path, img[None, None] if img.ndim == 2 else img.transpose(2, 0, 1)[None]))
        else:
            raise UserError(f"{path}: inputs must be .npy arrays or image files ({', '.join(IMAGE_SUFFIXES)})")
    shapes = {x.shape[2:] for _, x in sources}
    if same_size and len(shapes) > 1:
        raise UserError(f"all inputs must have the same image size, got {sorted(shapes)}")
    return sources


def _batches(sources, batch_size):
    """(path, labels, float64 images in [0, 1]) in batches of at most ``batch_size`` images, in input order."""
    for path, x in sources:
        n = x.shape[0]
        for start in range(0, n, batch_size):
            chunk = np.asarray(x[start:start + batch_size])
            chunk = chunk / 255.0 if chunk.dtype.kind in "ui" else chunk.astype(np.float64)
            labels = [f"{path}[{i}]" for i in range(start, start + len(chunk))] if n > 1 else [path]
            yield path, labels, chunk


def cmd_predict(args):
    """Classify images: converted ImageNet weights take photos as PyTorch Hub does; a model from train takes
    images of its training size (or --resize), in batches, with a warning for pixel values it never saw."""
    model, meta = load_model_file(args.weights)
    if meta.get("preprocess") is not None:                       # converted weights: Hub-style photos
        try:
            predict_photos(HubModel(model, meta["classes"], meta["preprocess"]), args.inputs, top=args.top or 5)
        except (ValueError, ImportError) as e:
            raise UserError(str(e)) from None
        return 0
    trained = meta.get("inputs")                                 # the training images' size and pixel range
    sources = _open_inputs(args.inputs, model.in_channels, same_size=trained is None)
    if trained is not None:                                      # sizes, before anything is classified
        for path, x in sources:
            try:
                fit_image_size(np.zeros((0,) + x.shape[1:]), path, trained["image_size"], args.resize)
            except (ValueError, ImportError) as e:
                raise UserError(str(e)) from None
    mean = meta["mean"] if meta["mean"] is not None else np.zeros(model.in_channels)
    std = meta["std"] if meta["std"] is not None else np.ones(model.in_channels)
    classes = meta["classes"] or [str(k) for k in range(model.config["num_classes"])]
    warned = set()
    model.eval()
    for source, labels, x in _batches(sources, args.batch_size):   # x: (n, C, H, W) float64 in [0, 1]
        if trained is not None:
            x = fit_image_size(x, source, trained["image_size"], args.resize)
            warning = pixel_range_warning(x, source, trained["pixel_range"])
            if warning and source not in warned:
                warned.add(source)
                print(warning, file=sys.stderr)
        x = ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(model.dtype)
        for label, p in zip(labels, softmax(_logits(model, x, args.weights, labels[0]))):
            print(f"{label}: " + ", ".join(f"{name} ({q:.3f})" for name, q in top_k(p, args.top or 1, classes)))
    return 0


def _logits(model, x, weights, first_label):
    """The model's logits for a batch, as float64; a UserError when they cannot be had or are not finite."""
    try:
        with no_grad():
            logits = model(x).astype(np.float64)
    except ValueError as e:
        raise UserError(f"the model cannot classify {x.shape[2]}x{x.shape[3]} images: {e}") from None
    if not np.isfinite(logits).all():
        raise UserError(f"{weights}: the model's outputs for {first_label} are not finite; the weights are unusable")
    return logits
