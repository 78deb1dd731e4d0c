"""``numpy-densenet train``, ``evaluate`` and ``predict``."""
from __future__ import annotations

import os

import numpy as np

DATASETS = ["digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "npz"]


def register(sub):
    """Add the ``train``, ``evaluate`` and ``predict`` subcommands."""
    import argparse

    from .common import add_model_args, nonneg_int, positive_int
    p = sub.add_parser("train", help="train a DenseNet (default: a small DenseNet-BC on the bundled digits)",
                       description="Train a DenseNet. With no options: DenseNet-BC (depth 16, k 12) on the bundled "
                                   "UCI digits for 30 epochs, about a minute on 2 cores. The best epoch is chosen on "
                                   "a validation set (--val-fraction), never on the test set; an --out folder that "
                                   "already holds a run is refused unless --resume or --overwrite is given.",
                       argument_default=argparse.SUPPRESS)    # an option absent from args was not given
    p.add_argument("--dataset", choices=DATASETS, help="data set (default: the bundled UCI digits)")
    p.add_argument("--data-dir", help="folder with the data set's official files (the .npz file itself for npz); "
                                      "not needed for digits")
    add_model_args(p, given_only=True)
    p.add_argument("--epochs", type=positive_int, help="epochs (default 30 on digits, 300 otherwise)")
    p.add_argument("--batch-size", type=positive_int, help="images per step (default 64)")
    p.add_argument("--lr", type=_finite_float, help="initial learning rate (default 0.1)")
    p.add_argument("--momentum", type=_finite_float, help="Nesterov momentum in [0, 1) (default 0.9; 0 disables)")
    p.add_argument("--weight-decay", type=_finite_float, help="L2 weight decay (default 1e-4)")
    p.add_argument("--schedule", choices=["step", "cosine"],
                   help="step (default): lr / 10 at 50%% and 75%% of the epochs (the paper); cosine: cosine "
                        "annealing")
    p.add_argument("--drop-rate", type=_finite_float, help="dropout after each dense layer, in [0, 1) (default 0)")
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true",
                     help="4-pixel zero-pad random crop + horizontal flip (default on for CIFAR and npz, off for "
                          "digits and MNIST)")
    aug.add_argument("--no-augment", dest="augment", action="store_false", help="no data augmentation")
    p.add_argument("--seed", type=nonneg_int,
                   help="seed of the initialisation, the batch order, augmentation, dropout and the validation "
                        "split (default 0)")
    p.add_argument("--dtype", choices=["float32", "float64"],
                   help="precision of weights and computation (default float32)")
    p.add_argument("--out", help="output folder (default runs/DATASET; with --resume the checkpoint's folder)")
    p.add_argument("--resume", metavar="CHECKPOINT", help="continue from a checkpoint.npz; its options are kept "
                                                          "(an option given again must have the same value)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run already in --out (without it, train refuses to touch an earlier run)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: mpiexec -n P python -m mpi4py -m numpy_densenet train "
                        "--distributed ...; --batch-size is the global batch (needs numpy_densenet[mpi])")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                   help="with --distributed: per-rank BatchNorm statistics (PyTorch DDP's default) instead of "
                        "the whole batch's")
    p.add_argument("--val-fraction", type=_fraction, metavar="F",
                   help="share of the training images held out (stratified, seeded by --seed) to choose the best "
                        "epoch on; data sets with an official validation split use it instead; 0 turns "
                        "validation off (default 0.1)")
    p.set_defaults(func=_train_entry)

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix of saved weights",
                       description="Evaluate saved weights on a data set's test split: accuracy, loss, per-class "
                                   "accuracy and the confusion matrix.")
    p.add_argument("--weights", required=True, help="best.npz / checkpoint.npz from train, or converted weights")
    _add_data_args(p)
    add_model_args(p, default=None)
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
    p.set_defaults(func=cmd_evaluate)

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


def _finite_float(text):
    import argparse
    import math
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _fraction(text):
    """argparse type for --val-fraction: a number in [0, 1)."""
    import argparse
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) (0 turns validation off), got {value}")
    return value


