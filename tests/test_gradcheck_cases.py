"""The default gradient checks (numpy_densenet.gradcheck.cases) reach what they claim to.

* Coverage: run under coverage.py, the default layer and model cases (and the synchronised BatchNorm's, through
  a one-process stand-in communicator: tests/sync_cases.py) execute every statement of every backward method of
  the package (methods named ``backward*`` or ``*_backward``), with the exceptions named in EXCEPTIONS, each with
  its reason, and the error paths (``raise`` for a bad call: there is no gradient to check there).
* The covering design: every pair of option values of each layer appears in some case.
* The paths: each fast convolution case takes the algorithm its row names, and the large cases are above the
  sizes where the fast tier splits its work.
* Every default case passes, as the command line runs them (the ties of max pooling with PyTorch's convention,
  tie_convention="first").
"""
import ast
import itertools
import os

import numpy as np
import pytest

import numpy_densenet
from numpy_densenet import fast
from numpy_densenet.cli import main
from numpy_densenet.fast.conv import SHIFT_CHUNK_ELEMENTS
from numpy_densenet.fast.threads import MIN_COLUMNS_PER_THREAD, MIN_ELEMENTS_TO_SPLIT, MIN_FLOPS_TO_SPLIT
from numpy_densenet.gradcheck import gradcheck, large_cases, layer_cases, model_cases, pairwise, run_case
from numpy_densenet.gradcheck.cases import LAYERS, MODELS
from sync_cases import data_parallel_step, sync_cases

PACKAGE = os.path.dirname(numpy_densenet.__file__)

#: statements of backward methods the default checks do not run, and why (file, method, statement's first line)
EXCEPTIONS = {
    ("training/distributed.py", "backward", "dlogits = dlogits * (self.world_size * self._count / counts.sum())"):
        "DataParallel's weighting of unequal slices needs two ranks: tests/test_distributed.py runs it (7 images "
        "on 2 ranks)",
    ("fast/densenet.py", "backward_cnhw", "grad[...] = dout"):
        "a caller's own out array that is not dout: no backward of the package passes one (the network passes dout "
        "itself), so no check of a module reaches it; tests/test_fast_reuse.py::"
        "test_dense_block_accumulating_into_its_upstream_gradient_is_the_same runs it",
}


def backward_methods(tree):
    """(class name, method node) for every method named backward* or *_backward."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and (item.name.startswith("backward")
                                                          or item.name.endswith("_backward")):
                    yield node.name, item


def backward_statements(analysis):
    """{(file, class, method): {line: statement}} for every backward method of the package: the lines
    coverage.py counts as statements, the error paths (raise) left out. ``analysis(path)`` -> (statements,
    missing)."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            source = open(path).read()
            tree = ast.parse(source)
            raises = {n.lineno for n in ast.walk(tree) if isinstance(n, ast.Raise)}
            statements, _ = analysis(path)
            lines = source.splitlines()
            for cls, fn in backward_methods(tree):
                body = fn.body[1:] if isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value,
                                                                                     ast.Constant) else fn.body
                key = (os.path.relpath(path, PACKAGE), cls, fn.name)
                out[key] = {line: lines[line - 1].strip() for line in statements
                            if body and body[0].lineno <= line <= fn.end_lineno and line not in raises}
    return out


def run_default_checks():
    """Every default case's backward, as the checker runs it: directional mode, one direction (the mode does
    not matter here: each check runs backward twice on its case in every mode)."""
    rng = np.random.default_rng(0)
    for case in layer_cases(rng) + model_cases(rng):
        assert run_case(case, mode="directional", directions=1, exhaustive_limit=0).passed, case.label
    for case in sync_cases(rng):                                          # (they need mpi4py's MPI.SUM)
        assert run_case(case, directions=1, exhaustive_limit=0).passed, case.label
    data_parallel_step(rng)


def test_default_checks_run_every_statement_of_every_backward_method():
    coverage = pytest.importorskip("coverage")
    pytest.importorskip("mpi4py")
    cov = coverage.Coverage(source=[PACKAGE], data_file=None)
    threads = fast.get_num_threads()
    cov.start()
    try:
        fast.set_num_threads(2)                 # a new pool of threads, started while coverage traces
        run_default_checks()
    finally:
        fast.set_num_threads(threads)
        cov.stop()

    def analysis(path):
        _, statements, _, missing, _ = cov.analysis2(path)
        return statements, missing

    missing = []
    statements = backward_statements(analysis)
    for (path, cls, method), lines in statements.items():
        _, not_run = analysis(os.path.join(PACKAGE, path))
        for line in sorted(set(lines) & set(not_run)):
            if (path, method, lines[line]) not in EXCEPTIONS:
                missing.append(f"{path}:{line} {cls}.{method}: {lines[line]}")
    total = sum(len(lines) for lines in statements.values())
    assert not missing, f"{len(missing)} of {total} backward statements not run by the default checks:\n" + \
        "\n".join(missing)
    assert total > 250


def _pairs(row, names):
    return {((a, row[a]), (b, row[b])) for a, b in itertools.combinations(names, 2)}


