"""Training and evaluation: the loop behind ``numpy-densenet train`` / ``evaluate``, usable from Python.

A run is described by a :class:`TrainConfig`; :func:`train` runs it, writing to ``config.out``:

* ``metrics.jsonl`` - one JSON object per epoch (epoch, lr, train_loss, train_acc, val_loss, val_acc, test_loss,
  test_acc, seconds; val_* are null without a validation set);
* ``checkpoint.npz`` - the latest state, written atomically after every epoch (and on Ctrl-C): weights, BatchNorm
  buffers, optimizer momentum, schedule position, RNG states, epoch and step - plain arrays, no pickle;
* ``best.npz`` - the weights of the epoch with the best *validation* accuracy so far (ties: the lower validation
  loss, then the earlier epoch), with the model config and the normalisation statistics, so ``evaluate``/``predict``
  can rebuild the model from the file alone. The validation set is the data set's official one or a stratified,
  seeded ``val_fraction`` of the training images; the test set never chooses anything. With ``val_fraction=0``
  there is nothing to select on and ``best.npz`` holds the last epoch's weights;
* ``curves.png`` - the learning curves, when matplotlib is installed.

Resuming from a checkpoint continues the run so that it ends bit-identical to an uninterrupted one.

The package, in the order a run uses it:

* :mod:`.options` - :class:`TrainConfig`, its defaults and checks;
* :mod:`.steps` - the model, one training step, evaluation;
* :mod:`.run` - :class:`Run`, the state of a run, one epoch at a time, and its checkpoint;
* :mod:`.folder` - the locked output folder, and writes that never damage the last checkpoint;
* :mod:`.stopping` - signals (SIGINT, SIGTERM, SIGHUP) and a closed output as a clean stop: :class:`RunInterrupted`;
* :mod:`.report` - the progress bar, ``metrics.jsonl``, the closing line and the curves;
* :mod:`.loop` - :func:`train`, the whole run;
* :mod:`.distributed` - data-parallel training over MPI with synchronised BatchNorm.
"""
from .folder import OutputError, OutputFolder
from .loop import train
from .options import TrainConfig, TrainingError
from .report import Progress, closing_line, plot_curves, write_metrics
from .run import Run
from .steps import Diverged, evaluate, make_model, train_step
from .stopping import RunInterrupted

__all__ = ["TrainConfig", "TrainingError", "OutputError", "Diverged", "RunInterrupted", "train", "evaluate",
           "train_step", "Run", "OutputFolder", "Progress", "closing_line", "plot_curves", "write_metrics", "make_model"]
