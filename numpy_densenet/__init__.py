"""numpy_densenet: a from-scratch DenseNet in pure NumPy whose every backward pass is hand-written and verified."""
from . import nn
from .gradcheck import GradcheckError, GradcheckResult, gradcheck

__version__ = "0.1.0"

__all__ = ["nn", "gradcheck", "GradcheckResult", "GradcheckError", "__version__"]