def _add_data_args(p):
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="data set (default: the bundled UCI digits)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the data set's official files (the .npz file itself for npz); not needed for "
                        "digits")


OPTION_FIELDS = ("dataset", "data_dir", "model", "depth", "growth_rate", "drop_rate", "epochs", "batch_size", "lr",
                 "momentum", "weight_decay", "schedule", "augment", "seed", "dtype", "out", "val_fraction")
_WHERE_FIELDS = ("out", "data_dir")           # where things are, not what the run is: may change on resume


def _flag(field, value=None):
    if field == "augment" and value is not None:
        return "--augment" if value else "--no-augment"
    return "--" + field.replace("_", "-") + ("" if value is None else f" {value}")


def cmd_train(args):
    """Train; with --resume the run's options come from the checkpoint (options given again must match)."""
    from ..io import WeightsFileError, load_npz
    from ..train import TrainConfig, TrainingError, train, train_config_from_arrays
    from .common import UserError
    given = {k: getattr(args, k) for k in OPTION_FIELDS if hasattr(args, k)}
    resume = getattr(args, "resume", None)
    if resume is not None and not resume.strip():
        raise UserError("--resume must name a checkpoint.npz, got ''")
    if "out" in given and not str(given["out"]).strip():
        raise UserError("--out must name an output folder, got ''")
    try:
        if resume:
            arrays = load_npz(resume, what="checkpoint", keys={"_train_config", "run.state"})
            if "_train_config" not in arrays or "run.state" not in arrays:
                raise WeightsFileError(f"checkpoint {resume!r} is not a training checkpoint (no run.state); "
                                       "weights-only files can be evaluated, not resumed")
            saved = train_config_from_arrays(arrays, resume)
            conflicts = [f"{_flag(k, v)} (the checkpoint has {_flag(k, saved[k])})" for k, v in given.items()
                         if k not in _WHERE_FIELDS and v != saved[k]]
            if conflicts:
                raise UserError(f"{resume} was made with different options: " + "; ".join(conflicts) + ". A resumed run "
                                "keeps its options: drop them to continue it, or start a new run with another --out")
            cfg = TrainConfig(**{**saved, "out": given.get("out", os.path.dirname(os.path.abspath(resume))),
                                 "data_dir": given.get("data_dir", saved["data_dir"])})
        else:
            dataset = given.get("dataset", "digits")
            cfg = TrainConfig(**{**given, "out": given.get("out", os.path.join("runs", dataset))})
        rank = getattr(args, "rank", None)                         # --distributed: this MPI rank's setup
        train(cfg, resume=resume, log=rank.log if rank else lambda line: print(line, flush=True),
              given_options=sorted(given), overwrite=getattr(args, "overwrite", False),
              **(dict(distributed=rank.options) if rank else {}))
    except (TrainingError, WeightsFileError) as e:
        raise UserError(str(e)) from None
    return 0


def _train_entry(args):
    """cmd_train, on every MPI rank with --distributed (numpy_densenet.distributed.train_entry)."""
    from ..io import WeightsFileError
    from .common import UserError
    if not getattr(args, "distributed", False):
        if not getattr(args, "sync_bn", True):
            raise UserError("--no-sync-bn applies to --distributed training only")
        return cmd_train(args)
    from ..distributed import get_comm, train_entry
    try:
        get_comm()
    except ImportError as e:
        raise UserError(str(e)) from None
    return train_entry(cmd_train, args, expected=(UserError, WeightsFileError))


