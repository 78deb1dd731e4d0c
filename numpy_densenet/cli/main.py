"""The ``numpy-densenet`` command line (also ``python -m numpy_densenet``): the parser and the entry point."""
from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import gradcheck, models, study, train
from .common import UserError


def make_parser():
    """The ``numpy-densenet`` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(prog="numpy-densenet",
                                     description="A DenseNet in pure NumPy with verified hand-written backward passes.")
    parser.add_argument("--version", action="version", version=f"numpy_densenet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (gradcheck, models, train, study):
        module.register(sub)
    return parser


def main(argv=None):
    """Run ``numpy-densenet ARGV``; returns the exit status (0, 1 for a failed check, 2 for an error, 130)."""
    from ..io import WeightsFileError
    parser = make_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:                  # --help, --version, or a usage error already printed by argparse
        return e.code
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (UserError, WeightsFileError) as e:
        print(f"numpy-densenet {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:          # output piped into e.g. `head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
