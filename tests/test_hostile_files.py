"""Hostile files (issue 15): every one ends in one clean error line naming the file, in bounded memory.

The corpus (``tests/hostile.py``) holds the files of the issue's report - tiny files declaring huge sizes, zip
and gzip bombs, a 69-byte PNG declaring 20000x20000 pixels, IDX headers overflowing int64, NaN / negative-variance
/ int / complex weights, 25 kinds of malformed metadata, folders and link loops where files should be - and
runs each through the command line. They all run in one subprocess under an address-space limit, which reports
its peak resident memory. A hypothesis fuzz suite then runs every parser on random, truncated and mutated
bytes: each either returns or raises its documented error, nothing else.
"""
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import PARSER_SEEDS, build_corpus, npy_bytes, png_declaring, run_parser, seed_files

from numpy_densenet.data.files import FileFormatError, open_image, read_npy, read_npz

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEAK_LIMIT_MB = 256          # the corpus used to reach 22.8 GB; Python, NumPy and a tiny model take about 50 MB

DRIVER = textwrap.dedent("""
    import contextlib, io, json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (3 * 2 ** 30, 3 * 2 ** 30))   # a safety net: 3 GiB of address space
    from numpy_densenet.cli import main
    results = []
    for name, argv, fragments in json.load(open(sys.argv[1])):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except BaseException as e:                      # anything escaping main() is a failure
                code = f"escaped {type(e).__name__}: {e}"
        results.append(dict(name=name, code=code, stdout=out.getvalue(), stderr=err.getvalue(),
                            fragments=fragments))
    from hostile import fuzz_all
    fuzz = fuzz_all(sys.argv[3], 100)                  # seeded mutations of valid files, every parser
    try:     # VmHWM: this process's own peak (ru_maxrss keeps the parent's across fork + exec on Linux)
        peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
    except OSError:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak_mb = peak_kb / 1024
    json.dump(dict(results=results, fuzz=fuzz, peak_mb=peak_mb), open(sys.argv[2], "w"))
""")


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory):
    pytest.importorskip("PIL")
    root = tmp_path_factory.mktemp("hostile")
    cases = build_corpus(root / "files")
    (root / "cases.json").write_text(json.dumps(cases))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests"),
                                                       os.environ.get("PYTHONPATH", "")]),
               NUMPY_DENSENET_MAX_BYTES=str(2 ** 30), OPENBLAS_NUM_THREADS="1")
    (root / "fuzz").mkdir()
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(root / "cases.json"), str(root / "results.json"),
                           str(root / "fuzz")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((root / "results.json").read_text())


def test_every_hostile_file_ends_in_one_clean_error_line(corpus_results):
    bad = []
    for r in corpus_results["results"]:
        message = r["stderr"].strip()
        problems = []
        if r["code"] != 2:
            problems.append(f"exit status {r['code']}")
        if "Traceback" in r["stderr"] + r["stdout"] or len(message.splitlines()) != 1:
            problems.append("not one line")
        if not message.startswith("numpy-densenet ") or ": error: " not in message:
            problems.append("not an error line")
        problems += [f"lacks {f!r}" for f in r["fragments"] if f not in message]
        if "(nan)" in r["stdout"]:
            problems.append("printed a nan probability")
        if problems:
            bad.append((r["name"], problems, message[:300]))
    assert not bad, "\n".join(map(str, bad))
    assert len(corpus_results["results"]) >= 90


def test_the_hostile_corpus_and_seeded_fuzzing_run_in_bounded_memory(corpus_results):
    """The corpus, then 100 mutated files per parser, in one process: peak RSS under the limit (every
    fuzzed file returned a result or the documented error, or the subprocess would have failed)."""
    fuzz = corpus_results["fuzz"]
    tried, clean = sum(t for t, _ in fuzz.values()), sum(c for _, c in fuzz.values())
    print(f"\nhostile corpus: {len(corpus_results['results'])} command lines, all clean errors; seeded fuzz in the "
          f"same process: {tried} files, {clean} clean errors, {tried - clean} parsed; peak RSS "
          f"{corpus_results['peak_mb']:.0f} MB")
    assert tried == 100 * len(fuzz) and clean > tried // 2
    assert corpus_results["peak_mb"] < PEAK_LIMIT_MB


