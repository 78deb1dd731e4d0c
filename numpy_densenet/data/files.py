"""Reading untrusted files within a memory budget: ``.npy`` / ``.npz`` arrays, gzip streams and images.

Every reader here checks what a file *declares* (a ``.npy`` header's shape and dtype, an IDX header's
dimensions, an image's width and height) against the file's size and the limits below **before** it allocates
anything, and reads compressed data incrementally, stopping at the size the header declares. A file that
breaks a limit raises :class:`FileFormatError` (a ``ValueError``) whose message names the file, what it
declares and what is allowed. Nothing is ever unpickled.

Limits (documented in ``docs/robustness.md``):

``MAX_CLASSES`` = 65,536 (2**16)
    Labels must lie in ``0 .. 65535``; a larger label is refused before anything is sized by it.
``MAX_IMAGE_PIXELS`` = 1,048,576 (1024 x 1024)
    Pixels (height x width) of one image, in data sets, ``.npy`` inputs and PNG files. Pillow's
    decompression-bomb guard is set to this value while an image is opened.
``MAX_COMPRESSION_RATIO`` = 100
    A compressed ``.npz`` member larger than ``RATIO_CHECK_BYTES`` (16 MiB) once decompressed may be at most
    100 times its compressed size (real data compresses 2 to 10 times; a zip bomb 1000 times).
:func:`memory_budget`
    The most bytes one file's arrays may hold in memory: the environment variable
    ``NUMPY_DENSENET_MAX_BYTES`` if set, else half the physical memory (:func:`physical_memory`).
"""
from __future__ import annotations

import ast
import errno
import gzip
import hashlib
import os
import stat
import warnings
import zipfile
import zlib
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

__all__ = ["MAX_CLASSES", "MAX_IMAGE_PIXELS", "MAX_COMPRESSION_RATIO", "FileFormatError", "memory_budget",
           "physical_memory", "check_regular_file", "check_budget", "check_compression", "read_npy", "npy_header",
           "read_npy_rows", "read_npz", "read_gzip", "open_image", "format_bytes", "digest_arrays"]

MAX_CLASSES = 2 ** 16
MAX_IMAGE_PIXELS = 1024 * 1024
MAX_COMPRESSION_RATIO = 100
RATIO_CHECK_BYTES = 16 * 2 ** 20
MAX_HEADER_BYTES = 10_000            # a .npy header (numpy's own limit for untrusted files)
MAX_PNG_TEXT_BYTES = 2 ** 20         # all text chunks of a PNG together, decompressed
_CHUNK = 2 ** 22                     # bytes read at a time from a compressed stream
_ALLOWED_KINDS = "biufcUS"           # bool, integers, floats, complex, strings: never objects or records


class FileFormatError(ValueError):
    """A file that cannot be read safely: missing, not a regular file, malformed, or over a limit.

    The message is one sentence naming the file; loaders re-raise it as their own error class.
    """


def format_bytes(n):
    """``n`` bytes as a short human-readable string (``1.5 GiB``)."""
    n = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} EiB"  # pragma: no cover


def digest_arrays(named):
    """A SHA-256 (hex) of ``(name, array or None)`` pairs: names, dtypes, shapes and values, so the same
    arrays give the same digest wherever they were read from, and any changed value another one."""
    h = hashlib.sha256()
    for name, a in named:
        if a is None:
            h.update(f"{name}:none;".encode())
            continue
        a = np.ascontiguousarray(a)
        h.update(f"{name}:{a.dtype.str}{a.shape};".encode())
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def memory_budget():
    """The most bytes the arrays read from one file may take: ``$NUMPY_DENSENET_MAX_BYTES``, else half of RAM."""
    value = os.environ.get("NUMPY_DENSENET_MAX_BYTES")
    if value:
        try:
            budget = int(value)
        except ValueError:
            raise FileFormatError(f"NUMPY_DENSENET_MAX_BYTES must be a number of bytes, got {value!r}") from None
        if budget < 1:
            raise FileFormatError(f"NUMPY_DENSENET_MAX_BYTES must be positive, got {budget}")
        return budget
    return physical_memory() // 2


