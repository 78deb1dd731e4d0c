"""``numpy-densenet train`` and ``evaluate``."""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ..data import DATASET_NAMES, DatasetError, channel_stats, load_dataset
from ..hub import pixel_range_warning
from ..io import WeightsFileError, json_entry, load_model_file, load_npz, load_weights
from ..training import TrainConfig, TrainingError, evaluate, train
from ..training.options import config_from_checkpoint
from ..training.run import WHERE_FIELDS
from ..zoo import architecture
from .common import UserError, add_model_args, build_model, finite_float, nonneg_int, positive_int
from .distributed import train_entry


def register(sub):
    """Add the ``train`` and ``evaluate`` subcommands."""
    p = sub.add_parser("train", help="train a DenseNet (default: a small DenseNet-BC on the bundled digits)",
                       description="Train a DenseNet. With no options: DenseNet-BC (depth 16, k 12) on the bundled "
                                   "UCI digits for 30 epochs, about a minute on 2 cores. The best epoch is chosen on "
                                   "a validation set (--val-fraction), never on the test set; an --out folder that "
                                   "already holds a run is refused unless --resume or --overwrite is given.",
                       argument_default=argparse.SUPPRESS)    # an option absent from args was not given
    p.add_argument("--dataset", choices=DATASET_NAMES, help="data set (default: the bundled UCI digits)")
    p.add_argument("--data-dir", help="folder with the data set's official files (the .npz file itself for npz); "
                                      "not needed for digits")
    add_model_args(p, given_only=True)
    _add_recipe_args(p)
    p.add_argument("--seed", type=nonneg_int,
                   help="seed of the initialisation, the batch order, augmentation, dropout and the validation "
                        "split (default 0)")
    p.add_argument("--dtype", choices=["float32", "float64"],
                   help="precision of weights and computation (default float32)")
    _add_run_args(p)
    p.set_defaults(func=_train_entry)

    p = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix of saved weights",
                       description="Evaluate saved weights on a data set's test split: accuracy, loss, per-class "
                                   "accuracy and the confusion matrix.")
    p.add_argument("--weights", required=True, help="best.npz / checkpoint.npz from train, or converted weights")
    _add_data_args(p)
    add_model_args(p, default=None)
    p.add_argument("--batch-size", type=positive_int, default=256, help="images per forward pass (default 256)")
    p.set_defaults(func=cmd_evaluate)


def _add_recipe_args(p):
    p.add_argument("--epochs", type=positive_int, help="epochs (default 30 on digits, 300 otherwise)")
    p.add_argument("--batch-size", type=positive_int, help="images per step (default 64)")
    p.add_argument("--lr", type=finite_float, help="initial learning rate (default 0.1)")
    p.add_argument("--momentum", type=finite_float, help="Nesterov momentum in [0, 1) (default 0.9; 0 disables)")
    p.add_argument("--weight-decay", type=finite_float, help="L2 weight decay (default 1e-4)")
    p.add_argument("--schedule", choices=["step", "cosine"],
                   help="step (default): lr / 10 at 50%% and 75%% of the epochs (the paper); cosine: cosine "
                        "annealing")
    p.add_argument("--drop-rate", type=finite_float, help="dropout after each dense layer, in [0, 1) (default 0)")
    aug = p.add_mutually_exclusive_group()
    aug.add_argument("--augment", dest="augment", action="store_true",
                     help="4-pixel zero-pad random crop + horizontal flip (default on for CIFAR and npz, off for "
                          "digits and MNIST); for MNIST and Fashion-MNIST a 2-pixel one and no flip")
    aug.add_argument("--no-augment", dest="augment", action="store_false", help="no data augmentation")
    p.add_argument("--val-fraction", type=_fraction, metavar="F",
                   help="share of the training images held out (stratified, seeded by --seed) to choose the best "
                        "epoch on; data sets with an official validation split use it instead; 0 turns "
                        "validation off (default 0.1)")


def _add_run_args(p):
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


def _fraction(text):
    """argparse type for --val-fraction: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) (0 turns validation off), got {value}")
    return value


def _add_data_args(p):
    p.add_argument("--dataset", choices=DATASET_NAMES, default="digits", help="data set (default: the bundled UCI digits)")
    p.add_argument("--data-dir", default=None,
                   help="folder with the data set's official files (the .npz file itself for npz); not needed for "
                        "digits")


OPTION_FIELDS = ("dataset", "data_dir", "model", "depth", "growth_rate", "drop_rate", "epochs", "batch_size", "lr",
                 "momentum", "weight_decay", "schedule", "augment", "seed", "dtype", "out", "val_fraction")


def _flag(field, value=None):
    if field == "augment" and value is not None:
        return "--augment" if value else "--no-augment"
    return "--" + field.replace("_", "-") + ("" if value is None else f" {value}")


def cmd_train(args):
    """Train; with --resume the run's options come from the checkpoint (options given again must match)."""
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
            saved = config_from_checkpoint(arrays, resume)
            conflicts = [f"{_flag(k, v)} (the checkpoint has {_flag(k, saved[k])})" for k, v in given.items()
                         if k not in WHERE_FIELDS and v != saved[k]]
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
        if getattr(e, "every_rank", False):     # MPI ranks that disagree: raised (and printed by rank 0) alike
            raise
        raise UserError(str(e)) from None
    return 0