def test_memory_error_ends_in_one_clean_line(tmp_path):
    """Running out of memory (here: a 1 GiB address-space limit and a 8192x8192 image) is one line, exit 2."""
    driver = textwrap.dedent("""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (2 ** 30, 2 ** 30))
        from numpy_densenet.cli import main
        sys.exit(main(["summary", "densenet121", "--image-size", "8192"]))
    """)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", driver], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("numpy-densenet summary: error: out of memory"), proc.stderr


# -- fuzzing every parser ----------------------------------------------------------------------------------------
COUNTS = {}

FUZZ = settings(max_examples=int(os.environ.get("NUMPY_DENSENET_FUZZ_EXAMPLES", "100")), deadline=None,
                derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _count(parser, clean):
    tried, errors = COUNTS.get(parser, (0, 0))
    COUNTS[parser] = (tried + 1, errors + int(clean))


def mutate(seed_bytes, data):
    """A truncated, bit-flipped, spliced or random variant of ``seed_bytes``."""
    how = data.draw(st.sampled_from(["truncate", "flip", "splice", "random", "header"]))
    b = bytearray(seed_bytes)
    if how == "truncate":
        return bytes(b[:data.draw(st.integers(0, len(b)))])
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(b) - 1))
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(b)
    if how == "splice":
        i = data.draw(st.integers(0, len(b)))
        return bytes(b[:i]) + data.draw(st.binary(max_size=64)) + bytes(b[i:])
    if how == "header":
        i = data.draw(st.integers(0, min(len(b), 128) - 1))
        return bytes(b[:i]) + data.draw(st.binary(min_size=1, max_size=16)) + bytes(b[i + 1:])
    return data.draw(st.binary(max_size=512))


SEEDS = {}


def seed(kind):
    if not SEEDS:
        SEEDS.update(seed_files())
    return SEEDS[kind]


@pytest.fixture(scope="module", autouse=True)
def small_budget():
    """A 16 MiB memory budget for the in-process fuzzing (the subprocess above uses 1 GiB)."""
    before = os.environ.get("NUMPY_DENSENET_MAX_BYTES")
    os.environ["NUMPY_DENSENET_MAX_BYTES"] = str(2 ** 24)
    yield
    if before is None:
        del os.environ["NUMPY_DENSENET_MAX_BYTES"]
    else:
        os.environ["NUMPY_DENSENET_MAX_BYTES"] = before


PARSERS = sorted(PARSER_SEEDS.items())


@pytest.mark.parametrize("parser, kind", PARSERS)
@FUZZ
@given(data=st.data())
def test_fuzzed_bytes_give_a_result_or_the_documented_error(parser, kind, data, tmp_path):
    pytest.importorskip("PIL")                                          # seed_files draws a PNG
    raw = mutate(seed(kind), data)
    path = tmp_path / ("f.npy.gz" if parser == "read_gzip idx" and data.draw(st.booleans()) else "f.bin")
    if path.name.endswith(".gz"):
        import gzip
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    _count(parser, run_parser(parser, str(path)))


def test_fuzz_counts():
    """Report what the fuzz tests tried (run with -s to see it); every case was a result or a clean error."""
    if not COUNTS:
        pytest.skip("run together with the fuzz tests")
    total = sum(t for t, _ in COUNTS.values())
    errors = sum(e for _, e in COUNTS.values())
    print(f"\nfuzz: {total} cases over {len(COUNTS)} parsers, {errors} clean errors, {total - errors} parsed; "
          + ", ".join(f"{k} {t}/{e}" for k, (t, e) in sorted(COUNTS.items())))
    assert total >= len(PARSERS) * 20


# -- specific formats ------------------------------------------------------------------------------------------
def test_npy_declared_size_checked_before_reading(tmp_path):
    path = tmp_path / "huge.npy"
    path.write_bytes(npy_bytes((2 ** 40,), "<f8"))
    with pytest.raises(FileFormatError, match="truncated"):
        read_npy(path)
    path.write_bytes(npy_bytes((2 ** 62, 2 ** 62), "<f8"))             # overflows int64: seen at its true size
    with pytest.raises(FileFormatError, match="truncated"):
        read_npy(path)
    path.write_bytes(npy_bytes((4,), "|O"))
    with pytest.raises(FileFormatError, match="object arrays"):
        read_npy(path)