def physical_memory():
    """The machine's physical memory in bytes (8 GiB when it cannot be found)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 8 * 2 ** 30


def os_problem(exc):
    """What an OSError means for a file that should be read, in words."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT:
        return "does not exist (file not found)"
    if code == errno.ELOOP:
        return "is a symbolic link loop (or too many nested links), not a file"
    if code == errno.ENOTDIR:
        return "cannot be reached: a part of its path is a file, not a folder"
    if code in (errno.EACCES, errno.EPERM):
        return "cannot be read: permission denied (check the file's and its folders' permissions)"
    if code == errno.EISDIR:
        return "is a folder, not a file"
    return f"cannot be read: {exc.strerror or exc}"


def check_regular_file(path, what="file"):
    """Raise :class:`FileFormatError` unless ``path`` is a regular file that can be opened for reading.

    A folder, a symbolic link loop, a path through a file, a FIFO or a device is reported as such, not as
    "not found". Returns the file's size in bytes.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise FileFormatError(f"{what} {path!r} {os_problem(e)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise FileFormatError(f"{what} {path!r} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise FileFormatError(f"{what} {path!r} is not a regular file (a device, FIFO or socket)")
    if not os.access(path, os.R_OK):
        raise FileFormatError(f"{what} {path!r} cannot be read: permission denied")
    return st.st_size


# -- .npy headers -----------------------------------------------------------------------------------------------
def _read_exact(f, n):
    data = f.read(n)
    return data if data is not None else b""


def read_npy_header(f, where):
    """Read and check a ``.npy`` header from the binary stream ``f``.

    Returns ``(shape, fortran_order, dtype, nbytes)``; ``nbytes`` is computed with Python integers, so a shape
    whose product overflows int64 is seen at its true size. ``where`` names the file (and member) in messages.
    """
    magic = _read_exact(f, 8)
    if len(magic) < 8 or magic[:6] != b"\x93NUMPY":
        raise FileFormatError(f"{where} is not a .npy array (it starts with {magic[:8]!r})")
    major = magic[6]
    if major == 1:
        length = int.from_bytes(_read_exact(f, 2), "little")
    elif major in (2, 3):
        length = int.from_bytes(_read_exact(f, 4), "little")
    else:
        raise FileFormatError(f"{where} has .npy format version {major}.{magic[7]}; versions 1 to 3 are known")
    if length > MAX_HEADER_BYTES:
        raise FileFormatError(f"{where} declares a {length}-byte .npy header; at most {MAX_HEADER_BYTES} are "
                              "accepted")
    raw = _read_exact(f, length)
    if len(raw) != length:
        raise FileFormatError(f"{where} is truncated inside its .npy header")
    try:
        header = ast.literal_eval(raw.decode("utf-8" if major == 3 else "latin1"))
    except (SyntaxError, ValueError, UnicodeDecodeError, MemoryError, RecursionError):
        raise FileFormatError(f"{where} has a malformed .npy header") from None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        raise FileFormatError(f"{where} has a malformed .npy header (expected the keys descr, fortran_order, "
                              "shape)")
    shape, fortran = header["shape"], header["fortran_order"]
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                               for d in shape) or len(shape) > 32:
        raise FileFormatError(f"{where} has a malformed .npy header: shape {shape!r}")
    if not isinstance(fortran, bool):
        raise FileFormatError(f"{where} has a malformed .npy header: fortran_order {fortran!r}")
    try:
        dtype = np.lib.format.descr_to_dtype(header["descr"])
    except (TypeError, ValueError, KeyError, SyntaxError):
        raise FileFormatError(f"{where} has a malformed .npy header: dtype {header['descr']!r}") from None
    if dtype.hasobject:
        raise FileFormatError(f"{where} holds object arrays (pickled Python objects), which are never unpickled; "
                              "store plain numeric or string arrays")
    if dtype.kind not in _ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype is not None or \
            dtype.itemsize == 0:
        raise FileFormatError(f"{where} has dtype {dtype}; only plain numbers and strings are read")
    nbytes = dtype.itemsize
    for d in shape:
        nbytes *= d
    return shape, fortran, dtype, nbytes


def check_budget(where, shape, dtype, nbytes, budget, already=0):
    if already + nbytes > budget:
        raise FileFormatError(
            f"{where} declares an array of shape {shape} {dtype} ({format_bytes(nbytes)}), more than the memory "
            f"budget of {format_bytes(budget)} for one file" + (f" ({format_bytes(already)} already read)"
                                                                if already else "")
            + "; set NUMPY_DENSENET_MAX_BYTES to allow more")


def _read_into(f, shape, fortran, dtype, nbytes, where):
    """Read exactly ``nbytes`` of array data from ``f`` in chunks into a new array, then expect the end."""
    out = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(out)
    got = 0
    while got < nbytes:
        n = f.readinto(view[got:got + _CHUNK])
        if not n:
            raise FileFormatError(f"{where} is truncated: its header declares {nbytes} bytes of data, the file "
                                  f"holds {got}")
        got += n
    if f.read(1):
        raise FileFormatError(f"{where} holds more data than its header declares ({nbytes} bytes)")
    array = out.view(dtype)
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)


# -- .npz archives ------------------------------------------------------------------------------------------------
def read_npz(path, what="file", keys=None, budget=None):
    """Read the arrays of a ``.npz`` archive (``np.savez`` / ``np.savez_compressed``) within the memory budget.

    Parameters
    ----------
    path : path-like
    what : str
        How messages name the file (``"weights file"``, ``"data set"``).
    keys : collection of str, optional
        Read only these arrays (missing ones are simply absent from the result); default all.
    budget : int, optional
        Most bytes all arrays together may take; default :func:`memory_budget`.

    Returns
    -------
    OrderedDict name -> ndarray, in archive order.

    Raises
    ------
    FileFormatError
        Not a regular file, not a zip archive (a single ``.npy`` is named as such), a member that is not a
        ``.npy`` array, an object array, a declared size over the budget or a compression ratio over
        ``MAX_COMPRESSION_RATIO``, truncated or corrupt data.
    """
    path = os.fspath(path)
    size = check_regular_file(path, what)
    budget = memory_budget() if budget is None else budget
    where = f"{what} {path!r}"
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
            if magic[:2] != b"PK":
                kind = "a single .npy array" if magic == b"\x93NUMPY" else f"not a zip archive (it starts with {magic!r})"
                raise FileFormatError(f"{where} is not a .npz archive of named arrays: it is {kind}")
            f.seek(0)
            with zipfile.ZipFile(f) as archive:
                headers = _npz_headers(archive, _npz_members(archive, keys, size, where), budget, where)
                arrays = OrderedDict()
                for name, info, shape, fortran, dtype, nbytes in headers:   # pass 2: exactly the declared bytes
                    member = f"{where}, array {name!r}"
                    with archive.open(info) as stream:
                        read_npy_header(stream, member)
                        arrays[name] = _read_into(stream, shape, fortran, dtype, nbytes, member)
                return arrays
    except FileFormatError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError,
            ValueError, OverflowError) as e:
        raise FileFormatError(f"{where} is not a valid .npz archive or is truncated ({type(e).__name__}: {e})") \
            from None
    except OSError as e:
        raise FileFormatError(f"{where} {os_problem(e)}") from None


def _npz_members(archive, keys, size, where):
    """(name, ZipInfo) of the ``.npy`` members to read (``keys`` only, if given), each checked to be one."""
    chosen = []
    for info in (i for i in archive.infolist() if not i.is_dir()):
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if keys is not None and name not in keys:
            continue
        if not info.filename.endswith(".npy"):
            raise FileFormatError(f"{where} holds {info.filename!r}, which is not a .npy array")
        if info.compress_size > size:
            raise FileFormatError(f"{where} is corrupt: member {info.filename!r} claims "
                                  f"{info.compress_size} bytes in a {size}-byte file")
        chosen.append((name, info))
    return chosen


def _npz_headers(archive, chosen, budget, where):
    """Pass 1, headers only, nothing allocated: each member's (name, info, shape, fortran, dtype, nbytes), its
    declared size checked against the archive, the compression ratio and the budget."""
    headers, total = [], 0
    for name, info in chosen:
        member = f"{where}, array {name!r}"
        with archive.open(info) as stream:
            shape, fortran, dtype, nbytes = read_npy_header(stream, member)
            header_bytes = stream.tell()
        if info.compress_type == zipfile.ZIP_STORED and header_bytes + nbytes != info.file_size:
            state = "truncated" if header_bytes + nbytes > info.file_size else "longer than declared"
            raise FileFormatError(f"{member} is {state}: its header declares shape {shape} {dtype}, "
                                  f"{nbytes} bytes of data, the archive holds {info.file_size - header_bytes}")
        check_compression(info, nbytes, f"{member} declares shape {shape} {dtype}, {format_bytes(nbytes)},",
                          "store such data uncompressed (np.savez)")
        check_budget(member, shape, dtype, nbytes, budget, total)
        total += nbytes
        headers.append((name, info, shape, fortran, dtype, nbytes))
    return headers


def check_compression(info, nbytes, declared, advice):
    """Refuse a zip member (``info``, a ZipInfo) that would expand ``nbytes`` (above ``RATIO_CHECK_BYTES``) more
    than ``MAX_COMPRESSION_RATIO`` times its compressed size: a likely zip bomb. ``declared`` starts the
    message ("<file> declares ..."), ``advice`` ends it."""
    if info.compress_type != zipfile.ZIP_STORED and nbytes > RATIO_CHECK_BYTES and \
            nbytes > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
        raise FileFormatError(f"{declared} compressed into {format_bytes(info.compress_size)}, a ratio over "
                              f"{MAX_COMPRESSION_RATIO}: refused as a likely zip bomb; {advice}")


def read_npy(path, what="file", budget=None, mmap=False):
    """Read a single ``.npy`` array, its declared size checked against the file's size and the budget.

    With ``mmap=True`` the data is memory-mapped read-only (nothing is read until used), so any size that
    the file really holds is fine - but a file truncated while it is mapped kills the process (SIGBUS) when a
    lost page is touched: the command line reads inputs in pieces instead (:func:`read_npy_rows`).
    """
    path = os.fspath(path)
    where = f"{what} {path!r}"
    size = check_regular_file(path, what)                 # before opening: a FIFO would block open()
    with _opened(path, where) as f:
        shape, fortran, dtype, nbytes = _checked_npy_header(f, size, where)
        if mmap and nbytes:
            return np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape,
                             order="F" if fortran else "C")
        check_budget(where, shape, dtype, nbytes, memory_budget() if budget is None else budget)
        return _read_into(f, shape, fortran, dtype, nbytes, where)


def npy_header(path, what="file"):
    """The header of a single ``.npy`` file, checked against the file's size, without reading its data:
    ``(shape, fortran_order, dtype, data_offset)``, for :func:`read_npy_rows`."""
    path = os.fspath(path)
    where = f"{what} {path!r}"
    size = check_regular_file(path, what)
    with _opened(path, where) as f:
        shape, fortran, dtype, _ = _checked_npy_header(f, size, where)
        return shape, fortran, dtype, f.tell()


def read_npy_rows(path, header, start, stop, what="file"):
    """Rows ``start:stop`` of the first axis of a C-order ``.npy`` file (``header`` from :func:`npy_header`),
    read - not memory-mapped - so that a file truncated or shortened meanwhile raises :class:`FileFormatError`
    naming it instead of killing the process."""
    path = os.fspath(path)
    where = f"{what} {path!r}"
    shape, fortran, dtype, offset = header
    if fortran and len(shape) > 1:
        raise ValueError("read_npy_rows reads C-order arrays only")
    row = dtype.itemsize * int(np.prod(shape[1:], dtype=object))
    out = np.empty((stop - start) * row, dtype=np.uint8)
    check_regular_file(path, what)
    with _opened(path, where) as f:
        f.seek(offset + start * row)
        got = f.readinto(memoryview(out)) if out.size else 0
    if got != out.size:
        raise FileFormatError(f"{where} changed while it was read: rows {start}..{stop - 1} of its header's "
                              f"{shape[0]} are not all there any more (the file is {got + offset + start * row} "
                              f"bytes or less)")
    return out.view(dtype).reshape((stop - start,) + tuple(shape[1:]))


@contextmanager
def _opened(path, where):
    """``path`` opened for binary reading, an OSError becoming a :class:`FileFormatError` naming it."""
    try:
        f = open(path, "rb")
    except OSError as e:
        raise FileFormatError(f"{where} {os_problem(e)}") from None
    try:
        yield f
    except OSError as e:
        raise FileFormatError(f"{where} {os_problem(e)}") from None
    finally:
        f.close()


def _checked_npy_header(f, size, where):
    magic = f.read(6)
    if magic[:2] == b"PK":
        raise FileFormatError(f"{where} is a .npz archive (a zip of arrays), not a single .npy array; "
                              "save one array with np.save")
    f.seek(0)
    shape, fortran, dtype, nbytes = read_npy_header(f, where)
    offset = f.tell()
    if offset + nbytes != size:
        state = "truncated" if offset + nbytes > size else "longer than its header declares"
        raise FileFormatError(f"{where} is {state}: its header declares shape {shape} {dtype}, "
                              f"{nbytes} bytes of data, the file holds {size - offset}")
    return shape, fortran, dtype, nbytes


# -- gzip ---------------------------------------------------------------------------------------------------------
def read_gzip(path, header_size, data_size, what="file", budget=None):
    """Read a file that starts with a ``header_size``-byte header, gzipped or not, incrementally.

    ``data_size(header)`` returns how many bytes of data the header declares (or raises
    :class:`FileFormatError`); it is checked against the budget before any data is read, and reading stops
    there, so a small gzip file cannot expand past what its header declares. Returns ``(header, data)``
    where ``data`` is a uint8 array.
    """
    path = os.fspath(path)
    size = check_regular_file(path, what)
    where = f"{what} {path!r}"
    budget = memory_budget() if budget is None else budget
    compressed = path.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            header = f.read(header_size)
            if len(header) < header_size:
                raise FileFormatError(f"{where} is only {len(header)} bytes{' decompressed' if compressed else ''}, "
                                      f"shorter than its {header_size}-byte header")
            nbytes = data_size(header)
            if not compressed and header_size + nbytes != size:
                raise FileFormatError(f"{where} is {size} bytes but its header promises {nbytes} bytes of data, "
                                      f"i.e. {header_size + nbytes} bytes; the file is "
                                      f"{'truncated' if size < header_size + nbytes else 'longer than it should be'}")
            if nbytes > budget:
                raise FileFormatError(f"{where} declares {format_bytes(nbytes)} of data, more than the memory "
                                      f"budget of {format_bytes(budget)}; set NUMPY_DENSENET_MAX_BYTES to allow more")
            data = np.empty(nbytes, dtype=np.uint8)
            view, got = memoryview(data), 0
            while got < nbytes:
                n = f.readinto(view[got:got + _CHUNK])
                if not n:
                    break
                got += n
            extra = len(f.read(1)) if got == nbytes else 0
            if got < nbytes or extra:
                raise FileFormatError(
                    f"{where}: decompressed size is {header_size + got}{'+' if extra else ''} bytes but its header "
                    f"promises {nbytes} bytes of data, i.e. {header_size + nbytes} bytes; the file is "
                    f"{'truncated' if got < nbytes else 'longer than it should be'}")
            return header, data
    except FileFormatError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise FileFormatError(f"{where} cannot be decompressed ({e}); the download is truncated or corrupt") \
            from None
    except OSError as e:
        raise FileFormatError(f"{where} {os_problem(e)}") from None


# -- images -------------------------------------------------------------------------------------------------------
def _pixels(limit):
    """'1,048,576 (1024x1024)' for the default limit, else the number."""
    return f"{limit:,}" + (" (1024x1024)" if limit == MAX_IMAGE_PIXELS else "")


#: Pillow's modes of more than 8 bits per pixel: 16-bit integers (PNG, TIFF), 32-bit integers, 32-bit floats
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _decoded(img, mode, where, as_array):
    """The pixels of an open PIL image in ``mode``: 8-bit images as uint8; wider ones by their real range."""
    if img.mode not in WIDE_MODES:
        converted = img.convert(mode)
        return np.asarray(converted, dtype=np.uint8) if as_array else converted
    a = np.asarray(img)
    if img.mode == "F":                                  # floats: in [0, 1], as float arrays are
        if not np.isfinite(a).all():
            raise FileFormatError(f"{where} holds NaN or infinite pixel values (a {img.mode}-mode image)")
        values = a.astype(np.float64)
    else:                                                # 16-bit (or 32-bit holding 16-bit) integers: / 65535
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise FileFormatError(f"{where} holds 32-bit integer pixels in {a.min()}..{a.max()}; only 8- and 16-bit "
                                  f"images (0..65535) are read: convert it to 16 bits first")
        values = a / 65535.0
    if not as_array:                                     # an 8-bit PIL image, for the photo preprocessing
        if values.size and (values.min() < 0 or values.max() > 1):
            raise FileFormatError(f"{where} holds floating-point pixels in [{values.min():.4g}, {values.max():.4g}]; "
                                  f"float images must hold values in [0, 1]")
        from PIL import Image
        return Image.fromarray(np.rint(values * 255).astype(np.uint8), "L").convert(mode)
    return values if mode == "L" else np.repeat(values[:, :, None], 3, axis=2)


def open_image(path, mode, what="image", max_pixels=MAX_IMAGE_PIXELS, as_array=True):
    """Decode an image file with Pillow into a uint8 array (H, W) for ``mode="L"`` or (H, W, 3) for ``"RGB"``
    (or, with ``as_array=False``, a PIL image in ``mode``).

    Images of more than 8 bits per pixel (:data:`WIDE_MODES`) are scaled by their real range, never clipped:
    16-bit integers become float64 values / 65535 in [0, 1] (32-bit integer images must hold 16-bit values);
    32-bit float images are taken as [0, 1] values, as float arrays are, and refused when they hold NaN or
    inf. As a PIL image (``as_array=False``) they become 8-bit images of the same range.

    The width x height is checked against ``max_pixels`` (default ``MAX_IMAGE_PIXELS``, 1024x1024) from the
    header, before decoding, with Pillow's decompression-bomb guard set to the same value; text chunks are
    limited to ``MAX_PNG_TEXT_BYTES``. Every decoder error becomes a :class:`FileFormatError` naming the file.
    Needs Pillow (ImportError otherwise).
    """
    from PIL import Image, PngImagePlugin

    path = os.fspath(path)
    check_regular_file(path, what)
    where = f"{what} {path!r}"
    saved = Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY
    Image.MAX_IMAGE_PIXELS = max_pixels
    PngImagePlugin.MAX_TEXT_CHUNK = PngImagePlugin.MAX_TEXT_MEMORY = MAX_PNG_TEXT_BYTES
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise FileFormatError(f"{where} is {width}x{height} = {width * height:,} pixels, more than the "
                                          f"limit of {_pixels(max_pixels)}; resize it first")
                return _decoded(img, mode, where, as_array)
    except FileFormatError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise FileFormatError(f"{where} declares more pixels than the limit of {_pixels(max_pixels)}: {e}") from None
    except MemoryError:
        raise
    except Exception as e:                          # Pillow raises many kinds (OSError, ValueError, SyntaxError, ...)
        first = (str(e).strip().splitlines() or [""])[0]
        raise FileFormatError(f"{where} cannot be read as an image ({type(e).__name__}: {first})") from None
    finally:
        Image.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_CHUNK, PngImagePlugin.MAX_TEXT_MEMORY = saved