def _train_entry(args):
    """cmd_train, on every MPI rank with --distributed (numpy_densenet.cli.distributed.train_entry)."""
    if not getattr(args, "distributed", False) and not getattr(args, "sync_bn", True):
        raise UserError("--no-sync-bn applies to --distributed training only")
    try:
        return train_entry(cmd_train, args, expected=(UserError, WeightsFileError, TrainingError))
    except ImportError as e:
        raise UserError(str(e)) from None


def _load_for_eval(args, dataset):
    """(model, mean, std, trained_on, inputs) for ``evaluate``: from the file's own description (options that
    contradict it refused), else from --model."""
    keys = load_npz(args.weights, keys={"_model_config", "_train_config"})
    if "_model_config" in keys:
        model, meta = load_model_file(args.weights)
        trained = json_entry(keys, "_train_config", args.weights, kind=dict) if "_train_config" in keys else {}
        _refuse_conflicting_options(args, model.config, trained)
        return model, meta["mean"], meta["std"], trained.get("dataset"), meta["inputs"]
    if not args.model:
        raise UserError(f"{args.weights} has no model description: give --model (and --depth / --growth-rate)")
    model = build_model(args.model, args.depth, args.growth_rate, num_classes=dataset.num_classes,
                        in_channels=dataset.in_channels, dataset=dataset.name)   # train's default depth there
    load_weights(model, args.weights)
    mean, std = channel_stats(dataset.x_train)
    return model, mean, std, None, None


def _refuse_conflicting_options(args, config, trained):
    """--model / --depth / --growth-rate given with a file that describes its model must describe the same one
    (the file wins otherwise, silently): a UserError naming both."""
    given = [f for f in ("model", "depth", "growth_rate") if getattr(args, f, None) is not None]
    if not given:
        return
    options = " ".join(_flag(f, getattr(args, f)) for f in given)
    held = (f"DenseNet(growth_rate={config['growth_rate']}, block_config={config['block_config']}, "
            f"num_init_features={config['num_init_features']}, bn_size={config['bn_size']}, stem={config['stem']!r})")
    name = args.model or trained.get("model")
    if name is None:
        raise UserError(f"{args.weights} describes its own model, {held}; {options} means nothing without --model: "
                        f"drop it")
    try:
        expected = architecture(name, args.depth if args.depth is not None else trained.get("depth"),
                                args.growth_rate if args.growth_rate is not None else config["growth_rate"])
    except ValueError as e:
        raise UserError(str(e)) from None
    if any(config[k] != v for k, v in expected.items()):
        raise UserError(f"{options} describes DenseNet(growth_rate={expected['growth_rate']}, block_config="
                        f"{expected['block_config']}, ...), but {args.weights} holds {held}: drop {options} (the "
                        f"file describes its own model) or give the weights you meant")


MAX_PRINTED_CLASSES = 100     # evaluate prints the confusion matrix up to this many classes


def cmd_evaluate(args):
    """Accuracy, loss, per-class accuracy and the confusion matrix of saved weights on a test split, after
    predict's checks: the model's classes, channels and training image size, and the pixel range."""
    try:
        data = load_dataset(args.dataset, args.data_dir)
    except DatasetError as e:
        raise UserError(str(e)) from None
    model, mean, std, trained_on, inputs = _load_for_eval(args, data)
    if trained_on and trained_on != data.name:
        print(f"note: {args.weights} was trained on {trained_on}; evaluating it on {data.name}")
    if model.config["num_classes"] != data.num_classes or model.in_channels != data.in_channels:
        raise UserError(f"{args.weights} is a model for {model.config['num_classes']} classes of "
                        f"{model.in_channels}-channel images; {data.name} has {data.num_classes} classes of "
                        f"{data.in_channels}-channel images")
    _check_test_images(args.weights, data, inputs)
    try:
        r = evaluate(model, data.x_test, data.y_test, batch_size=args.batch_size, mean=mean, std=std)
    except ValueError as e:
        raise UserError(f"{args.weights}: the model cannot take the {data.name} test images "
                        f"({data.image_size[0]}x{data.image_size[1]}): {e}") from None
    print(f"{data.name} test set: {len(data.y_test)} images, accuracy {r['acc']:.4f}, loss {r['loss']:.4f}")
    _print_per_class(data.classes, r)
    return 0


def _check_test_images(weights, data, inputs):
    """predict's checks on a data set's test images for a model from train (``inputs``: its ``_inputs``): the
    training image size (refused otherwise) and the pixel range (a warning)."""
    if inputs is None:
        return
    size = tuple(inputs["image_size"])
    if data.image_size != size:
        raise UserError(f"{weights} is a model trained on {size[0]}x{size[1]} images; the {data.name} test images "
                        f"are {data.image_size[0]}x{data.image_size[1]}: evaluate it on data of its image size")
    x = data.x_test
    scale = 255.0 if x.dtype.kind in "ui" else 1.0
    warning = pixel_range_warning(np.array([x.min(), x.max()]) / scale, f"the {data.name} test set",
                                  inputs["pixel_range"])
    if warning:
        print(warning, file=sys.stderr)


def _print_per_class(names, r):
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
        return
    print("\nconfusion matrix (rows: true class, columns: predicted):")
    cw = max(len(str(cm.max())), 3)
    short = [n[:cw] for n in names]
    print(" " * (width + 2) + " ".join(s.rjust(cw) for s in short))
    for name, row in zip(names, cm):
        print(f"  {name.ljust(width)}" + " ".join(str(v).rjust(cw) for v in row))
