"""``numpy-densenet train``, ``evaluate`` and ``predict``."""
from __future__ import annotations

import os

import numpy as np

DATASETS = ["digits", "cifar10", "cifar100", "mnist", "fashion-mnist", "npz"]


def register(sub):
    from .cli import add_model_args, nonneg_int, positive_int
    p = sub.add_parser("train", help="train a DenseNet (default: a small DenseNet-BC on the bundled digits)",
                       description="Train a DenseNet. With no options: DenseNet-BC (depth 16, k 12) on the bundled "
                                   "UCI digits for 30 epochs, about a minute on 2 cores.")
    _add_data_args(p)
    add_model_args(p)
    p.add_argument("--epochs", type=int, default=None, help="default 30 on digits, 300 otherwise")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9, help="Nesterov momentum (0 disables)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--schedule", choices=["step", "cosine"], default="step",
                   help="step: lr / 10 at 50%% and 75%% of the epochs (the paper); cosine: cosine annealing")
    p.add_argument("--drop-rate", type=float, default=0.0, help="dropout after each dense layer")
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true", default=None,
                     help="4-pixel zero-pad random crop + horizontal flip (default on for CIFAR and npz)")
    aug.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--out", default=None, help="output folder (default runs/DATASET)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT", help="continue from a checkpoint.npz")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel over MPI ranks: mpiexec -n P python -m mpi4py -m numpy_densenet train "
                        "--distributed ...; --batch-size is the global batch (needs numpy_densenet[mpi])")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                   help="with --distributed: per-rank BatchNorm statistics (PyTorch DDP's default) instead of "
                        "the whole batch's")
    p.set_defaults(func=lambda args, parser=p: _train_entry(args, parser), model=None)

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix of saved weights")
    p.add_argument("--weights", required=True, help="best.npz / checkpoint.npz from train, or converted weights")
    _add_data_args(p)
    add_model_args(p, default=None)
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images (.npy arrays, or PNG files when Pillow is installed)")
    p.add_argument("--weights", required=True, help="best.npz / checkpoint.npz from train (they describe the model "
                                                     "and the normalisation)")
    p.add_argument("inputs", nargs="+",
                   help=".npy files: (N, C, H, W), (N, H, W, C), (C, H, W), (H, W, C), (H, W), or (N, H, W) for "
                        "grey models; integer arrays are 8-bit pixels 0..255, float arrays are in [0, 1]. "
                        "Or .png images (needs Pillow)")
    p.add_argument("--top", type=positive_int, default=1, help="show the top K classes")
    p.set_defaults(func=cmd_predict)


def _add_data_args(p):
    p.add_argument("--dataset", choices=DATASETS, default="digits", help="default: the bundled UCI digits")
    p.add_argument("--data-dir", default=None, help="folder with the dataset's official files (an .npz path for npz)")


_OPTION_FIELDS = {"dataset": "dataset", "data_dir": "data_dir", "model": "model", "depth": "depth",
                  "growth_rate": "growth_rate", "drop_rate": "drop_rate", "epochs": "epochs",
                  "batch_size": "batch_size", "lr": "lr", "momentum": "momentum", "weight_decay": "weight_decay",
                  "schedule": "schedule", "augment": "augment", "seed": "seed", "dtype": "dtype", "out": "out"}


