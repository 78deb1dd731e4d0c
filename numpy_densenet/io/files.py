"""Reading and writing the library's files: .npz arrays without pickle, atomic writes, and OS errors in words.

* :func:`save_npz` / :func:`load_npz`: arrays to and from ``.npz``; reading never unpickles and checks every
  declared size against the memory budget first (:func:`numpy_densenet.data.files.read_npz`);
* :func:`atomic_write`: a temporary file in the same folder, flushed, then renamed over the target, so that a
  failure or a kill at any point leaves the previous file intact;
* :func:`json_entry` / :func:`json_array`: small JSON documents (model descriptions, run state) stored as 0-d
  unicode arrays, so a ``.npz`` never needs pickle;
* :func:`check_state_values`: the values a weights file may hold;
* :data:`OS_ERROR_HINTS` / :func:`describe_os_error`: what to do about a failed read or write.
"""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile

import numpy as np

from ..data.files import FileFormatError, read_npz

__all__ = ["WeightsFileError", "TEMP_PREFIX", "temp_prefix", "pid_running", "atomic_write", "remove_stale_temp_files",
           "save_npz", "load_npz", "json_array", "json_entry", "label", "printable", "check_state_values",
           "OS_ERROR_HINTS", "os_error_hint", "describe_os_error"]


class WeightsFileError(ValueError):
    """A weights or checkpoint file that is missing, unreadable, not in the expected format or holds bad values.

    The message is one sentence naming the file and what is wrong; the command line prints it as is.
    """


# -- writing ------------------------------------------------------------------------------------------------------
TEMP_PREFIX = ".numpy_densenet-tmp-"   # temporary files: ".numpy_densenet-tmp-<pid>-<random>.<name>" beside the target
_TEMP_NAME = re.compile(r"^\.numpy_densenet-tmp-(\d+)-[A-Za-z0-9_]+\.")


def atomic_write(path, write, mode="wb"):
    """Write a file atomically: ``write(f)`` fills a temporary file in the same folder, then it is renamed.

    The temporary name, ``.numpy_densenet-tmp-<pid>-<random>.<name>``, names the writing process and is unique
    per call, so concurrent writers never share one. The data is flushed to disk before the rename; a failure or
    a kill at any point leaves the previous file intact (a kill may leave the temporary file, which
    :func:`remove_stale_temp_files` removes once its writer is dead). An ``OSError`` (disk full, read-only file
    system, ...) is re-raised naming ``path``, not the temporary file.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(), suffix=f".{os.path.basename(path)}", dir=folder)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)                                   # mkstemp makes 0600; use the usual mode
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if e.errno is None:
            raise
        raise type(e)(e.errno, e.strerror, path) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def temp_prefix(pid=None):
    """How this process's temporary files start: ``.numpy_densenet-tmp-<pid>-`` (``pid`` default: this one)."""
    return f"{TEMP_PREFIX}{os.getpid() if pid is None else pid}-"


