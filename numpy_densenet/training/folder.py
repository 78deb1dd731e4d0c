"""A run's output folder: exclusive use through a lock file, a disk-space probe, and writes whose failure never
damages the last checkpoint."""
from __future__ import annotations

import errno
import os
import stat

try:
    import fcntl                                   # POSIX: the lock is an flock, released when the process dies
except ImportError:                                # pragma: no cover - not POSIX
    fcntl = None

from ..data.files import format_bytes
from ..io.files import os_error_hint, pid_running, remove_stale_temp_files, temp_prefix
from .options import TrainingError

__all__ = ["OutputError", "OutputFolder", "LOCK_NAME", "RUN_FILES", "existing_run_files", "write_or_explain"]


class OutputError(TrainingError):
    """The output folder cannot be used or written (disk full, read-only, locked by another run)."""


LOCK_NAME = ".lock"


class OutputFolder:
    """Exclusive use of a run's output folder: a lock file holding the owner's pid, probed for space.

    :meth:`acquire` creates the folder, takes the lock (a second run on the same folder is refused naming the
    holder's pid; the lock of a killed run is stale and taken over), removes the temporary files that killed
    writers of this package left (:func:`~numpy_densenet.io.files.remove_stale_temp_files`) and checks that
    ``probe_bytes`` can be written (:meth:`probe`: disk full and read-only are found before training).
    The lock is an ``flock`` on ``<out>/.lock``, released by the kernel when the process dies, where available;
    elsewhere the lock file is created exclusively and a lock whose pid is not running is stale. The lock file
    is opened without following links, and one that is not a plain file (a link, a folder, a FIFO, a file with
    other hard links) is refused: the pid is never written through it.
    """

    def __init__(self, out, log=print):
        self.out, self.log = out, log
        self.path = os.path.join(out, LOCK_NAME)
        self.fd = None
        self.created = False            # the folder did not exist: removed again by release() if left empty

    def acquire(self, probe_bytes=0):
        out = self.out
        try:
            self.created = not os.path.lexists(out)
            os.makedirs(out, exist_ok=True)
        except OSError as e:
            raise OutputError(f"--out {out!r} cannot be used as an output folder: {e.strerror} "
                              f"({errno.errorcode.get(e.errno, e.errno)}); "
                              f"{os_error_hint(e, 'choose another --out')}") from None
        if not os.path.isdir(out):
            raise OutputError(f"--out {out!r} is not a folder")
        try:
            self._lock()
        except OSError as e:
            raise OutputError(f"--out {out!r} is not writable: cannot create {self.path}: {e.strerror} "
                              f"({errno.errorcode.get(e.errno, e.errno)}); "
                              f"{os_error_hint(e, 'choose another --out')}") from None
        try:
            removed = remove_stale_temp_files(out)
            if removed:
                self.log(f"note: removed {len(removed)} temporary file(s) left by a killed run in {out}")
            self.probe(probe_bytes)
        except BaseException:
            self.release()
            raise
        return self

    def _open(self, flags):
        """Open the lock file without following a link; refuse anything but a plain file of one link."""
        try:
            fd = os.open(self.path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o644)
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.EMLINK):
                raise
            try:
                st = os.lstat(self.path)
            except OSError:
                st = None
            self._refuse(st)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            self._refuse(st)
        return fd

    def _refuse(self, st):
        kind = ("a symbolic link" if st is not None and stat.S_ISLNK(st.st_mode) else
                "a folder" if st is not None and stat.S_ISDIR(st.st_mode) else
                f"a file with {st.st_nlink} hard links" if st is not None and stat.S_ISREG(st.st_mode) else
                "not a regular file (a FIFO, socket or device)")
        raise OutputError(f"--out {self.out!r}: its lock file {self.path} is {kind}; a lock file is written, so "
                          f"it must be a plain file of its own: remove it (or choose another --out)") from None

    def _lock(self):
        if fcntl is None:                                                 # pragma: no cover - not POSIX
            return self._lock_exclusive()
        for _ in range(10):
            fd = self._open(os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise OutputError(f"another run (pid {holder or 'unknown'}) is writing to --out {self.out!r}; "
                                  "wait for it to finish, or give this run another --out") from None
            if not _same_file(fd, self.path):             # the holder released (unlinked) it meanwhile: retry
                os.close(fd)
                continue
            stale = _read_pid(fd)
            if stale and stale != os.getpid():
                self.log(f"note: took over the stale lock of pid {stale} in {self.out} (no process holds it: the "
                         f"run that wrote it was killed)")
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            self.fd = fd
            return
        raise OutputError(f"could not lock --out {self.out!r}: the lock file keeps changing")  # pragma: no cover

    def _lock_exclusive(self):                                            # pragma: no cover - not POSIX
        for _ in range(2):
            try:
                fd = self._open(os.O_RDWR | os.O_CREAT | os.O_EXCL)
            except FileExistsError:
                with open(self.path) as f:
                    text = f.read().strip()
                pid = int(text) if text.isdigit() else None
                if pid and pid_running(pid):
                    raise OutputError(f"another run (pid {pid}) is writing to --out {self.out!r}; wait for it to "
                                      "finish, or give this run another --out") from None
                self.log(f"note: removed the stale lock of pid {pid} (not running) in {self.out}")
                os.unlink(self.path)
                continue
            os.write(fd, f"{os.getpid()}\n".encode())
            self.fd = fd
            return
        raise OutputError(f"could not lock --out {self.out!r}")

    def probe(self, nbytes):
        """Write ``nbytes`` to a temporary file and delete it: disk full / quota found before training."""
        if nbytes <= 0:
            return
        path = os.path.join(self.out, f"{temp_prefix()}probe.tmp")          # removed after a kill, as any
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                try:
                    os.posix_fallocate(fd, 0, nbytes)
                except (AttributeError, OSError) as e:
                    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                        raise
                    block = bytes(2 ** 20)
                    left = nbytes
                    while left > 0:
                        left -= os.write(fd, block[:min(left, len(block))])
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(path)
        except OSError as e:
            raise OutputError(f"--out {self.out!r} cannot hold this run's files ({format_bytes(nbytes)} for a "
                              f"checkpoint and best.npz): {e.strerror} ({errno.errorcode.get(e.errno, e.errno)}); "
                              f"{os_error_hint(e, 'choose another --out')}") from None

    def release(self, remove_empty=False):
        """Unlock; with ``remove_empty``, also remove the folder if :meth:`acquire` created it and it is empty
        (a run that failed before writing anything leaves nothing behind)."""
        if self.fd is None:
            return
        if _same_file(self.fd, self.path):                # unlink first: a waiting run then locks a fresh file
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = None
        if remove_empty and self.created:
            try:
                os.rmdir(self.out)                        # only if empty
            except OSError:
                pass


def _same_file(fd, path):
    """Whether ``path`` (not followed if a link) is the file open as ``fd``."""
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev)


def _read_pid(fd):
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


RUN_FILES = ("metrics.jsonl", "checkpoint.npz", "best.npz", "curves.png")


def existing_run_files(out):
    """The files of an earlier run in folder ``out`` (empty when there are none)."""
    return [name for name in RUN_FILES if os.path.exists(os.path.join(out, name))]


def write_or_explain(path, write, checkpoint):
    """Run ``write()``; turn an OSError into a :class:`TrainingError` saying the last checkpoint is intact."""
    try:
        write()
    except OSError as e:
        hint = os_error_hint(e, "fix the problem")
        raise OutputError(f"cannot write {path}: {e.strerror or e} ({errno.errorcode.get(e.errno, e.errno)}). "
                          f"The last checkpoint, {checkpoint}, is intact if it exists: {hint}, then continue "
                          f"with --resume {checkpoint}") from None
