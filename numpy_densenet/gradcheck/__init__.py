"""Gradient verification for any Module, from one layer up to a whole DenseNet: :func:`gradcheck`.

* :mod:`.engine` - :func:`gradcheck`: what is probed, in which mode, and the protocol checks;
* :mod:`.probe` - the float64 copy of the module, evaluated with its state reset, and the finite-difference steps;
* :mod:`.probing` - probes along coordinates and random directions, the kink hull's tie-breaking points;
* :mod:`.judge` - one probe's verdict (Richardson, kinks) and a tensor's row;
* :mod:`.float32` - the float32 rows;
* :mod:`.report` - :class:`GradcheckResult`, its rows and its table;
* :mod:`.parallel` - the probes on any ``concurrent.futures`` executor;
* :mod:`.cases` - the layer and model cases ``numpy-densenet gradcheck`` checks, from covering designs over each
  layer's options.
"""
from .cases import Case, large_cases, layer_cases, model_cases, pairwise, run_case
from .engine import MODES, gradcheck
from .parallel import executor_for, one_thread
from .report import GradcheckError, GradcheckResult, TensorReport

__all__ = ["gradcheck", "GradcheckResult", "GradcheckError", "TensorReport", "MODES", "Case", "pairwise", "layer_cases",
           "large_cases", "model_cases", "run_case", "executor_for", "one_thread"]
