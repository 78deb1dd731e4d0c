"""Gradient verification for any Module, from one layer up to a whole DenseNet (:func:`gradcheck`), and for
anyone's code: a NumPy forward/backward pair (:func:`check_backward`), a PyTorch function or module
(:func:`check_torch`), a JAX function (:func:`check_jax`). One engine, several front doors:

* :mod:`.engine` - :func:`gradcheck`: what is probed, in which mode, and the protocol checks;
* :mod:`.probe` - the probe's interface; the float64 copy of the module, evaluated with its state reset; the
  finite-difference steps;
* :mod:`.functions` - :func:`check_backward`, and the probe of any function of arrays;
* :mod:`.frameworks` - :func:`check_torch` and :func:`check_jax` (torch and jax imported only when called);
* :mod:`.locate` - ``gradcheck(model, x, locate=True)``: the innermost submodules whose own backward fails;
* :mod:`.strategies` - hypothesis strategies for inputs that break naive checkers (imported on its own);
* :mod:`.probing` - probes along coordinates and random directions, the kink hull's tie-breaking points;
* :mod:`.judge` - one probe's verdict (Richardson, kinks) and a tensor's row;
* :mod:`.float32` - the float32 rows;
* :mod:`.report` - :class:`GradcheckResult`, its rows and its table;
* :mod:`.parallel` - the probes on any ``concurrent.futures`` executor;
* :mod:`.cases` - the layer and model cases ``numpy-densenet gradcheck`` checks, from covering designs over each
  layer's options.
"""
import inspect
import sys
import types

from .cases import Case, large_cases, layer_cases, model_cases, pairwise, run_case
from .engine import MODES, gradcheck
from .frameworks import check_jax, check_torch
from .functions import check_backward
from .parallel import executor_for, one_thread
from .report import GradcheckError, GradcheckResult, TensorReport

__all__ = ["gradcheck", "check_backward", "check_torch", "check_jax", "GradcheckResult", "GradcheckError",
           "TensorReport", "MODES", "Case", "pairwise", "layer_cases", "large_cases", "model_cases", "run_case",
           "executor_for", "one_thread"]


class _CallablePackage(types.ModuleType):
    """``numpy_densenet.gradcheck`` is this package *and* the function: ``numpy_densenet.gradcheck(model, x)``
    calls :func:`gradcheck`, while ``numpy_densenet.gradcheck.check_torch`` and the submodules stay reachable."""

    def __call__(self, *args, **kwargs):
        __tracebackhide__ = True                 # pytest shows the report, not this frame
        return gradcheck(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
__signature__ = inspect.signature(gradcheck)