def cmd_train(args, parser):
    """Train; with --resume the run's options come from the checkpoint (options given again must match)."""
    import json

    from .cli import UserError
    from .io import WeightsFileError, load_npz
    from .train import TrainConfig, TrainingError, train
    try:
        if args.resume:
            arrays = load_npz(args.resume, what="checkpoint")
            if "_train_config" not in arrays:
                raise WeightsFileError(f"checkpoint {args.resume!r} is not a training checkpoint")
            cfg = TrainConfig(**json.loads(str(arrays["_train_config"][()])))
            cfg.out = os.path.dirname(os.path.abspath(args.resume))
            for option, field in _OPTION_FIELDS.items():          # options given on this command line
                value = getattr(args, option)
                if value != parser.get_default(option):
                    setattr(cfg, field, value)
        else:
            cfg = TrainConfig(dataset=args.dataset, data_dir=args.data_dir, model=args.model or "densenet_bc",
                              depth=args.depth, growth_rate=args.growth_rate, drop_rate=args.drop_rate,
                              epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                              weight_decay=args.weight_decay, schedule=args.schedule, augment=args.augment,
                              seed=args.seed, dtype=args.dtype, out=args.out or os.path.join("runs", args.dataset))
        rank = getattr(args, "rank", None)                         # --distributed: this MPI rank's setup
        train(cfg, resume=args.resume, log=rank.log if rank else lambda line: print(line, flush=True),
              **(dict(distributed=rank.options) if rank else {}))
    except (TrainingError, WeightsFileError) as e:
        raise UserError(str(e)) from None
    return 0


def _train_entry(args, parser):
    """cmd_train, on every MPI rank with --distributed (numpy_densenet.distributed.train_entry)."""
    from .cli import UserError
    if not args.distributed:
        if not args.sync_bn:
            raise UserError("--no-sync-bn applies to --distributed training only")
        return cmd_train(args, parser)
    from .distributed import get_comm, train_entry
    from .io import WeightsFileError
    try:
        get_comm()
    except ImportError as e:
        raise UserError(str(e)) from None
    return train_entry(cmd_train, args, parser, expected=(UserError, WeightsFileError))


def _load_for_eval(args, dataset):
    from .cli import UserError, build_model
    from .data import channel_stats
    from .io import load_npz
    from .train import load_model_file
    arrays_have_config = "_model_config" in load_npz(args.weights)
    if arrays_have_config:
        model, meta = load_model_file(args.weights)
        return model, meta["mean"], meta["std"]
    if not args.model:
        raise UserError(f"{args.weights} has no model description: give --model (and --depth / --growth-rate)")
    depth = args.depth
    if depth is None and dataset.name == "digits" and args.model in ("densenet_bc", "densenet"):
        depth = 16                                              # train's default on the small digits
    model = build_model(args.model, depth, args.growth_rate, num_classes=dataset.num_classes,
                        in_channels=dataset.in_channels)
    from .io import load_weights
    load_weights(model, args.weights)
    mean, std = channel_stats(dataset.x_train)
    return model, mean, std


def _trained_on(path):
    """The dataset a weights file written by ``train`` was trained on, or None."""
    import json

    from .io import load_npz
    arrays = load_npz(path)
    if "_train_config" not in arrays:
        return None
    return json.loads(str(arrays["_train_config"][()])).get("dataset")


def cmd_evaluate(args):
    from .cli import UserError
    from .data import DatasetError, load_dataset
    from .train import evaluate
    try:
        data = load_dataset(args.dataset, args.data_dir)
    except DatasetError as e:
        raise UserError(str(e)) from None
    model, mean, std = _load_for_eval(args, data)
    trained_on = _trained_on(args.weights)
    if trained_on and trained_on != data.name:
        print(f"note: {args.weights} was trained on {trained_on}; evaluating it on {data.name}")
    if model.config["num_classes"] != data.num_classes or model.in_channels != data.in_channels:
        raise UserError(f"{args.weights} is a model for {model.config['num_classes']} classes of "
                        f"{model.in_channels}-channel images; {data.name} has {data.num_classes} classes of "
                        f"{data.in_channels}-channel images")
    r = evaluate(model, data.x_test, data.y_test, batch_size=args.batch_size, mean=mean, std=std)
    print(f"{data.name} test set: {len(data.y_test)} images, accuracy {r['acc']:.4f}, loss {r['loss']:.4f}")
    names = data.classes
    width = max(len(n) for n in names)
    print("\nper-class accuracy:")
    for name, acc, count in zip(names, r["per_class_acc"], r["confusion"].sum(axis=1)):
        print(f"  {name.ljust(width)}  {acc:.4f}  ({count} images)")
    print("\nconfusion matrix (rows: true class, columns: predicted):")
    cm = r["confusion"]
    cw = max(len(str(cm.max())), 3)
    short = [n[:cw] for n in names]
    print(" " * (width + 2) + " ".join(s.rjust(cw) for s in short))
    for name, row in zip(names, cm):
        print(f"  {name.ljust(width)}" + " ".join(str(v).rjust(cw) for v in row))
    return 0


