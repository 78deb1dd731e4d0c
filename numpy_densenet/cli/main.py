"""The ``numpy-densenet`` command line (also ``python -m numpy_densenet``): the parser and the entry point."""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..data import DatasetError
from ..data.files import FileFormatError
from ..io import WeightsFileError, describe_os_error
from ..training import TrainingError
from . import gradcheck, models, predict, study, train
from .common import UserError


def make_parser():
    """The ``numpy-densenet`` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="numpy-densenet",
                                     description="A DenseNet in pure NumPy with verified hand-written backward passes.")
    parser.add_argument("--version", action="version", version=f"numpy_densenet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (gradcheck, models, train, predict, study):
        module.register(sub)
    return parser


def main(argv=None):
    """Run ``numpy-densenet ARGV``; returns the exit status.

    0 on success, 1 for a failed gradient check, 2 for any error (a bad option, a file that cannot be read or
    written, malformed contents, a full disk, not enough memory), printed as one line on stderr naming the
    file or option, 130 after Ctrl-C.
    """
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:                  # --help, --version, or a usage error already printed by argparse
        return e.code
    if not getattr(args, "func", None):
        parser.print_help()
        return 2

    def error(message):
        message = " ".join(str(message).split())                       # one line
        print(f"numpy-densenet {args.command}: error: {message}", file=sys.stderr)
        return 2

    try:
        return args.func(args)
    except (UserError, WeightsFileError, DatasetError, TrainingError, FileFormatError) as e:
        return error(e)
    except OSError as e:
        if isinstance(e, BrokenPipeError):   # output piped into e.g. `head`
            sys.stderr.close()
            return 0
        return error(describe_os_error(e))
    except MemoryError:
        return error("out of memory: the data, the model or the batch is too large for this machine; use a smaller "
                     "--batch-size, model or data set")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
