"""``numpy-densenet predict``: classify images with a model from ``train`` or converted torchvision weights."""
from __future__ import annotations

import sys

import numpy as np

from ..data.files import MAX_IMAGE_PIXELS, FileFormatError, npy_header, open_image, read_npy, read_npy_rows
from ..hub import HubModel, fit_image_size, pixel_range_warning, predict_photos, softmax, top_k
from ..io import load_model_file
from ..io.files import printable
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


def _layout(shape, in_channels):
    """How an image array of ``shape`` is laid out, among the layouts ``predict`` accepts; None if none fits."""
    if len(shape) == 2:
        return "HW" if in_channels == 1 else None
    if len(shape) == 3:
        return ("CHW" if shape[0] == in_channels else "HWC" if shape[2] == in_channels else
                "NHW" if in_channels == 1 else None)
    if len(shape) == 4:
        return ("NHWC" if shape[1] != in_channels and shape[3] == in_channels else
                "NCHW" if shape[1] == in_channels else None)
    return None


def _to_nchw(a, layout):
    """A view of ``a`` (laid out as ``layout``) as (N, C, H, W)."""
    return {"HW": lambda: a[None, None], "CHW": lambda: a[None], "HWC": lambda: a.transpose(2, 0, 1)[None],
            "NHW": lambda: a[:, None], "NHWC": lambda: a.transpose(0, 3, 1, 2), "NCHW": lambda: a}[layout]()


class _FileRows:
    """The images (N, C, H, W) of a C-order .npy file whose first axis is N, read a slice at a time (never
    memory-mapped: a file truncated meanwhile is an error naming it, not a crash)."""

    def __init__(self, path, header, layout):
        self.path, self.header, self.layout = path, header, layout
        shape, _, dtype, _ = header
        self.dtype, self.shape = dtype, _to_nchw(np.broadcast_to(np.zeros((), dtype), shape), layout).shape

    def __getitem__(self, rows):
        start, stop, _ = rows.indices(self.shape[0])
        return _to_nchw(read_npy_rows(self.path, self.header, start, max(start, stop), "input"), self.layout)


_SCAN = 2 ** 24     # elements per chunk when scanning an input's values


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _open_inputs(paths, in_channels, same_size=True):
    """The inputs as (path, images) with images (N, C, H, W): an array, or the rows of a .npy file read a batch
    at a time.

    Everything is checked before any image is classified: file type, dtype, layout, emptiness, the pixel limit,
    one image size for all (unless ``same_size`` is False: the caller fits each input to the training size),
    and the values (8-bit integers 0..255, finite floats), read in chunks.
    """
    sources = []
    for path in paths:
        lower = path.lower()
        if lower.endswith(".npy"):
            sources.append((path, _npy_images(path, in_channels)))
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


def _npy_images(path, in_channels):
    """The images of a .npy input, (N, C, H, W), its header, layout, size and values checked."""
    try:
        header = npy_header(path, "input")
        shape, fortran, dtype, _ = header
        if dtype.kind not in "uif":
            raise UserError(f"{path}: expected a numeric image array (integers 0..255 or floats in [0, 1]), got "
                            f"dtype {dtype}")
        if not all(shape):
            raise UserError(f"{path}: the array holds no images (shape {shape})")
        layout = _layout(shape, in_channels)
        if layout is None:
            raise UserError(f"{path}: expected images with {in_channels} channel(s) as (N, C, H, W), (N, H, W, C), "
                            f"(C, H, W), (H, W, C){', (H, W) or (N, H, W)' if in_channels == 1 else ''}; the file "
                            f"holds shape {shape}")
        x = _FileRows(path, header, layout) if layout.startswith("N") and not fortran else \
            _to_nchw(read_npy(path, what="input"), layout)               # one image, or Fortran order: in memory
        if x.shape[2] * x.shape[3] > MAX_IMAGE_PIXELS:
            raise UserError(f"{path}: images of {x.shape[2]}x{x.shape[3]} pixels are more than the limit of "
                            f"{MAX_IMAGE_PIXELS:,} (1024x1024); resize them first")
        step = max(1, _SCAN // int(np.prod(x.shape[1:])))
        for start in range(0, x.shape[0], step):
            _check_values(path, np.asarray(x[start:start + step]))
    except FileFormatError as e:
        raise UserError(str(e)) from None
    return x


def _check_values(path, chunk):
    """8-bit integers 0..255 or finite floats, else a UserError naming the input."""
    if chunk.dtype.kind == "f" and not np.isfinite(chunk).all():
        raise UserError(f"{printable(path)}: the array holds NaN or infinite values")
    if chunk.dtype.kind in "ui" and chunk.size and (chunk.min() < 0 or chunk.max() > 255):
        raise UserError(f"{printable(path)}: integer images must hold 8-bit pixels 0..255, found values "
                        f"{chunk.min()}..{chunk.max()}")


def _batches(sources, batch_size):
    """(path, labels, float64 images in [0, 1]) in batches of at most ``batch_size`` images, in input order;
    every batch's values checked again (a file may change between the scan and the classification)."""
    for path, x in sources:
        n = x.shape[0]
        for start in range(0, n, batch_size):
            chunk = np.asarray(x[start:start + batch_size])
            _check_values(path, chunk)
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
            warning = pixel_range_warning(x, printable(source), trained["pixel_range"])
            if warning and source not in warned:
                warned.add(source)
                print(warning, file=sys.stderr)
        x = ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(model.dtype)
        for label, p in zip(labels, softmax(_logits(model, x, args.weights, labels[0]))):
            print(f"{printable(label)}: " + ", ".join(f"{name} ({q:.3f})" for name, q in top_k(p, args.top or 1,
                                                                                           classes)))
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
