"""The ``numpy-densenet`` command line.

One module per group of commands, each with a ``register(subparsers)`` function:

* :mod:`.main` - the parser and :func:`main`, the entry point of the console script and of
  ``python -m numpy_densenet``;
* :mod:`.common` - :class:`UserError` (one paragraph on stderr, exit status 2), argparse types, model options;
* :mod:`.train` - ``train``, ``evaluate``, ``predict``;
* :mod:`.study` - ``inspect``, ``explain``;
* :mod:`.gradcheck` - ``gradcheck`` and its case lists;
* :mod:`.models` - ``summary``, ``convert``.
"""
from .common import UserError, add_model_args, build_model, nonneg_int, positive_int
from .main import main, make_parser

__all__ = ["main", "make_parser", "UserError", "add_model_args", "build_model", "nonneg_int", "positive_int"]