def _load_for_eval(args, dataset):
    """(model, mean, std, trained_on) for ``evaluate``: from the file's own description, else from --model."""
    from ..data import channel_stats
    from ..io import json_entry, load_npz, load_weights
    from ..train import load_model_file
    from .common import UserError, build_model
    keys = load_npz(args.weights, keys={"_model_config", "_train_config"})
    if "_model_config" in keys:
        model, meta = load_model_file(args.weights)
        trained_on = None
        if "_train_config" in keys:
            trained_on = json_entry(keys, "_train_config", args.weights, kind=dict).get("dataset")
        return model, meta["mean"], meta["std"], trained_on
    if not args.model:
        raise UserError(f"{args.weights} has no model description: give --model (and --depth / --growth-rate)")
    depth = args.depth
    if depth is None and dataset.name == "digits" and args.model in ("densenet_bc", "densenet"):
        depth = 16                                              # train's default on the small digits
    model = build_model(args.model, depth, args.growth_rate, num_classes=dataset.num_classes,
                        in_channels=dataset.in_channels)
    load_weights(model, args.weights)
    mean, std = channel_stats(dataset.x_train)
    return model, mean, std, None


MAX_PRINTED_CLASSES = 100     # evaluate prints the confusion matrix up to this many classes


def cmd_evaluate(args):
    from ..data import DatasetError, load_dataset
    from ..train import evaluate
    from .common import UserError
    try:
        data = load_dataset(args.dataset, args.data_dir)
    except DatasetError as e:
        raise UserError(str(e)) from None
    model, mean, std, trained_on = _load_for_eval(args, data)
    if trained_on and trained_on != data.name:
        print(f"note: {args.weights} was trained on {trained_on}; evaluating it on {data.name}")
    if model.config["num_classes"] != data.num_classes or model.in_channels != data.in_channels:
        raise UserError(f"{args.weights} is a model for {model.config['num_classes']} classes of "
                        f"{model.in_channels}-channel images; {data.name} has {data.num_classes} classes of "
                        f"{data.in_channels}-channel images")
    r = evaluate(model, data.x_test, data.y_test, batch_size=args.batch_size, mean=mean, std=std)
    print(f"{data.name} test set: {len(data.y_test)} images, accuracy {r['acc']:.4f}, loss {r['loss']:.4f}")
    names = data.classes
    shown = [k for k in range(len(names)) if r["per_class_count"][k]] if len(names) > MAX_PRINTED_CLASSES \
        else range(len(names))
    width = max(len(names[k]) for k in shown) if len(shown) else 1
    print("\nper-class accuracy:" + ("" if len(shown) == len(names) else
                                     f" (the {len(shown)} classes present in the test set)"))
    for k in shown:
        print(f"  {names[k].ljust(width)}  {r['per_class_acc'][k]:.4f}  ({r['per_class_count'][k]} images)")
    cm = r["confusion"]
    if cm is None or len(names) > MAX_PRINTED_CLASSES:
        print(f"\n(no confusion matrix printed: {len(names)} classes, more than {MAX_PRINTED_CLASSES})")
        return 0
    print("\nconfusion matrix (rows: true class, columns: predicted):")
    cw = max(len(str(cm.max())), 3)
    short = [n[:cw] for n in names]
    print(" " * (width + 2) + " ".join(s.rjust(cw) for s in short))
    for name, row in zip(names, cm):
        print(f"  {name.ljust(width)}" + " ".join(str(v).rjust(cw) for v in row))
    return 0


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
    from ..data.files import MAX_IMAGE_PIXELS, FileFormatError, open_image, read_npy
    from .common import UserError
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
    import sys

    from ..hub import HubModel
    from ..nn import no_grad
    from ..predict import fit_image_size, pixel_range_warning, predict_photos
    from ..train import load_model_file
    from .common import UserError
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
    top = max(1, min(args.top or 1, model.config["num_classes"]))
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
        try:
            with no_grad():
                logits = model(x).astype(np.float64)
        except ValueError as e:
            raise UserError(f"the model cannot classify {x.shape[2]}x{x.shape[3]} images: {e}") from None
        if not np.isfinite(logits).all():
            raise UserError(f"{args.weights}: the model's outputs for {labels[0]} are not finite; the weights are "
                            "unusable")
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        for label, p in zip(labels, probs):
            best = np.argsort(p)[::-1][:top]
            print(f"{label}: " + ", ".join(f"{classes[k]} ({p[k]:.3f})" for k in best))
    return 0