def _read_inputs(paths, in_channels):
    """Images from .npy / .png files as float (N, C, H, W) in [0, 1] units, with a label per image."""
    from .cli import UserError
    images, labels = [], []
    for path in paths:
        if path.lower().endswith(".npy"):
            try:
                a = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise UserError(f"cannot read {path} as a .npy array: {e}") from None
            if a.dtype.kind not in "uif":
                raise UserError(f"{path}: expected a numeric image array, got dtype {a.dtype}")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise UserError(f"{path}: the array holds NaN or infinite values")
            shape = a.shape
            a = a / 255.0 if a.dtype.kind in "ui" else a.astype(np.float64)     # 8-bit pixels, or [0, 1]
            if a.ndim == 2:                                   # (H, W)
                a = a[None, None]
            elif a.ndim == 3 and a.shape[0] == in_channels:   # (C, H, W)
                a = a[None]
            elif a.ndim == 3 and a.shape[2] == in_channels:   # (H, W, C)
                a = a.transpose(2, 0, 1)[None]
            elif a.ndim == 3 and in_channels == 1:            # (N, H, W): a stack of grey images
                a = a[:, None]
            elif a.ndim == 4 and a.shape[1] != in_channels and a.shape[3] == in_channels:
                a = a.transpose(0, 3, 1, 2)                   # (N, H, W, C)
            if a.ndim != 4 or a.shape[1] != in_channels:
                raise UserError(f"{path}: expected images with {in_channels} channel(s) as (N, C, H, W), "
                                f"(N, H, W, C), (C, H, W), (H, W, C), (H, W)"
                                f"{' or (N, H, W)' if in_channels == 1 else ''}; the file holds shape {shape}")
            images.append(a)
            labels += [f"{path}[{i}]" for i in range(len(a))] if len(a) > 1 else [path]
        elif path.lower().endswith(".png"):
            try:
                from PIL import Image
            except ImportError:
                raise UserError('reading PNG images needs Pillow: pip install "numpy_densenet[images]"') from None
            try:
                img = Image.open(path).convert("L" if in_channels == 1 else "RGB")
            except OSError as e:
                raise UserError(f"cannot read {path} as an image: {e}") from None
            a = np.asarray(img, dtype=np.float64) / 255.0
            images.append(a[None, None] if a.ndim == 2 else a.transpose(2, 0, 1)[None])
            labels.append(path)
        else:
            raise UserError(f"{path}: inputs must be .npy arrays or .png images")
    shapes = {im.shape[2:] for im in images}
    if len(shapes) > 1:
        raise UserError(f"all inputs must have the same image size, got {sorted(shapes)}")
    return np.concatenate(images), labels


def cmd_predict(args):
    from .train import load_model_file
    model, meta = load_model_file(args.weights)
    x, labels = _read_inputs(args.inputs, model.in_channels)
    mean = meta["mean"] if meta["mean"] is not None else np.zeros(model.in_channels)
    std = meta["std"] if meta["std"] is not None else np.ones(model.in_channels)
    x = ((x - mean[None, :, None, None]) / std[None, :, None, None]).astype(model.dtype)
    from .cli import UserError
    from .nn import no_grad
    model.eval()
    try:
        with no_grad():
            logits = model(x).astype(np.float64)
    except ValueError as e:
        raise UserError(f"the model cannot classify {x.shape[2]}x{x.shape[3]} images: {e}") from None
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    classes = meta["classes"] or [str(k) for k in range(probs.shape[1])]
    top = max(1, min(args.top, probs.shape[1]))
    for label, p in zip(labels, probs):
        best = np.argsort(p)[::-1][:top]
        print(f"{label}: " + ", ".join(f"{classes[k]} ({p[k]:.3f})" for k in best))
    return 0