def pid_running(pid):
    """Whether a process ``pid`` exists on this machine (one owned by another user counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:                                   # EPERM: it exists, owned by someone else
        return True
    return True


def remove_stale_temp_files(folder):
    """Remove the temporary files that killed writers of this package left in ``folder``; returns their names.

    Only names this module makes (:func:`temp_prefix`: ``.numpy_densenet-tmp-<pid>-...``) whose process ``pid``
    is no longer running are removed, and only regular files (not links): a live writer's file, or another
    program's, is never touched.
    """
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP_NAME.match(name)
        if not m or int(m.group(1)) == os.getpid() or pid_running(int(m.group(1))):
            continue
        full = os.path.join(folder, name)
        if os.path.isfile(full) and not os.path.islink(full):
            try:
                os.unlink(full)
                removed.append(name)
            except OSError:
                pass
    return removed


def save_npz(path, arrays):
    """Write ``arrays`` (name -> array) to ``path`` as a .npz atomically (see :func:`atomic_write`)."""
    path = os.fspath(path)
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    atomic_write(path, lambda f: np.savez(f, **arrays))


# -- reading ------------------------------------------------------------------------------------------------------
def load_npz(path, what="weights file", keys=None):
    """Read the arrays of a .npz into an OrderedDict, never unpickling, within the memory budget.

    Declared sizes are checked before anything is read (:func:`numpy_densenet.data.files.read_npz`).
    ``keys`` limits what is read. Every problem raises :class:`WeightsFileError` naming the file.
    """
    try:
        return read_npz(path, what=what, keys=keys)
    except FileFormatError as e:
        raise WeightsFileError(str(e)) from None


def label(path, what):
    """How a message names a file: ``what 'path'``."""
    return f"{what} {os.fspath(path)!r}"


def printable(name):
    """``name`` as it can be printed on one line: itself, or, when it holds a newline, another control
    character or bytes that are not text, escaped as Python writes them (``'a\\nb.png'``)."""
    name = os.fspath(name)
    return name if name.isprintable() else repr(name)


def check_state_values(state, path, what="weights file", dtype=None):
    """Check every tensor of a state dict read from a file: the right kind of number, finite, variances >= 0.

    Parameters and running statistics must be real floating point (float16/32/64; int, bool and complex
    are refused, not cast) and finite; ``running_var`` must be >= 0; ``num_batches_tracked`` a non-negative
    integer. With ``dtype`` (the model's), floats of more than its precision's family are still accepted
    (float64 into a float32 model is rounded, as ``load_state_dict`` does).
    """
    where = label(path, what)
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            if value.dtype.kind not in "iu" or value.size != 1 or int(value.reshape(-1)[0]) < 0:
                raise WeightsFileError(f"{where}: {key!r} should be one non-negative integer, found "
                                       f"{value.dtype} {value.shape}")
            continue
        if value.dtype.kind != "f" or value.dtype.itemsize > 8:
            raise WeightsFileError(f"{where}: {key!r} has dtype {value.dtype}; weights must be float16, float32 "
                                   "or float64 (int, bool and complex values are not cast)")
        if not np.isfinite(value).all():
            bad = int(np.flatnonzero(~np.isfinite(value.reshape(-1)))[0])
            raise WeightsFileError(f"{where}: {key!r} holds {value.reshape(-1)[bad]} at flat index {bad}; weights "
                                   "must be finite (the file comes from a diverged run or is corrupt)")
        if key.endswith("running_var") and value.size and value.min() < 0:
            bad = int(np.flatnonzero(value.reshape(-1) < 0)[0])
            raise WeightsFileError(f"{where}: {key!r} holds the negative variance {value.reshape(-1)[bad]} at index "
                                   f"{bad}; running variances must be >= 0")


def json_array(obj):
    """``obj`` as JSON text in a 0-d unicode array: how a .npz stores a small document without pickle."""
    return np.array(json.dumps(obj))


def json_entry(arrays, key, path, what="weights file", kind=None):
    """The JSON value stored as a 0-d unicode array under ``key`` (by ``train``), checked to be of ``kind``."""
    where = label(path, what)
    a = arrays[key]
    if a.ndim != 0 or a.dtype.kind != "U":
        raise WeightsFileError(f"{where}: {key!r} should be a JSON text (a 0-d unicode array), found {a.dtype} "
                               f"{a.shape}")
    try:
        value = json.loads(str(a[()]))
    except (ValueError, RecursionError):
        raise WeightsFileError(f"{where}: {key!r} is not valid JSON") from None
    if kind is not None and not isinstance(value, kind):
        raise WeightsFileError(f"{where}: {key!r} should be a JSON {kind.__name__}, found {type(value).__name__}")
    return value



# -- OS errors, in words ------------------------------------------------------------------------------------------
OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full: free disk space",
    errno.EDQUOT: "the disk quota is exceeded: free disk space",
    errno.EROFS: "the file system is read-only: write somewhere else",
    errno.EACCES: "permission denied: check the permissions of the file and its folders",
    errno.EPERM: "operation not permitted: check the permissions of the file and its folders",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ELOOP: "the path is a symbolic link loop",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOENT: "no such file or folder",
}


def os_error_hint(e, default=None):
    """What to do about OSError ``e`` (:data:`OS_ERROR_HINTS`), or ``default``."""
    return OS_ERROR_HINTS.get(getattr(e, "errno", None), default)


def describe_os_error(e, default_hint=None):
    """One sentence for an OSError: the file, what happened (with the errno name) and what to do."""
    name = errno.errorcode.get(e.errno, "") if isinstance(e.errno, int) else ""
    place = f"{e.filename}: " if e.filename is not None else ""
    what = e.strerror or str(e)
    hint = os_error_hint(e, default_hint)
    return f"{place}{what}{f' ({name})' if name else ''}" + (f"; {hint}" if hint else "")