def test_npz_member_over_the_budget_is_refused_before_reading(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, a=np.zeros(1000), b=np.zeros(1000))
    assert set(read_npz(path, budget=16000)) == {"a", "b"}
    with pytest.raises(FileFormatError, match="memory budget") as e:
        read_npz(path, budget=12000)
    assert "'b'" in str(e.value) and "(7.8 KiB already read)" in str(e.value)


def test_round_trips_match_numpy(tmp_path):
    """The bounded reader returns what np.load returns: dtypes, byte order, Fortran order, strings, 0-d."""
    arrays = dict(f=np.asfortranarray(np.arange(12.0).reshape(3, 4)), be=np.arange(5, dtype=">i4"),
                  s=np.array(["ab", "c"]), b=np.array([b"x", b"yz"]), z=np.array(3.5), e=np.zeros((0, 3)),
                  c=np.array([1 + 2j]), t=np.arange(24, dtype=np.uint16).reshape(2, 3, 4).transpose(2, 0, 1))
    for compress in (np.savez, np.savez_compressed):
        compress(tmp_path / "a.npz", **arrays)
        got = read_npz(tmp_path / "a.npz")
        with np.load(tmp_path / "a.npz") as ref:
            for k in arrays:
                assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape
                np.testing.assert_array_equal(got[k], ref[k])
    np.save(tmp_path / "a.npy", arrays["f"])
    np.testing.assert_array_equal(read_npy(tmp_path / "a.npy"), arrays["f"])
    np.testing.assert_array_equal(read_npy(tmp_path / "a.npy", mmap=True), arrays["f"])


def test_png_declaring_too_many_pixels_is_refused_from_its_header(tmp_path):
    pytest.importorskip("PIL")
    path = tmp_path / "a.png"
    path.write_bytes(png_declaring(2000, 2000))
    assert path.stat().st_size < 100
    from PIL import Image
    before = Image.MAX_IMAGE_PIXELS
    for width in (2000, 1100):                      # above twice Pillow's limit (an error), and between (a warning)
        path.write_bytes(png_declaring(width, width))
        with pytest.raises(FileFormatError, match=r"1024x1024.*\(%d pixels\)" % (width * width)):
            open_image(path, "L")
    assert Image.MAX_IMAGE_PIXELS == before                              # Pillow's global setting is restored


def test_object_member_in_npz_is_refused_without_reading_other_members(tmp_path):
    path = tmp_path / "o.npz"
    np.savez(path, y=np.array([0, 1]), objects=np.array([{"a": 1}], dtype=object))
    assert set(read_npz(path, keys={"y"})) == {"y"}                     # not read at all
    with pytest.raises(FileFormatError, match="object arrays"):
        read_npz(path)


def test_zip_with_a_non_npy_member_and_a_lying_size(tmp_path):
    path = tmp_path / "z.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "hello")
    with pytest.raises(FileFormatError, match="not a .npy array"):
        read_npz(path)
    with pytest.raises(FileFormatError, match="single .npy"):
        p = tmp_path / "single.npz"
        np.save(tmp_path / "single.npy", np.zeros(3))
        os.replace(tmp_path / "single.npy", p)
        read_npz(p)


def test_model_config_may_record_other_densenet_arguments(tmp_path):
    """A flag DenseNet takes (memory_efficient here; a tier choice later) is accepted; an unknown key is not."""
    import json

    from hostile import tiny_model_arrays

    from numpy_densenet.io import WeightsFileError
    from numpy_densenet.io import load_model_file
    arrays = tiny_model_arrays()
    cfg = json.loads(str(arrays["_model_config"][()]))
    arrays["_model_config"] = np.array(json.dumps({**cfg, "memory_efficient": False}))
    np.savez(tmp_path / "a.npz", **arrays)
    model, meta = load_model_file(tmp_path / "a.npz")
    assert model.config["growth_rate"] == 4 and meta["classes"] == [str(k) for k in range(10)]
    arrays["_model_config"] = np.array(json.dumps({**cfg, "colour": "red"}))
    np.savez(tmp_path / "b.npz", **arrays)
    with pytest.raises(WeightsFileError, match="unknown key.*colour"):
        load_model_file(tmp_path / "b.npz")
