"""The ``numpy-densenet`` command line (also ``python -m numpy_densenet``): the parser and the entry point."""
from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings

from .. import __version__
from ..data import DatasetError
from ..data.files import FileFormatError
from ..io import WeightsFileError, describe_os_error
from ..training import TrainingError
from ..training.stopping import SIGPIPE
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


#: NumPy's floating-point warnings (overflow, invalid value, divide by zero): a diverged run or unusable weights
NUMPY_FLOAT_WARNINGS = r"(overflow|invalid value|divide by zero) encountered"


def main(argv=None):
    """Run ``numpy-densenet ARGV``; returns the exit status.

    0 on success, 1 for a failed gradient check, 2 for any error (a bad option, a file that cannot be read or
    written, malformed contents, a full disk, not enough memory, stdout that cannot be written), printed as one
    line on stderr naming the file or option; 128 + the signal's number after a stop by a signal (130 for
    Ctrl-C, 143 for SIGTERM, 129 for SIGHUP) and 141 (SIGPIPE's) when stdout is a closed pipe.
    """
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:                  # --help, --version, or a usage error already printed by argparse
        return e.code
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    stdout = sys.stdout
    if stdout is not None:
        sys.stdout = NamedStream(stdout, "stdout")      # a failed write names stdout
    try:
        with warnings.catch_warnings():                 # non-finite values are checked and reported in words
            warnings.filterwarnings("ignore", NUMPY_FLOAT_WARNINGS, RuntimeWarning)
            code = args.func(args)
        if sys.stdout is not None:
            sys.stdout.flush()
        return code
    except BaseException as e:  # noqa: BLE001 - every ending in one line and an exit status
        return _ending(args.command, e)
    finally:
        sys.stdout = stdout


def _ending(command, e):
    """Print the one line that ends a failed run (none for a quiet MPI rank) and return its exit status."""
    def error(message):
        if not getattr(e, "quiet", False):
            message = " ".join(str(message).split())                   # one line
            print(f"numpy-densenet {command}: error: {message}", file=sys.stderr)
        return 2

    if isinstance(e, (UserError, WeightsFileError, DatasetError, TrainingError, FileFormatError)):
        return error(e)
    if isinstance(e, OSError) and e.filename == "stdout":
        _silence(sys.stdout)                 # the interpreter's last flush must not fail again
        if e.errno == errno.EPIPE:           # output piped into e.g. `head`: end quietly, as SIGPIPE would
            return 128 + SIGPIPE
        return error(f"cannot write to stdout: {e.strerror or e} ({errno.errorcode.get(e.errno, e.errno)})")
    if isinstance(e, OSError):
        return error(describe_os_error(e))
    if isinstance(e, MemoryError):
        return error("out of memory: the data, the model or the batch is too large for this machine; use a smaller "
                     "--batch-size, model or data set")
    if isinstance(e, KeyboardInterrupt):
        if not getattr(e, "quiet", False):
            print(f"numpy-densenet {command}: {' '.join(str(e).split()) or 'interrupted'}", file=sys.stderr)
        return getattr(e, "exit_status", 130)
    raise e


def _silence(stream):
    """Point the file descriptor behind ``stream`` at /dev/null (its pending output is dropped there)."""
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, AttributeError, ValueError):        # not a file (a StringIO): nothing to do
        pass


class NamedStream:
    """A text stream whose write and flush failures are OSErrors naming it (``"stdout"``), so that a full disk
    or a closed pipe behind stdout is told apart from a file's error."""

    def __init__(self, stream, name):
        self._stream, self._name = stream, name

    def __getattr__(self, attr):
        return getattr(self._stream, attr)

    def write(self, text):
        return self._named(self._stream.write, text)

    def flush(self):
        return self._named(self._stream.flush)

    def _named(self, call, *args):
        try:
            return call(*args)
        except OSError as e:
            if e.filename is not None or e.errno is None:
                raise
            raise type(e)(e.errno, e.strerror, self._name) from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