@pytest.mark.parametrize("table", [LAYERS, MODELS], ids=["layers", "models"])
def test_cases_cover_every_pair_of_option_values(table):
    for name, (options, valid, _) in table.items():
        rows = pairwise(options, valid)
        everything = [dict(zip(options, v)) for v in itertools.product(*options.values())]
        possible = set().union(*(_pairs(r, list(options)) for r in everything if valid is None or valid(r)))
        covered = set().union(*(_pairs(r, list(options)) for r in rows))
        assert possible <= covered, (name, possible - covered)
        assert all(valid is None or valid(r) for r in rows)
        if len(options) > 2:                               # a covering design, not the whole product
            assert len(rows) < sum(valid is None or valid(r) for r in everything), name


def test_pairwise_gives_a_new_option_its_cases():
    rows = pairwise(dict(a=(1, 2, 3), b=(True, False)))
    assert {(r["a"], r["b"]) for r in rows} == set(itertools.product((1, 2, 3), (True, False)))
    rows = pairwise(dict(a=(1, 2, 3), b=(True, False), c=("x", "y")))
    assert len(rows) == 6 and {(r["a"], r["c"]) for r in rows} == set(itertools.product((1, 2, 3), ("x", "y")))
    assert pairwise(dict(a=(1, 2)), valid=lambda r: r["a"] == 2) == [{"a": 2}]


def test_each_fast_convolution_case_takes_the_path_its_row_names():
    cases = [c for c in layer_cases(np.random.default_rng(0)) if c.row and "path" in c.row]
    paths = set()
    for case in cases:
        if case.row["tier"] == "fast":
            assert case.module.algorithm == case.row["path"].split("-")[0], case.label
            if case.row["path"].startswith("shift"):      # flat shifts: an output as large as the input
                same = case.module.output_shape(*case.x.shape[2:]) == case.x.shape[2:]
                assert same == (case.row["path"] == "shift-flat"), case.label
            paths.add(case.row["path"])
    assert paths == {"pointwise", "shift-flat", "shift", "im2col"}


def test_large_cases_are_above_the_sizes_where_the_fast_tier_splits_its_work():
    cases = {c.label: c for c in large_cases(np.random.default_rng(0))}
    for label, case in cases.items():
        assert case.threads == 2 and case.options["mode"] == "directional", label
        if isinstance(case.module, fast.Conv2d):
            N, _, H, W = case.x.shape
            if case.module.algorithm == "shift":          # at least three chunks of images
                kh, kw = case.module.kernel_size
                assert N * kh * kw * case.module.out_channels * H * W // SHIFT_CHUNK_ELEMENTS >= 3, label
            else:                                          # im2col's patch matrix split between the threads
                Ho, Wo = case.module.output_shape(H, W)
                assert case.module.in_channels * 9 * N * Ho * Wo >= MIN_ELEMENTS_TO_SPLIT, label
        elif isinstance(case.module, fast.Linear):     # backward's products: two blocks of columns each
            N, (out, inp) = case.x.shape[0], case.module.weight.shape
            assert 2 * N * out * inp >= 2 * MIN_FLOPS_TO_SPLIT and inp // MIN_COLUMNS_PER_THREAD >= 2, label
        elif "272" in label:
            kh, kw = case.module.kernel_size
            assert kh * kw > 256                          # offsets past an 8-bit argmax
            row = case.x[:, :, kh - 1]                    # every window's maximum: its last row, rightmost column
            assert (case.x.max(axis=2) == row).all() and (np.diff(row, axis=-1) > 0).all()
        else:
            assert case.x.size > MIN_ELEMENTS_TO_SPLIT, label     # two element-wise pieces (of 2**18), and
            assert case.x.size > 1 << 16, label                   # several of the fast ReLU's 2**16 zeros


def test_the_command_line_checks_every_layer_case_and_passes(capsys):
    """``numpy-densenet gradcheck``: layers in full mode (the large cases directional), every case passing; the
    max-pool ties checked with PyTorch's convention."""
    assert main(["gradcheck"]) == 0
    out = capsys.readouterr().out
    cases = layer_cases(np.random.default_rng(0))
    assert f"{len(cases)} passed, 0 failed" in out
    assert all(f"== {c.label}" in out for c in cases)
    assert "ties=True (tie_convention=first)" in out and "(mode=directional, directions=1)" in out


def test_thorough_adds_a_dense_block_whose_adds_are_split_between_threads():
    default, thorough = (model_cases(np.random.default_rng(0), thorough=t) for t in (False, True))
    (extra,) = thorough[len(default):]
    assert [c.label for c in thorough[:len(default)]] == [c.label for c in default]
    assert extra.x.size > MIN_ELEMENTS_TO_SPLIT and extra.threads == 2     # its first layer's input: 2 pieces
    assert run_case(extra).passed


def test_synchronised_batchnorm_passes_every_mode():
    """The synchronised layers through the one-process stand-in: coordinate by coordinate where small, and the
    dense blocks and whole networks along directions."""
    pytest.importorskip("mpi4py")
    for case in sync_cases(np.random.default_rng(2)):
        small = case.x.size + sum(p.data.size for p in case.module.parameters()) < 500
        for mode in ("full", "sampled", "directional") if small else ("directional",):
            result = gradcheck(case.module, case.x, mode=mode)
            assert result.passed, (case.label, result.table())
