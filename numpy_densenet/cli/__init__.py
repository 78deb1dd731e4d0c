"""The ``numpy-densenet`` command line.

One module per group of commands, each with a ``register(subparsers)`` function:

* :mod:`.main` - the parser and :func:`main`, the entry point of the console script and of
  ``python -m numpy_densenet``;
* :mod:`.common` - :class:`UserError` (one paragraph on stderr, exit status 2), argparse types, model options;
* :mod:`.train` - ``train``, ``evaluate``;
* :mod:`.distributed` - ``train --distributed``: each MPI rank's setup, and one rank's failure ending the job;
* :mod:`.predict` - ``predict``;
* :mod:`.study` - ``inspect``, ``explain``;
* :mod:`.gradcheck` - ``gradcheck`` (its case lists are :mod:`numpy_densenet.gradcheck.cases`);
* :mod:`.models` - ``summary``, ``convert``.

The commands parse arguments and print; what they do lives in the library.
"""
from .common import UserError, add_model_args, build_model, nonneg_int, positive_int
from .main import main, make_parser

__all__ = ["main", "make_parser", "UserError", "add_model_args", "build_model", "nonneg_int", "positive_int"]
