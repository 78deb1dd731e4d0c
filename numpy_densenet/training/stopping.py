"""How a run stops early and cleanly: a signal (SIGINT, SIGTERM, SIGHUP) or an output that can no longer be
written (a closed pipe, a full or vanished terminal) becomes a *stop request*. The loop finishes the current
step, saves a checkpoint from which ``--resume`` continues bit-identically, releases the output folder and
raises :class:`RunInterrupted`, whose exit status is 128 + the signal's number (130 for Ctrl-C, 143 for
SIGTERM, 129 for SIGHUP, 141 for a closed pipe), as a process killed by that signal would report.

Before training starts (data loading, model building) nothing needs saving: a signal then raises at once, and
the output folder is released on the way out.
"""
from __future__ import annotations

import errno
import signal
import threading
from contextlib import contextmanager

from .folder import OutputError

__all__ = ["RunInterrupted", "StopRequest", "STOP_SIGNALS", "SIGPIPE", "signal_name"]

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
SIGPIPE = getattr(signal, "SIGPIPE", 13)


def signal_name(signum):
    """'SIGTERM' for 15."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by a signal, or by a closed output (``signum`` = SIGPIPE), once its checkpoint was saved.

    A subclass of ``KeyboardInterrupt``, so that code catching Ctrl-C catches every stop. The message says
    where the run stopped and how to continue it.

    Attributes
    ----------
    signum : int
    exit_status : int
        128 + ``signum``.
    every_rank : bool
        Under MPI: raised on every rank after the same step (the checkpoint saved), not on one rank alone.
    quiet : bool
        Nothing to print on this process (an MPI rank other than 0).
    """

    def __init__(self, signum, message=""):
        super().__init__(message)
        self.signum, self.every_rank, self.quiet = signum, False, False

    @property
    def exit_status(self):
        return 128 + self.signum


class StopRequest:
    """The first reason to stop a run: a signal number, and an error to raise instead for an output that
    cannot be written (not a closed pipe).

    :meth:`installed` routes SIGINT, SIGTERM and SIGHUP here (on the main thread only); outside
    :meth:`deferred` a signal raises :class:`RunInterrupted` at once, inside it is only recorded, for the loop
    to act on after the current step. :meth:`guarded` wraps a ``log`` function so that a failed write becomes a
    request too.
    """

    def __init__(self):
        self.signum = None
        self.error = None
        self.deferring = False
        self.output_closed = False

    def request(self, signum=None, error=None):
        if self.signum is None and self.error is None:
            self.signum, self.error = signum, error

    @property
    def requested(self):
        return self.signum is not None or self.error is not None

    def exception(self, where):
        """What to raise once the run has stopped: ``where`` says where and how to continue."""
        if self.signum is None:
            return OutputError(f"{self.error}; {where}")
        cause = "a closed output (broken pipe)" if self.signum == SIGPIPE else signal_name(self.signum)
        return RunInterrupted(self.signum, f"interrupted by {cause}: {where}")

    def _handler(self, signum, frame):
        self.request(signum)
        if not self.deferring:
            raise RunInterrupted(signum, f"interrupted by {signal_name(signum)} before training started; nothing "
                                         f"was trained, so nothing needed saving")

    @contextmanager
    def installed(self):
        """Handle the stop signals inside the block (only the main thread can; elsewhere nothing changes)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextmanager
    def deferred(self):
        """Inside the block a signal is recorded, not raised: the loop stops after the current step."""
        self.deferring = True
        try:
            yield self
        finally:
            self.deferring = False

    def guarded(self, log):
        """``log``, with a failed write turned into a stop request: a closed pipe stops the run as SIGPIPE
        would, another error (a full disk behind stdout) stops it with that error; later lines are dropped."""
        def write(line):
            if self.output_closed:
                return
            try:
                log(line)
            except OSError as e:
                self.output_closed = True
                if isinstance(e, BrokenPipeError) or e.errno == errno.EPIPE:
                    self.request(SIGPIPE)
                else:
                    name = errno.errorcode.get(e.errno, e.errno)
                    self.request(error=f"cannot write to {e.filename or 'the output'}: {e.strerror or e} ({name})")
        return write
