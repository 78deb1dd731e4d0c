"""numpy_densenet: a from-scratch DenseNet in pure NumPy whose every backward pass is hand-written and verified."""
from . import fast, nn
from .fast.threads import get_num_threads, set_num_threads   # the fast tier's threads, as torch's
from .zoo import DenseNet, densenet, densenet121, densenet161, densenet169, densenet201, densenet_bc
from . import gradcheck                                      # the package, callable as gradcheck(module, x)
from .gradcheck import GradcheckError, GradcheckResult, check_backward

__version__ = "0.1.0"

__all__ = ["DenseNet", "densenet", "densenet121", "densenet161", "densenet169", "densenet201", "densenet_bc",
           "nn", "fast", "get_num_threads", "set_num_threads", "gradcheck", "check_backward", "GradcheckResult",
           "GradcheckError", "__version__"]
