"""Every ```bash and ```python block of README.md and docs/*.md runs, in order, in one temporary folder per file.

How the blocks are run:

* ```python blocks with ``python``, ```bash blocks with ``bash -e``; ``numpy-densenet`` is this checkout's command
  (a shim on PATH running ``python -m numpy_densenet``) and ``python`` the interpreter running the tests, so a
  block can use files that earlier blocks made;
* setting-up lines (``pip install ...``, ``python3 -m venv ...``, activating the environment) are not run: the
  package under test is already importable (``pip install`` in a fresh environment is checked by hand);
* a block preceded by ``<!-- slow -->`` runs its ``numpy-densenet train`` commands with ``--epochs 1`` added
  (they still write the same files), unless the environment variable NUMPY_DENSENET_SLOW_DOCS=1 asks for the
  full commands;
* a block preceded by ``<!-- not run: REASON -->`` is not run (only the test suite's own command,
  ``python -m pytest``, which would run this test inside itself);
* download lines (``curl``, ``wget``) are not run either;
* a block preceded by ``<!-- needs: FILE -->`` needs a file that only the network can give (torchvision's
  densenet121 weights, a photo); the test writes a stand-in of the same format (densenet121 with random
  weights in torchvision's old key style, which needs PyTorch; a synthetic picture). Without PyTorch that block
  and every later block naming one of the files it names are left out, the others still run, and the test
  ends as skipped, naming the blocks left out;
* a block preceded by ``<!-- needs: MODULE -->`` (a name without a file extension: ``torch``, ``jax``) uses an
  optional package; without it the block is left out the same way;
* ```console blocks (command and output) are the walk-through's: tests/test_flow.py runs them and compares the
  output; blocks without a language are printed output, not code.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SETUP_LINE = re.compile(r"^\s*(pip3? install\b|python3? -m pip install\b|python3? -m venv\b|\. \S*activate|"
                        r"source \S*activate|curl\b|wget\b)")
BLOCK = re.compile(r"(?:^<!--\s*(?P<marker>[^>]*?)\s*-->\n)?^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```", re.M | re.S)


def blocks(path):
    """(language, body, marker) of every fenced block, in order."""
    return [(m.group("lang"), m.group("body"), (m.group("marker") or "").strip())
            for m in BLOCK.finditer(path.read_text(encoding="utf-8"))]


def runnable(body):
    """The block without its setting-up lines (see the module docstring)."""
    out = []
    for line in body.splitlines():
        if SETUP_LINE.match(line):
            rest = re.split(r"\s&&\s", line, maxsplit=1)
            line = rest[1] if len(rest) == 2 and not SETUP_LINE.match(rest[1]) else ""
        out.append(line)
    return "\n".join(out) + "\n"


def shorten_training(body):
    """Add --epochs 1 to every `numpy-densenet train` command (a slow block in a quick test run)."""
    return re.sub(r"(numpy-densenet train\b[^\n#&|;]*?)(\s*(?:#.*)?$)", r"\1 --epochs 1\2", body, flags=re.M)


FILE_NAME = re.compile(r"[\w.-]+\.(?:pth|npz|npy|jpg|png)\b")


def make_stand_in(name, folder):
    """A file of the format the docs download, with random contents (see the module docstring)."""
    if name.endswith((".jpg", ".png")):                              # a photo: a smooth picture with noise
        import numpy as np
        from PIL import Image
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:375, 0:500]
        a = np.stack([128 + 100 * np.sin(xx / (9 + c) + yy / (13 + c)) for c in range(3)], axis=-1)
        Image.fromarray(np.clip(a + rng.normal(0, 15, a.shape), 0, 255).astype(np.uint8)).save(folder / name)
        return
    import torch
    sys.path.insert(0, str(ROOT / "tests"))
    import torch_densenet
    if not name.startswith("densenet121"):
        raise AssertionError(f"no stand-in known for {name}")
    torch.manual_seed(0)
    state = torch_densenet.DenseNet().state_dict()
    old = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()
           if not k.endswith("num_batches_tracked")}
    torch.save(old, folder / name)


@pytest.fixture
def shim(tmp_path):
    """A `numpy-densenet` command on PATH that runs this checkout."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "numpy-densenet"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} -m numpy_densenet \"$@\"\n")
    script.chmod(0o755)
    for name in ("python", "python3"):                    # the blocks' `python` is the one running the tests
        (bin_dir / name).write_text(f"#!/bin/sh\nexec {sys.executable} \"$@\"\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", MPLBACKEND="Agg")
    return env


def test_the_docs_have_code_blocks():
    found = {p.name: [lang for lang, _, _ in blocks(p)] for p in DOCS}
    assert found["README.md"].count("python") >= 3 and found["README.md"].count("bash") >= 4
    not_run = [body for p in DOCS for _, body, marker in blocks(p) if marker.startswith("not run")]
    assert [b.strip() for b in not_run] == ['pip install ".[test]" && python -m pytest']     # nothing else


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_code_block_runs(doc, tmp_path, shim):
    work = tmp_path / "work"
    work.mkdir()
    slow = os.environ.get("NUMPY_DENSENET_SLOW_DOCS") == "1"
    have_torch = importlib.util.find_spec("torch") is not None
    ran, left_out, unavailable = 0, [], set()
    for number, (lang, body, marker) in enumerate(blocks(doc), 1):
        if lang not in ("bash", "python") or marker.startswith("not run"):
            continue
        needs = marker[len("needs:"):].split() if marker.startswith("needs:") else []
        files = [n for n in needs if "." in n]
        missing = [n for n in needs if "." not in n and importlib.util.find_spec(n) is None]
        if (not have_torch and any(n.endswith(".pth") for n in files)) or missing \
                or unavailable & set(FILE_NAME.findall(body)):
            unavailable |= set(FILE_NAME.findall(body))
            left_out.append(number)
            continue
        for name in files:
            make_stand_in(name, work)
        code = runnable(body)
        if marker == "slow" and not slow:
            code = shorten_training(code)
        if not code.strip():
            continue
        argv = ["bash", "-e", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        result = subprocess.run(argv, cwd=work, env=shim, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (f"{doc.name}, code block {number} ({lang}) failed with exit code "
                                        f"{result.returncode}:\n{code}\n--- stdout:\n{result.stdout[-3000:]}\n"
                                        f"--- stderr:\n{result.stderr[-3000:]}")
        ran += 1
    assert ran or doc.name != "README.md"
    if left_out:
        pytest.skip(f"{doc.name}: ran {ran} code blocks; blocks {left_out} need an optional package (PyTorch for "
                    f"the stand-in weights, or the package their marker names)")


def test_setup_lines_and_shortening():
    assert runnable("pip install . && numpy-densenet train\n") == "numpy-densenet train\n"
    assert runnable('python3 -m venv .venv && . .venv/bin/activate\nls\n') == "\nls\n"
    assert shorten_training("numpy-densenet train --depth 16   # note\n") == \
        "numpy-densenet train --depth 16 --epochs 1   # note\n"
    assert shorten_training("numpy-densenet train\n") == "numpy-densenet train --epochs 1\n"
