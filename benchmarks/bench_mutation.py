"""Mutation study of the gradient checker: how many wrong backward passes does each oracle catch?

    python benchmarks/bench_mutation.py                                   # the default run (minutes)
    python benchmarks/bench_mutation.py --max-mutants 60 --per-layer 8 --trials 2        # a quick look
    python benchmarks/bench_mutation.py --layers ReLU,MaxPool2d --modes full,torch

1. The package is copied to a temporary directory (the real one is never imported or touched). Every
   ``numpy_densenet/nn/*.py``, ``numpy_densenet/fast/*.py`` and ``numpy_densenet/model.py`` is parsed with
   ``ast``; inside the methods of classes whose names start with ``backward`` it generates mutants: operator
   swaps (+ -, * /), dropped terms (a + b -> a), dropped negations, ``+=`` -> ``=``, comparison swaps
   (> >=, == !=), integer constants +-1 (off-by-one slices, wrong axes), float constants x1.001, ``.copy()``
   dropped, a wrong local variable read (wrong cached tensor), a single wrong entry in the returned gradient and
   the returned gradient x1.001 and x1.00002 (just above the 1e-5 target). At most ``--per-layer`` mutants
   per class (a seeded sample, round robin over these kinds), ``--max-mutants`` in all.
2. Each mutant is written into the copy, the copy re-imported, and its backward run on every test case that
   contains the mutated class, twice without zero_grad (so ``=`` for ``+=`` shows) and with the upstream
   gradient compared afterwards. Mutants that crash or return gradients of the wrong shape everywhere are
   dropped, those whose results are bit-identical to the original's are dropped as equivalent; the others
   are *valid*, and their error is the
   largest relative difference max|a_mut - a| / max|a| over tensors and cases (inf for a NaN, an in-place
   change of the upstream gradient or a broken accumulation).
3. Every oracle runs on every case of each valid mutant: ``gradcheck`` in each mode and, when PyTorch is
   installed, ``torch.autograd.gradcheck`` (float64, defaults: eps 1e-6, atol 1e-5, rtol 1e-3) on a
   ``torch.autograd.Function`` wrapping the numpy module (its input and parameters as inputs), and our
   ``check_torch`` (its defaults) on that same wrapper: what a torch user gets by switching checkers. A mutant
   is caught when an oracle fails (or raises) on some case.
4. False alarms: the correct layers on ``--trials`` random geometries each, with exact ties and zeros
   injected and magnitudes from 1e-6 to 1e6, in every mode.

Results: ``<out>.json`` and ``<out>.md`` (default ``benchmarks/results/mutation``).
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")      # 2 shared cores: keep BLAS to one thread
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import ast  # noqa: E402
import copy  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

sys.dont_write_bytecode = True        # mutants often keep a file's size: never let a stale .pyc be reused
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "numpy_densenet"
GC_MODES = ("full", "sampled", "directional")
THRESHOLD = 1e-5                      # mutants at least this wrong (relative) are the target population
SCANNED = ("nn", "fast")


# ----------------------------------------------------------------------------------------------------------
# Mutants
# ----------------------------------------------------------------------------------------------------------
def backward_methods(tree):
    """Yield (class name, method node) for every method named backward* of every class."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name.startswith("backward"):
                    yield node.name, item


def _locals(fn):
    names = {a.arg for a in fn.args.args + fn.args.kwonlyargs if a.arg != "self"}
    for node in ast.walk(fn):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return sorted(names)


SWAPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Mult,
         ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq}

ONE_WRONG_ENTRY = ("(lambda _r: (_r.reshape(-1).__setitem__(-1, _r.reshape(-1)[-1] * 1.5 + 0.1), _r)[1])"
                   "(__import__('numpy').array(0))")


def mutation_sites(fn):
    """Yield (description, mutate) pairs; ``mutate(node)`` edits a deep copy of the method in place. Sites are
    addressed by their index in ast.walk order, so a copy can be edited at the same node."""
    nodes = list(ast.walk(fn))
    local_names = _locals(fn)
    for i, node in enumerate(nodes):
        line = getattr(node, "lineno", fn.lineno)
        if isinstance(node, ast.BinOp) and type(node.op) in SWAPS:
            new = SWAPS[type(node.op)]
            yield (f"L{line} {type(node.op).__name__}->{new.__name__}", i, ("op", new))
            if isinstance(node.op, (ast.Add, ast.Sub)):
                yield (f"L{line} drop right term of {type(node.op).__name__}", i, ("left",))
                yield (f"L{line} drop left term of {type(node.op).__name__}", i, ("right",))
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAPS:
            new = SWAPS[type(node.ops[0])]
            yield (f"L{line} {type(node.ops[0]).__name__}->{new.__name__}", i, ("cmp", new))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            yield (f"L{line} drop negation", i, ("unneg",))
        elif isinstance(node, ast.AugAssign):
            if isinstance(node.op, ast.Add):
                yield (f"L{line} += -> =", i, ("assign",))
            if type(node.op) in SWAPS:
                yield (f"L{line} {type(node.op).__name__}= -> {SWAPS[type(node.op)].__name__}=", i,
                       ("augop", SWAPS[type(node.op)]))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float) and not isinstance(node.value,
                                                                                                    bool):
            if isinstance(node.value, int):
                yield (f"L{line} constant {node.value}+1", i, ("const", node.value + 1))
                if node.value != 0:
                    yield (f"L{line} constant {node.value}-1", i, ("const", node.value - 1))
            else:
                yield (f"L{line} constant {node.value}*1.001", i, ("const", node.value * 1.001))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "copy"
              and not node.args):
            yield (f"L{line} drop .copy()", i, ("nocopy",))
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in local_names:
            for other in local_names:
                if other != node.id:
                    yield (f"L{line} read {other} instead of {node.id}", i, ("name", other))
        elif isinstance(node, ast.Return) and node.value is not None:
            yield (f"L{line} returned gradient x1.001", i, ("scale", 1.001))
            yield (f"L{line} returned gradient x1.00002", i, ("scale", 1.00002))
            yield (f"L{line} one wrong entry in the returned gradient", i, ("entry",))


class _Replace(ast.NodeTransformer):
    def __init__(self, target, action):
        self.target, self.action = target, action

    def generic_visit(self, node):
        node = super().generic_visit(node)
        if node is not self.target:
            return node
        kind = self.action[0]
        if kind == "op":
            node.op = self.action[1]()
        elif kind == "left":
            return node.left
        elif kind == "right":
            return node.right
        elif kind == "cmp":
            node.ops = [self.action[1]()]
        elif kind == "unneg":
            return node.operand
        elif kind == "assign":
            return ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno)
        elif kind == "augop":
            node.op = self.action[1]()
        elif kind == "const":
            node.value = self.action[1]
        elif kind == "nocopy":
            return node.func.value
        elif kind == "name":
            return ast.Name(id=self.action[1], ctx=ast.Load())
        elif kind == "scale":
            factor = self.action[1]
            if isinstance(node.value, ast.Tuple):
                node.value.elts = [ast.BinOp(e, ast.Mult(), ast.Constant(factor)) for e in node.value.elts]
            else:
                node.value = ast.BinOp(node.value, ast.Mult(), ast.Constant(factor))
        elif kind == "entry":
            call = ast.parse(ONE_WRONG_ENTRY, mode="eval").body
            call.args[0].args = [node.value]          # numpy.array(<returned value>)
            node.value = call
        return node


def generate(pkg_dir, layers, per_layer, max_mutants, seed):
    """All mutants, sampled: a list of dicts (file, class, method, description, source)."""
    files = sorted(os.path.join(pkg_dir, d, f) for d in SCANNED if os.path.isdir(os.path.join(pkg_dir, d))
                   for f in os.listdir(os.path.join(pkg_dir, d)) if f.endswith(".py"))
    if os.path.exists(os.path.join(pkg_dir, "model.py")):
        files.append(os.path.join(pkg_dir, "model.py"))
    by_class = {}
    for path in files:
        source = open(path).read()
        tree = ast.parse(source)
        for cls, fn in backward_methods(tree):
            if layers and cls not in layers:
                continue
            for desc, index, action in mutation_sites(fn):
                by_class.setdefault(cls, []).append((path, cls, fn.name, fn.lineno, desc, index, action))
    rng = random.Random(seed)
    chosen = []
    for cls in sorted(by_class):
        kinds = {}
        for site in by_class[cls]:                 # round robin over the kinds of mutation, shuffled within
            action = site[-1]
            kinds.setdefault(action[0] if action[0] != "scale" else f"scale {action[1]}", []).append(site)
        for sites in kinds.values():
            rng.shuffle(sites)
        queues = [kinds[k] for k in sorted(kinds)]
        rng.shuffle(queues)
        picked = []
        while len(picked) < per_layer and any(queues):
            for q in queues:
                if q and len(picked) < per_layer:
                    picked.append(q.pop())
        chosen += picked
    rng.shuffle(chosen)
    chosen = chosen[:max_mutants]
    mutants = []
    for path, cls, method, lineno, desc, index, action in chosen:
        tree = ast.parse(open(path).read())
        fn = next(f for c, f in backward_methods(tree) if c == cls and f.name == method and f.lineno == lineno)
        target = list(ast.walk(fn))[index]
        new_fn = _Replace(target, action).visit(fn)
        ast.fix_missing_locations(new_fn)
        try:
            source = ast.unparse(tree)
        except Exception:           # noqa: BLE001 - an unparsable mutant is simply skipped
            continue
        mutants.append(dict(file=os.path.relpath(path, pkg_dir), cls=cls, method=method, desc=desc,
                            source=source))
    return mutants, {c: len(s) for c, s in by_class.items()}


# ----------------------------------------------------------------------------------------------------------
# Test cases (built from whichever copy of the package is imported)
# ----------------------------------------------------------------------------------------------------------
def _bn(nn, rng, c=3, train=True, relu=False):
    cls = getattr(nn, "BatchNormReLU2d", None) if relu else nn.BatchNorm2d
    bn = cls(c, dtype=np.float64)
    bn.weight.data[...] = rng.uniform(0.5, 1.5, c)
    bn.bias.data[...] = rng.standard_normal(c)
    bn.running_mean[...] = rng.standard_normal(c)
    bn.running_var[...] = rng.uniform(0.5, 2.0, c)
    return bn.train(train)


def cases(pkg):
    """(label, builder) pairs; builder() -> (module, x) with a fixed seed, so repeated builds are identical.
    The layer cases run on ``numpy_densenet.nn`` and, when the package has one, on the fast tier
    ``numpy_densenet.fast`` (same class names); a case whose class a tier lacks is left out."""
    out = _layer_cases(pkg, pkg.nn, "")
    fast = getattr(pkg, "fast", None)
    if fast is not None and fast is not pkg.nn:
        out += _layer_cases(pkg, _Fallback(fast, pkg.nn), "fast ")
    return out + _model_cases(pkg)


class _Fallback:
    """The fast tier's classes, with the plain tier's for what it does not define (Flatten, Concat, ...)."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __getattr__(self, name):
        value = getattr(self.first, name, None)
        return value if value is not None else getattr(self.second, name)


def _layer_cases(pkg, nn, tag):
    F = np.float64

    def r(s):
        return np.random.default_rng(s)

    out = [
        ("Conv2d 3x3 s1 p1", lambda: (nn.Conv2d(2, 3, 3, padding=1, dtype=F, generator=r(1)),
                                      r(2).standard_normal((2, 2, 5, 5)))),
        ("Conv2d 3x3 s2 p1 d1", lambda: (nn.Conv2d(2, 3, 3, stride=2, padding=1, dtype=F, generator=r(1)),
                                         r(2).standard_normal((2, 2, 6, 5)))),
        ("Conv2d (2,3) d2 no bias", lambda: (nn.Conv2d(2, 2, (2, 3), stride=(1, 2), padding=(1, 2), dilation=2,
                                                       bias=False, dtype=F, generator=r(1)),
                                             r(2).standard_normal((2, 2, 6, 7)))),
        ("Conv2d 1x1", lambda: (nn.Conv2d(3, 2, 1, dtype=F, generator=r(1)), r(2).standard_normal((2, 3, 3, 4)))),
        ("BatchNorm2d train", lambda: (_bn(nn, r(1)), r(2).standard_normal((3, 3, 3, 2)) * 2 + 1)),
        ("BatchNorm2d eval", lambda: (_bn(nn, r(1), train=False), r(2).standard_normal((3, 3, 3, 2)))),
        ("ReLU", lambda: (nn.ReLU(), r(2).standard_normal((2, 3, 3, 3)))),
        ("MaxPool2d 3 s2 p1", lambda: (nn.MaxPool2d(3, 2, 1), r(2).standard_normal((2, 2, 6, 5)))),
        ("MaxPool2d 2", lambda: (nn.MaxPool2d(2), r(2).standard_normal((2, 2, 4, 4)))),
        ("AvgPool2d 2", lambda: (nn.AvgPool2d(2), r(2).standard_normal((2, 2, 4, 5)))),
        ("AvgPool2d 3 s2 p1 nopad", lambda: (nn.AvgPool2d(3, 2, 1, count_include_pad=False),
                                             r(2).standard_normal((2, 2, 5, 6)))),
        ("AdaptiveAvgPool2d (2,3)", lambda: (nn.AdaptiveAvgPool2d((2, 3)), r(2).standard_normal((2, 2, 5, 7)))),
        ("AdaptiveAvgPool2d 1", lambda: (nn.AdaptiveAvgPool2d(1), r(2).standard_normal((2, 3, 3, 2)))),
        ("Linear", lambda: (nn.Linear(4, 3, dtype=F, generator=r(1)), r(2).standard_normal((3, 4)))),
        ("Dropout train", lambda: (nn.Dropout(0.4, seed=3), r(2).standard_normal((2, 3, 3, 2)))),
        ("Flatten", lambda: (nn.Flatten(), r(2).standard_normal((2, 3, 2, 2)))),
        ("CrossEntropyLoss smoothing", lambda: (nn.CrossEntropyLoss(label_smoothing=0.1),
                                                (r(2).standard_normal((4, 5)) * 2, r(3).integers(0, 5, 4)))),
        ("CrossEntropyLoss sum", lambda: (nn.CrossEntropyLoss(reduction="sum"),
                                          (r(2).standard_normal((3, 4)), r(3).integers(0, 4, 3)))),
        ("Concat", lambda: (nn.Concat(), tuple(r(i).standard_normal((2, c, 2, 3)) for i, c in enumerate((1, 3, 2))))),
        ("Sequential conv-bn-relu-pool", lambda: (nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, dtype=F,
                                                                          generator=r(1)),
                                                                _bn(nn, r(4)), nn.ReLU(), nn.AvgPool2d(2)),
                                                  r(2).standard_normal((2, 2, 4, 4)))),
    ]
    if getattr(nn, "BatchNormReLU2d", None) is not None:
        out.append(("BatchNormReLU2d train", lambda: (_bn(nn, r(1), relu=True),
                                                      r(2).standard_normal((3, 3, 3, 2)) * 2 + 0.5)))
    kept = []
    for label, build in out:
        try:
            build()
        except Exception:  # noqa: BLE001 - a tier without this layer
            continue
        kept.append((tag + label, build))
    return kept


def _model_cases(pkg):
    F = np.float64

    def r(s):
        return np.random.default_rng(s)

    out = []
    model = getattr(pkg, "model", None)
    # The DenseNet's pieces on their own (a dense block's backward must not scale the gradient it was handed:
    # inside a DenseNet that array is its own, so only a standalone case shows a dropped .copy()). Skipped if
    # the constructors change.
    for label, build in (
            ("DenseBlock", lambda: (model.DenseBlock(2, 3, 2, bn_size=2, dtype=F, rng=r(1)),
                                    r(2).standard_normal((2, 3, 4, 4)))),
            ("DenseLayer", lambda: (model.DenseLayer(3, 2, bn_size=2, dtype=F, rng=r(1)),
                                    r(2).standard_normal((2, 3, 4, 4)))),
            ("Transition", lambda: (model.Transition(4, 2, dtype=F, rng=r(1)), r(2).standard_normal((2, 4, 4, 4))))):
        try:
            build()
        except Exception:  # noqa: BLE001
            continue
        out.append((label, build))
    if model is not None and hasattr(model, "DenseNet"):
        out.append(("tiny DenseNet-BC", lambda: (model.DenseNet(4, (2, 1), 6, bn_size=2, num_classes=3,
                                                                stem="cifar", seed=1).double(),
                                                 r(2).standard_normal((2, 3, 6, 6)))))
        out.append(("tiny DenseNet, ImageNet stem, dropout", lambda: (
            model.DenseNet(4, (1, 1), 6, bn_size=None, num_classes=3, stem="imagenet", drop_rate=0.2,
                           compression=1.0, seed=2).double(), r(2).standard_normal((2, 3, 9, 9)))))
    return out


def _fresh(pkg_parent):
    """Import the copy of the package from scratch."""
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()
    pkg = importlib.import_module(PACKAGE)
    importlib.import_module(PACKAGE + ".model")
    importlib.import_module(PACKAGE + ".gradcheck")
    assert os.path.dirname(os.path.dirname(pkg.__file__)) == pkg_parent, pkg.__file__
    return pkg


def _g_for(module, x):
    m = copy.deepcopy(module)
    out = np.asarray(m(*(x if isinstance(x, tuple) else (x,))))
    return np.random.default_rng(7).standard_normal(out.shape)


def behaviour(module, x, g):
    """Two backwards without zero_grad and the upstream gradient afterwards: everything the protocol sees."""
    xs = x if isinstance(x, tuple) else (x,)
    m = copy.deepcopy(module)
    gens = [(s, copy.deepcopy(s.generator.bit_generator.state)) for s in m.modules()
            if isinstance(getattr(s, "generator", None), np.random.Generator)]
    record = []
    m.zero_grad()
    for _ in range(2):
        for s, state in gens:
            s.generator.bit_generator.state = copy.deepcopy(state)
        m(*[a.copy() for a in xs])
        upstream = g.copy() if g.shape else g[()]
        grads = m.backward(upstream)
        grads = grads if isinstance(grads, (tuple, list)) else (grads,)
        record += [np.array(d, dtype=np.float64) for d in grads if d is not None]
        record += [np.array(p.grad, dtype=np.float64) for p in m.parameters()]
        record.append(np.array(upstream, dtype=np.float64))
    return record


class WrongShape(Exception):
    """The mutant's backward returns gradients of the wrong number or shape: any caller fails loudly."""


def difference(ref, mut):
    if len(ref) != len(mut) or any(a.shape != b.shape for a, b in zip(ref, mut)):
        raise WrongShape()
    worst = 0.0
    for a, b in zip(ref, mut):
        if not np.all(np.isfinite(b)):
            return float("inf")
        d = float(np.abs(a - b).max(initial=0.0))
        if d:
            worst = max(worst, d / max(float(np.abs(a).max(initial=0.0)), 1e-300))
    return worst


# ----------------------------------------------------------------------------------------------------------
# Oracles
# ----------------------------------------------------------------------------------------------------------
def torch_gradcheck(module, x, checker=None, **kwargs):
    """torch.autograd.gradcheck on a torch.autograd.Function wrapping the numpy module, in float64: inputs
    are the float input(s) and every parameter. Each call resets Dropout generators and buffers.
    ``checker(fn, tensors) -> bool``, if given, runs instead of torch.autograd.gradcheck (see check_torch_passes)."""
    import torch
    xs = x if isinstance(x, tuple) else (x,)
    m = copy.deepcopy(module)
    params = list(m.parameters())
    float_slots = [i for i, a in enumerate(xs) if a.dtype.kind == "f"]
    gens = [(s, copy.deepcopy(s.generator.bit_generator.state)) for s in m.modules()
            if isinstance(getattr(s, "generator", None), np.random.Generator)]
    buffers = [(s, n, np.array(getattr(s, n), copy=True)) for s in m.modules() for n in s._buffers]

    def run_forward(arrays):
        for s, state in gens:
            s.generator.bit_generator.state = copy.deepcopy(state)
        for s, n, v in buffers:
            object.__setattr__(s, n, v.copy())
        full = list(xs)
        for slot, a in zip(float_slots, arrays[:len(float_slots)]):
            full[slot] = a
        for p, a in zip(params, arrays[len(float_slots):]):
            p.data = a.copy()
        return np.asarray(m(*[a.copy() if a.dtype.kind == "f" else a for a in full]), dtype=np.float64)

    class Wrapped(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *tensors):
            arrays = [t.detach().numpy().copy() for t in tensors]
            ctx.arrays = arrays
            return torch.from_numpy(run_forward(arrays).copy())

        @staticmethod
        def backward(ctx, grad_out):
            run_forward(ctx.arrays)
            m.zero_grad()
            g = grad_out.detach().numpy().astype(np.float64).copy()
            grads = m.backward(g if g.shape else g[()])
            grads = grads if isinstance(grads, (tuple, list)) else (grads,)
            out = [torch.from_numpy(np.array(grads[k], dtype=np.float64)) for k in range(len(float_slots))]
            out += [torch.from_numpy(np.array(p.grad, dtype=np.float64)) for p in params]
            return tuple(out)

    tensors = [torch.tensor(xs[i], dtype=torch.float64, requires_grad=True) for i in float_slots]
    tensors += [torch.tensor(p.data, dtype=torch.float64, requires_grad=True) for p in params]
    try:
        if checker is not None:
            return checker(Wrapped.apply, tuple(tensors))
        return bool(torch.autograd.gradcheck(Wrapped.apply, tuple(tensors), raise_exception=False, **kwargs))
    finally:
        for s, n, v in buffers:
            object.__setattr__(s, n, v)


def check_torch_passes(module, x):
    """Our check_torch (the mutated copy's, at its defaults: mode full) on the very torch.autograd.Function wrapper
    that torch.autograd.gradcheck gets: what a torch user gains by switching checkers (issue 20)."""
    check_torch = sys.modules[PACKAGE + ".gradcheck"].check_torch
    return torch_gradcheck(module, x, checker=lambda fn, tensors: check_torch(fn, *tensors).passed)


class _Timeout(Exception):
    pass


def _alarm(*_):
    raise _Timeout()


def oracle_verdicts(pkg, module, x, modes, timeout, details=None):
    """{oracle: "caught" | "passed" | "raised"} for one module and input; ``details`` collects the report of
    a failing gradcheck (or the exception) per mode."""
    out = {}
    for mode in modes:
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(timeout)
        try:
            if mode in GC_MODES:
                result = sys.modules[PACKAGE + ".gradcheck"].gradcheck(module, x, mode=mode)
                passed = result.passed
                if details is not None and not passed:
                    details[mode] = result.table()
            elif mode == "torch":
                passed = torch_gradcheck(module, x)
            elif mode == "check_torch":
                passed = check_torch_passes(module, x)
            else:
                raise ValueError(f"unknown mode {mode!r}")
            out[mode] = "passed" if passed else "caught"
        except _Timeout:
            out[mode] = "raised"
        except Exception as e:  # noqa: BLE001 - an oracle that raises on a mutant has flagged it
            out[mode] = "raised"
            if details is not None:
                details[mode] = f"{type(e).__name__}: {e}"
        finally:
            signal.alarm(0)
    return out


# ----------------------------------------------------------------------------------------------------------
# False alarms: correct layers on random geometries with ties and zeros injected
# ----------------------------------------------------------------------------------------------------------
def _ties_and_zeros(rng, x, magnitude):
    x = x * magnitude
    flat = x.reshape(-1)
    k = max(1, flat.size // 5)
    flat[rng.choice(flat.size, k, replace=False)] = 0.0                       # exact zeros
    src = rng.choice(flat.size, k, replace=False)
    flat[rng.choice(flat.size, k, replace=False)] = flat[src]                  # exact ties
    return x


def random_case(pkg, rng):
    nn = pkg.nn
    F = np.float64
    kind = rng.choice(["conv", "bn", "bn_eval", "relu", "maxpool", "avgpool", "adaptive", "linear", "dropout",
                       "ce", "concat", "relu_maxpool"])
    mag = 10.0 ** rng.uniform(-6, 6)
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    h, w = int(rng.integers(3, 8)), int(rng.integers(3, 8))
    x = rng.standard_normal((n, c, h, w))
    if kind == "conv":
        k = int(rng.integers(1, 4))
        s, p, d = int(rng.integers(1, 3)), int(rng.integers(0, 2)), int(rng.integers(1, 3))
        if (h + 2 * p - d * (k - 1) - 1) < 0 or (w + 2 * p - d * (k - 1) - 1) < 0:
            k, d = 1, 1
        m = nn.Conv2d(c, int(rng.integers(1, 4)), k, stride=s, padding=p, dilation=d, dtype=F, generator=rng)
    elif kind in ("bn", "bn_eval"):
        n = max(n, 2)
        x = rng.standard_normal((n, c, h, w))
        m = _bn(nn, rng, c, train=kind == "bn")
        offset = 10.0 ** rng.uniform(-6, 4) * rng.choice([-1, 1])
        return kind, m, offset + _ties_and_zeros(rng, x, mag if mag < 1e3 else 1.0)
    elif kind == "relu":
        m = nn.ReLU()
    elif kind in ("maxpool", "relu_maxpool"):
        k = int(rng.integers(2, 4))
        m = nn.MaxPool2d(k, stride=int(rng.integers(1, k + 1)), padding=int(rng.integers(0, k // 2 + 1)))
        x = rng.standard_normal((n, c, max(h, k), max(w, k)))
        if kind == "relu_maxpool":
            return kind, m, np.maximum(_ties_and_zeros(rng, x, mag), 0.0)   # whole windows of exact zeros
    elif kind == "avgpool":
        k = int(rng.integers(1, 4))
        m = nn.AvgPool2d(k, stride=int(rng.integers(1, k + 1)), padding=int(rng.integers(0, k // 2 + 1)),
                         count_include_pad=bool(rng.integers(0, 2)))
        x = rng.standard_normal((n, c, max(h, k), max(w, k)))
    elif kind == "adaptive":
        m = nn.AdaptiveAvgPool2d((int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))))
    elif kind == "linear":
        fin = int(rng.integers(1, 6))
        m = nn.Linear(fin, int(rng.integers(1, 5)), dtype=F, generator=rng)
        x = rng.standard_normal((n + 1, fin))
    elif kind == "dropout":
        m = nn.Dropout(float(rng.uniform(0.1, 0.7)), seed=int(rng.integers(1 << 30)))
    elif kind == "ce":
        k = int(rng.integers(2, 6))
        m = nn.CrossEntropyLoss(label_smoothing=float(rng.choice([0.0, 0.1])))
        logits = _ties_and_zeros(rng, rng.standard_normal((n + 2, k)), min(mag, 30.0))
        return kind, m, (logits, rng.integers(0, k, n + 2))
    else:   # concat
        m = nn.Concat()
        return kind, m, tuple(_ties_and_zeros(rng, rng.standard_normal((n, int(rng.integers(1, 3)), h, w)), mag)
                              for _ in range(int(rng.integers(1, 4))))
    return kind, m, _ties_and_zeros(rng, x, mag)


# ----------------------------------------------------------------------------------------------------------
# The study's kinds (issue 23): targeted source edits, their default-case and test-suite verdicts
# ----------------------------------------------------------------------------------------------------------
# (kind, file under numpy_densenet/, what the bug does, text, replacement, which occurrence of the text): bugs of
# the kinds an independent mutation study wrote by hand, none of which the AST operators above generate. An
# operator whose text is no longer in the file (the code changed) is reported as stale, never applied elsewhere.
CROP = "ph:ph + H, pw:pw + W"
STUDY_OPERATORS = [
    ("asymmetric padding", "fast/conv.py", "col2im crops the rows at pw", "dx[:, n] = dxp[:, :, " + CROP,
     "dx[:, n] = dxp[:, :, pw:pw + H, pw:pw + W", 0),
    ("asymmetric padding", "nn/conv.py", "col2im crops the rows at pw", "return dxp[:, :, " + CROP,
     "return dxp[:, :, pw:pw + H, pw:pw + W", 0),
    ("asymmetric padding", "nn/pooling.py", "MaxPool2d crops the rows at pw", "return dxp[:, :, " + CROP,
     "return dxp[:, :, pw:pw + H, pw:pw + W", 0),
    ("asymmetric padding", "nn/pooling.py", "AvgPool2d crops the rows at pw", "return dxp[:, :, " + CROP,
     "return dxp[:, :, pw:pw + H, pw:pw + W", 1),
    ("asymmetric padding", "fast/pooling.py", "fast MaxPool2d crops the rows at pw", "dtype)[:, :, " + CROP,
     "dtype)[:, :, pw:pw + H, pw:pw + W", 0),
    ("asymmetric padding", "fast/pooling.py", "fast AvgPool2d crops the rows at pw",
     "ascontiguousarray(dxp[:, :, " + CROP, "ascontiguousarray(dxp[:, :, pw:pw + H, pw:pw + W", 0),
    ("dilation", "fast/conv.py", "col2im adds back without dilation", "window_slices(i, j, (Ho, Wo), stride, dilation)",
     "window_slices(i, j, (Ho, Wo), stride, (1, 1))", 1),
    ("dilation", "nn/conv.py", "col2im starts kernel row i at i * dw", "rows = slice(i * dh, i * dh + sh",
     "rows = slice(i * dw, i * dw + sh", 1),
    ("stride", "fast/pooling.py", "the stride phases interleaved back transposed", "dxp[:, :, a::sh, b::sw] = d",
     "dxp[:, :, b::sh, a::sw] = d", 0),
    ("split offset", "fast/densenet.py", "a layer's input gradient added one channel up",
     "add_into(grad[:start], dinput)", "add_into(grad[1:start + 1], dinput)", 0),
    ("split offset", "fast/densenet.py", "a layer reads the gradient one channel down",
     "backward_cnhw(grad[start:stop], workspace)", "backward_cnhw(grad[start - 1:stop - 1], workspace)", 0),
    ("split offset", "fast/densenet.py", "the block returns the channels from 1", "return grad[:self.offsets[1]]",
     "return grad[1:self.offsets[1] + 1]", 0),
    ("Bessel's correction", "nn/norm.py", "dx divided by M - 1", "return scale / M * (M * dout",
     "return scale / (M - 1) * (M * dout", 0),
    ("Bessel's correction", "fast/norm.py", "the variance path divided by M - 1", "dgamma / M",
     "dgamma / (M - 1)", 0),
    ("Bessel's correction", "fast/norm.py", "the mean path divided by M - 1", "a[c] * dbeta / M)",
     "a[c] * dbeta / (M - 1))", 0),
    ("eval BN with batch statistics", "nn/norm.py", "eval mode backward by the batch formula",
     "self.running_mean, self.running_var, None",
     "self.running_mean, self.running_var, x.size // self.num_features", 0),
    ("eval BN with batch statistics", "fast/norm.py", "eval mode backward by the batch formula",
     "self.running_mean, self.running_var, None", "self.running_mean, self.running_var, M", 0),
    ("thread chunk", "fast/conv.py", "col2im: every chunk adds the first chunk's images",
     "+= cols[:, i, j, n]", "+= cols[:, i, j, :n.stop - n.start]", 0),
    ("thread chunk", "fast/conv.py", "shift backward: every chunk reads the first chunk's gradient",
     "df = dout[:, n].reshape(O, L)", "df = dout[:, :n.stop - n.start].reshape(O, L)", 0),
    ("thread chunk", "fast/conv.py", "shift backward: every chunk's dW from the first chunk's input",
     "matmul(G, x[:, n].reshape(C, -1).T", "matmul(G, x[:, :n.stop - n.start].reshape(C, -1).T", 0),
    ("thread chunk", "fast/pooling.py", "every block of channels routes the first block's gradient",
     "+= dout[c] * (argmax[c] == k)", "+= dout[:c.stop - c.start] * (argmax[c] == k)", 0),
    ("thread chunk", "fast/norm.py", "every block of channels reads the first block's gradient",
     "dy = dout2[c]\n", "dy = dout2[:c.stop - c.start]\n", 0),
    ("thread chunk", "fast/norm.py", "every block's dx written into the first block", "out=dx[c])",
     "out=dx[:c.stop - c.start])", 0),
    ("thread chunk", "fast/threads.py", "element-wise pieces all written into the first piece",
     "function(*(f[s] for f in flat))", "function(*(f[s] for f in flat[:-1]), flat[-1][:flat[0][s].size])", 0),
    ("in-place upstream gradient", "nn/activation.py", "ReLU masks its upstream gradient in place",
     "return dout * (y > 0)", "return np.multiply(dout, y > 0, out=dout)", 0),
    ("in-place upstream gradient", "fast/activation.py", "fast ReLU masks its upstream gradient in place",
     "dx = np.empty_like(dout) if out is None else out", "dx = dout", 0),
    ("in-place upstream gradient", "nn/activation.py", "Dropout masks its upstream gradient in place",
     "dx = dout * keep", "dx = np.multiply(dout, keep, out=dout)", 0),
    ("in-place upstream gradient", "model.py", "the plain DenseBlock adds into the split views of its gradient",
     "grads[i] = grads[i] + g", "grads[i] += g", 0),
    ("in-place upstream gradient", "fast/densenet.py", "the fast DenseBlock works in its upstream gradient",
     "grad = dout.copy() if out is None else out", "grad = dout", 0),
    ("narrow argmax", "fast/pooling.py", "max pooling's argmax in 8 bits", "dtype=np.uint16) if is_grad_enabled()",
     "dtype=np.uint8) if is_grad_enabled()", 0),
    ("float32 precision", "fast/norm.py", "d weight without the mean's rounding correction", " + rounding[c] * dbeta)",
     ")", 0),
    ("float32 precision", "fast/norm.py", "the mean path without the rounding correction", "(b * rounding[c] - a[c]",
     "(-a[c]", 0),
    ("float32 precision", "fast/norm.py", "the statistics without their second pass's correction",
     "mean[c] = first.astype(np.float64) + s1", "mean[c] = first.astype(np.float64)", 0),
    ("an option's branch", "nn/loss.py", "reduction='sum' divided by N",
     'scale = dout / N if self.reduction == "mean" else dout', "scale = dout / N", 0),
    ("an option's branch", "nn/loss.py", "label smoothing's uniform share over N", "grad -= e / K", "grad -= e / N", 0),
    ("an option's branch", "model.py", "the plain dense layer's backward skips its dropout",
     "d = self.dropout.backward(dout) if self.drop_rate > 0 else dout", "d = dout", 0),
    ("an option's branch", "fast/densenet.py", "the fast dense layer's backward skips its dropout",
     "d = swap01(self.dropout.backward(swap01(dout))) if self.drop_rate > 0 else dout", "d = dout", 0),
    ("an option's branch", "nn/pooling.py", "AvgPool2d backward ignores count_include_pad=False",
     "share = dout / self.divisor(H, W, dtype)",
     "share = dout / dtype.type(self.kernel_size[0] * self.kernel_size[1])", 0),
    ("an option's branch", "fast/pooling.py", "fast AvgPool2d backward ignores count_include_pad=False",
     "share = dout / divisor", "share = dout / dtype.type(self.kernel_size[0] * self.kernel_size[1])", 0),
    ("an option's branch", "nn/pooling.py", "AdaptiveAvgPool2d backward assumes divisible sizes",
     "area = (rows.stop - rows.start) * (cols.stop - cols.start)",
     "area = max(1, H // self.output_size[0]) * max(1, W // self.output_size[1])", 0),
    ("an option's branch", "fast/pooling.py", "fast AdaptiveAvgPool2d backward assumes divisible sizes",
     "area = (rows.stop - rows.start) * (cols.stop - cols.start)",
     "area = max(1, H // self.output_size[0]) * max(1, W // self.output_size[1])", 0),
    ("ties to the last maximum", "fast/pooling.py", "ties routed to the last maximum",
     "for k, phase, rows, cols in reversed(windows):", "for k, phase, rows, cols in windows:", 0),
    ("ties to the last maximum", "nn/pooling.py", "ties routed to the last maximum",
     "for k, rows, cols in reversed(list(self.windows(Ho, Wo))):", "for k, rows, cols in self.windows(Ho, Wo):", 0),
    ("chunk bounds", "fast/activation.py", "relu_into skips the first value of every 65,536",
     "piece = slice(i, i + zeros.size)", "piece = slice(i + 1, i + zeros.size)", 0),
    ("synchronised BatchNorm", "training/distributed.py", "the plain synchronised backward swaps its two sums",
     "np.stack([dbias, dweight])", "np.stack([dweight, dbias])", 0),
    ("synchronised BatchNorm", "fast/norm.py", "the second pass takes the whole batch's sums swapped",
     "total[0, c], total[1, c])", "total[1, c], total[0, c])", 0),
    ("synchronised BatchNorm", "fast/norm.py", "the first pass stores its sums swapped",
     "local[0, c], local[1, c] = sums(", "local[1, c], local[0, c] = sums(", 0),
]

#: the test files the suite's column runs: first those of the mutated file's folder (-x stops at the first failure),
#: then, if they all pass, the others
STUDY_TEST_FILES = {
    "nn/": ("test_layers.py", "test_fast_tier.py", "test_torch_parity_layers.py", "test_gradcheck_cases.py"),
    "fast/": ("test_fast_tier.py", "test_gradcheck_cases.py", "test_threads.py", "test_layers.py",
              "test_torch_parity_layers.py"),
    "model.py": ("test_model.py", "test_fast_tier.py", "test_gradcheck_cases.py"),
    "training/": ("test_gradcheck_cases.py", "test_distributed.py"),
    "": ("test_fast_tier.py", "test_layers.py", "test_torch_parity_layers.py", "test_gradcheck_cases.py",
         "test_model.py", "test_model_parity.py", "test_threads.py", "test_performance_paths.py",
         "test_distributed.py", "test_state_dict.py", "test_flow.py", "test_gradcheck.py",
         "test_gradcheck_hardening.py"),
}


def study_mutants(pkg_dir):
    """The STUDY_OPERATORS applied one at a time: (mutants as dicts with their source, stale operators)."""
    mutants, stale = [], []
    for kind, file, desc, old, new, nth in STUDY_OPERATORS:
        source = open(os.path.join(pkg_dir, file)).read()
        at = -1
        for _ in range(nth + 1):
            at = source.find(old, at + 1)
            if at < 0:
                break
        if at < 0:
            stale.append(f"{file}: {desc}")
            continue
        mutants.append(dict(kind=kind, file=file, cls=kind, method="", desc=desc,
                            source=source[:at] + new + source[at + len(old):]))
    return mutants, stale


def default_cases(pkg):
    """The package's own default cases (layers, models with --thorough, tests/sync_cases.py's synchronised
    BatchNorm): [(oracle mode, Case)], built from a fixed seed, so every import of a mutant builds the same."""
    cases_module = sys.modules[PACKAGE + ".gradcheck.cases"]
    rng = np.random.default_rng(0)
    out = [("full", c) for c in cases_module.layer_cases(rng)]
    out += [("directional", c) for c in cases_module.model_cases(rng, thorough=True)]
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    try:
        sys.modules.pop("sync_cases", None)
        out += [("directional", c) for c in importlib.import_module("sync_cases").sync_cases(rng)]
    finally:
        sys.path.remove(os.path.join(ROOT, "tests"))
    return out


def _on_threads(pkg, threads, fn, *args):
    """fn(*args) with the package copy's thread count set to ``threads`` (if given), restored after."""
    fast = sys.modules[PACKAGE + ".fast"]
    before = fast.get_num_threads()
    if threads:
        fast.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        fast.set_num_threads(before)


def _float32_copy(module, x):
    xs = tuple(a.astype(np.float32) if a.dtype.kind == "f" else a for a in (x if isinstance(x, tuple) else (x,)))
    return copy.deepcopy(module).float(), xs if isinstance(x, tuple) else xs[0]


def default_behaviours(pkg, case_list):
    """{label: (g, behaviour in float64, behaviour in float32)} of every default case."""
    out = {}
    for _, case in case_list:
        module, x = copy.deepcopy(case.module).double(), case.x
        g = _g_for(module, x)
        m32, x32 = _float32_copy(case.module, x)
        out[case.label] = (g, _on_threads(pkg, case.threads, behaviour, module, x, g),
                           _on_threads(pkg, case.threads, behaviour, m32, x32, g.astype(np.float32)))
    return out


def default_case_verdict(pkg, case_list, applicable, timeout):
    """"caught" if a default case whose behaviour the mutant changed (any, for ``applicable`` None) fails its
    check (as the command line runs it, with float32=True) or raises; else "passed". Also the label of the case
    that caught it."""
    run_case = sys.modules[PACKAGE + ".gradcheck.cases"].run_case
    for mode, case in case_list:
        if applicable is not None and case.label not in applicable:
            continue
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(timeout)
        try:
            passed = run_case(case, mode=mode, float32=True).passed
        except Exception:  # noqa: BLE001 - raising on a mutant is catching it (a timeout too)
            passed = False
        finally:
            signal.alarm(0)
        if not passed:
            return "caught", case.label
    return "passed", ""


def test_suite_verdict(tmp, mutated_file, timeout):
    """Run STUDY_TEST_FILES against the package copy in ``tmp``, stopping at the first failure: the files of the
    mutated file's folder, then the others. ("caught" or "passed", the first failing test, the seconds taken)."""
    import subprocess
    env = dict(os.environ, PYTHONPATH=tmp, PYTHONDONTWRITEBYTECODE="1", HYPOTHESIS_PROFILE="ci")
    first = next(files for prefix, files in STUDY_TEST_FILES.items() if prefix and mutated_file.startswith(prefix))
    start = time.perf_counter()
    for files in (first, [f for f in STUDY_TEST_FILES[""] if f not in first]):
        try:
            proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-n", "2", "-p", "no:cacheprovider",
                                   *[os.path.join(ROOT, "tests", f) for f in files]],
                                  cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return "caught", "timeout", time.perf_counter() - start
        if proc.returncode != 0:
            failed = [line.split(" - ")[0] for line in proc.stdout.splitlines()
                      if line.startswith(("FAILED ", "ERROR ")) and "::" in line]
            return "caught", (failed or proc.stdout.strip().splitlines()[-1:] or [""])[0], time.perf_counter() - start
    return "passed", "", time.perf_counter() - start


def study(a, modes):
    """--study: every STUDY_OPERATORS mutant; valid when it changes a result of the benchmark's cases or of the
    default cases (float64 or float32); its verdicts: gradcheck's modes on the benchmark's cases, the default
    cases as the command line runs them (float32=True), and, with --tests, the test suite."""
    tmp = tempfile.mkdtemp(prefix="mutation-study-")
    records = []
    try:
        pkg_dir = os.path.join(tmp, PACKAGE)
        shutil.copytree(os.path.join(ROOT, PACKAGE), pkg_dir, ignore=shutil.ignore_patterns("__pycache__"))
        sys.path.insert(0, tmp)
        start = time.perf_counter()
        mutants, stale = study_mutants(pkg_dir)
        pkg = _fresh(tmp)
        bench = {label: (g_, behaviour(m, x, g_)) for label, build in cases(pkg)
                 for m, x in [build()] for g_ in [_g_for(m, x)]}
        defaults = default_behaviours(pkg, default_cases(pkg))
        for k, mut in enumerate(mutants):
            records.append(study_one(a, modes, tmp, pkg_dir, mut, bench, defaults))
            r = records[-1]
            print(f"[{k + 1}/{len(mutants)}] {r['kind']}: {r['file']} {r['desc']}: {r['status']}"
                  + (f", {r['verdicts']}" if r["status"] == "valid" else ""), flush=True)
        seconds = time.perf_counter() - start
    finally:
        sys.path.remove(tmp) if tmp in sys.path else None
        shutil.rmtree(tmp, ignore_errors=True)
    summary = study_summary(records, stale, modes, a, seconds)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(dict(args=vars(a), modes=modes, stale=stale, mutants=records, seconds=seconds), f, indent=1,
                  default=float)
    with open(a.out + ".md", "w") as f:
        f.write(summary)
    print(summary)


def study_one(a, modes, tmp, pkg_dir, mut, bench, defaults):
    """One study mutant written into the copy: its status and verdicts (the file is restored after)."""
    path = os.path.join(pkg_dir, mut["file"])
    original = open(path).read()
    rec = {k: v for k, v in mut.items() if k != "source"}
    with open(path, "w") as f:
        f.write(mut["source"])
    try:
        mpkg = _fresh(tmp)
        changed, worst = _changed_cases(mpkg, a, bench, defaults)
        if not changed["bench"] and not changed["default"]:
            rec.update(status="equivalent or crash", error=worst)
            return rec
        rec.update(status="valid", error=worst, cases=sorted(changed["default"])[:5])
        verdicts = {m: "passed" for m in modes}
        for label, build in cases(mpkg):
            pending = [m for m in modes if verdicts[m] == "passed"]
            if label in changed["bench"] and pending:
                module, x = build()
                verdicts.update(oracle_verdicts(mpkg, module, x, pending, a.timeout))
        verdicts["default cases"], rec["caught by"] = default_case_verdict(mpkg, default_cases(mpkg),
                                                                           changed["default"], a.timeout)
        if a.tests:
            verdicts["test suite"], rec["test"], rec["test seconds"] = test_suite_verdict(tmp, mut["file"],
                                                                                          a.tests_timeout)
        rec["verdicts"] = verdicts
        return rec
    except Exception as e:  # noqa: BLE001 - an import that fails: the mutant crashes everywhere
        rec.update(status="equivalent or crash", error=float("nan"), why=f"{type(e).__name__}: {e}")
        return rec
    finally:
        with open(path, "w") as f:
            f.write(original)


def _changed_cases(mpkg, a, bench, defaults):
    """The labels of the benchmark's and the default cases whose results the imported mutant changes, and its
    largest relative error."""
    changed, worst = {"bench": set(), "default": set()}, 0.0
    for label, build in cases(mpkg):
        module, x = build()
        err = _difference_or_nan(lambda: behaviour(module, x, bench[label][0]), bench[label][1], a.timeout)
        if err != 0:
            changed["bench"].add(label)
            worst = max(worst, err) if err == err else worst
    for _, case in default_cases(mpkg):
        g, ref64, ref32 = defaults[case.label]
        m32, x32 = _float32_copy(case.module, case.x)
        for module, x, gg, ref in ((copy.deepcopy(case.module).double(), case.x, g, ref64),
                                   (m32, x32, g.astype(np.float32), ref32)):
            err = _difference_or_nan(lambda: _on_threads(mpkg, case.threads, behaviour, module, x, gg), ref,
                                     a.timeout)
            if err != 0:
                changed["default"].add(case.label)
                worst = max(worst, err) if err == err else worst
    return changed, worst


def _difference_or_nan(run, reference, timeout):
    """difference(reference, run()); 0 for a wrong shape or a crash (a loud failure: not a silent wrong result)."""
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout)
    try:
        return difference(reference, run())
    except Exception:  # noqa: BLE001
        return 0.0
    finally:
        signal.alarm(0)


def study_summary(records, stale, modes, a, seconds):
    valid = [r for r in records if r["status"] == "valid"]
    oracles = list(modes) + ["default cases"] + (["test suite"] if a.tests else [])
    lines = [f"Study kinds (issue 23): {len(records)} mutants from {len(STUDY_OPERATORS)} operators "
             f"({len(stale)} stale), {len(valid)} valid (they change a result of the benchmark's or the default "
             f"cases, in float64 or float32). {seconds:.0f} s.", "",
             "Command: `python benchmarks/bench_mutation.py --study" + (" --tests" if a.tests else "") + "`", "",
             "| kind | valid | " + " | ".join(oracles) + " |", "|---|---|" + "---|" * len(oracles)]
    kinds = {}
    for r in valid:
        kinds.setdefault(r["kind"], []).append(r)
    for kind, rs in list(kinds.items()) + [("**all**", valid)]:
        cells = [f"{sum(r['verdicts'][m] != 'passed' for r in rs)}/{len(rs)}" for m in oracles]
        lines.append(f"| {kind} | {len(rs)} | " + " | ".join(cells) + " |")
    lines += ["", "Mutants (verdicts: caught / passed):", ""]
    for r in records:
        if r["status"] != "valid":
            lines.append(f"- {r['file']}: {r['desc']}: {r['status']}")
            continue
        missed = [m for m in oracles if r["verdicts"][m] == "passed"]
        lines.append(f"- {r['file']}: {r['desc']} (error {r['error']:.1e}): "
                     + ("caught by every oracle" if not missed else "missed by " + ", ".join(missed))
                     + (f"; default case: {r['caught by']}" if r.get("caught by") else "")
                     + (f"; test: {r['test']} ({r['test seconds']:.0f} s)" if a.tests else ""))
    lines += [f"- stale operator: {s}" for s in stale]
    return "\n".join(lines) + "\n"


def bn_relu_tie_case(pkg, k):
    """A BatchNorm -> ReLU whose output is exactly 0 at tied entries (issue 23's false alarm): integer inputs
    symmetric around an exact batch mean of 0, bias 0, weights of either sign; the plain pair and the fast fused
    layer in turn."""
    rng = np.random.default_rng([k, 23])
    n, c, h, w = int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(2, 4)), int(rng.integers(2, 4))
    half = rng.integers(-2, 3, (n, c, h, w)).astype(np.float64)
    x = np.concatenate([half, -half])
    fused = getattr(getattr(pkg, "fast", None), "BatchNormReLU2d", None)
    bn = fused(c, dtype=np.float64) if k % 2 and fused is not None else pkg.nn.BatchNorm2d(c, dtype=np.float64)
    bn.weight.data[...] = rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c)
    module = bn if isinstance(bn, fused or ()) else pkg.nn.Sequential(bn, pkg.nn.ReLU())
    return "bn_relu_ties", module, x


# ----------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------
def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-mutants", type=int, default=400)
    p.add_argument("--per-layer", type=int, default=30, help="at most this many mutants per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", default="", help="comma-separated class names (default: every class)")
    p.add_argument("--modes", default="full,sampled,directional,torch,check_torch",
                   help="oracles: gradcheck modes, 'torch' and 'check_torch' (both skipped when PyTorch is missing) "
                        "and 'default' (the package's default cases, as in --study)")
    p.add_argument("--trials", type=int, default=40, help="random correct-layer cases for the false alarms")
    p.add_argument("--tie-trials", type=int, default=20,
                   help="BatchNorm -> ReLU cases at tied exact zeros added to the false alarms (after --trials)")
    p.add_argument("--timeout", type=int, default=60, help="seconds per oracle run")
    p.add_argument("--out", default=None, help="results file stem (default benchmarks/results/mutation, "
                                                "or mutation_study with --study)")
    p.add_argument("--study", action="store_true", help="the study's kinds (STUDY_OPERATORS) instead of the AST "
                                                        "mutants: benchmark cases, default cases, and with --tests "
                                                        "the test suite")
    p.add_argument("--tests", action="store_true", help="--study: also run the test suite against each mutant "
                                                        "(STUDY_TEST_FILES; hours on 2 busy cores)")
    p.add_argument("--tests-timeout", type=int, default=1200, help="seconds per test-suite run")
    a = p.parse_args()
    a.out = a.out or os.path.join(ROOT, "benchmarks", "results", "mutation_study" if a.study else "mutation")

    modes = [m for m in a.modes.split(",") if m]
    if "torch" in modes or "check_torch" in modes:
        try:
            import torch
            torch.set_num_threads(1)
        except ImportError:
            print("PyTorch is not installed: the torch oracles are skipped", flush=True)
            modes = [m for m in modes if m not in ("torch", "check_torch")]
    if a.study:
        return study(a, modes)
    layers = {s for s in a.layers.split(",") if s}

    tmp = tempfile.mkdtemp(prefix="mutation-")
    try:
        pkg_dir = os.path.join(tmp, PACKAGE)
        shutil.copytree(os.path.join(ROOT, PACKAGE), pkg_dir, ignore=shutil.ignore_patterns("__pycache__"))
        sys.path.insert(0, tmp)
        start = time.perf_counter()
        mutants, sites = generate(pkg_dir, layers, a.per_layer, a.max_mutants, a.seed)
        print(f"{sum(sites.values())} mutation sites in {len(sites)} classes; {len(mutants)} mutants sampled",
              flush=True)

        pkg = _fresh(tmp)
        case_list = cases(pkg)
        references = {}
        for label, build in case_list:
            module, x = build()
            g = _g_for(module, x)
            references[label] = (g, behaviour(module, x, g))
        originals = {}
        records = []
        for k, mut in enumerate(mutants):
            path = os.path.join(pkg_dir, mut["file"])
            originals.setdefault(path, open(path).read())
            with open(path, "w") as f:
                f.write(mut["source"])
            rec = dict(mut)
            del rec["source"]
            try:
                mpkg = _fresh(tmp)
            except Exception as e:  # noqa: BLE001
                rec.update(status="crash", error=float("nan"), why=f"import: {type(e).__name__}")
                records.append(rec)
                with open(path, "w") as f:
                    f.write(originals[path])
                continue
            cls_objects = [getattr(mod, rec["cls"]) for mod in list(sys.modules.values())
                           if getattr(mod, "__name__", "").startswith(PACKAGE) and hasattr(mod, rec["cls"])
                           and isinstance(getattr(mod, rec["cls"]), type)]
            applicable, worst, crashed, shapes = [], 0.0, 0, 0
            for label, build in cases(mpkg):
                module, x = build()
                if not any(isinstance(s, tuple(cls_objects)) for s in module.modules()):
                    continue
                g = references[label][0]
                signal.signal(signal.SIGALRM, _alarm)
                signal.alarm(a.timeout)
                try:
                    err = difference(references[label][1], behaviour(module, x, g))
                except WrongShape:
                    shapes += 1
                    continue
                except Exception:  # noqa: BLE001 - a crashing case
                    crashed += 1
                    continue
                finally:
                    signal.alarm(0)
                if err > 0 or np.isnan(err):
                    applicable.append((label, module, x, err))
                worst = max(worst, err)
            if not applicable:
                rec.update(status="wrong shape" if shapes else "crash" if crashed else "equivalent", error=worst)
            else:
                rec.update(status="valid", error=worst, cases=[c[0] for c in applicable])
                verdicts = {m: "passed" for m in modes}
                for label, module, x, _ in applicable:      # an oracle that caught it skips the other cases
                    pending = [m for m in modes if verdicts[m] == "passed" and m != "default"]
                    if not pending:
                        break
                    verdicts.update(oracle_verdicts(mpkg, module, x, pending, a.timeout))
                if "default" in modes:                      # the package's own default cases, all of them
                    verdicts["default"] = default_case_verdict(mpkg, default_cases(mpkg), None, a.timeout)[0]
                rec["verdicts"] = verdicts
            records.append(rec)
            with open(path, "w") as f:
                f.write(originals[path])
            if rec["status"] == "valid":
                missed = [m for m, v in rec["verdicts"].items() if v == "passed"]
                print(f"[{k + 1}/{len(mutants)}] {rec['cls']}.{rec['method']} {rec['desc']}: error "
                      f"{rec['error']:.1e}" + (f", missed by {', '.join(missed)}" if missed else ""), flush=True)

        # false alarms on the original code
        pkg = _fresh(tmp)
        rng = np.random.default_rng([a.seed, 99])
        alarms = {m: [] for m in modes}
        kinds = {}
        for t in range(a.trials + a.tie_trials):
            kind, module, x = random_case(pkg, rng) if t < a.trials else bn_relu_tie_case(pkg, t - a.trials)
            kinds[kind] = kinds.get(kind, 0) + 1
            details = {}
            for mode, v in oracle_verdicts(pkg, module, x, [m for m in modes if m != "default"], a.timeout,
                                           details).items():
                if v != "passed":
                    alarms[mode].append(dict(trial=t, kind=kind, verdict=v, module=repr(module),
                                             detail=details.get(mode, "")))
                    print(f"false alarm, {mode}, trial {t} ({kind}):\n{details.get(mode, '')}", flush=True)
        if "default" in modes:                              # the default cases themselves, on the correct code
            verdict, label = default_case_verdict(pkg, default_cases(pkg), None, a.timeout)
            if verdict != "passed":
                alarms["default"].append(dict(trial=-1, kind="default case", verdict=verdict, module=label, detail=""))
        seconds = time.perf_counter() - start
    finally:
        sys.path.remove(tmp) if tmp in sys.path else None
        shutil.rmtree(tmp, ignore_errors=True)

    summary = summarise(records, modes, alarms, kinds, a, seconds)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out + ".json", "w") as f:
        json.dump(dict(args=vars(a), modes=modes, sites=sites, mutants=records, false_alarms=alarms,
                       false_alarm_kinds=kinds, summary=summary["numbers"], seconds=seconds), f, indent=1,
                  default=float)
    with open(a.out + ".md", "w") as f:
        f.write(summary["markdown"])
    print(summary["markdown"])


def summarise(records, modes, alarms, kinds, a, seconds):
    valid = [r for r in records if r["status"] == "valid"]
    target = [r for r in valid if not r["error"] < THRESHOLD]
    small = [r for r in valid if r["error"] < THRESHOLD]
    by_cls = {}
    for r in target:
        by_cls.setdefault(r["cls"], []).append(r)
    lines = [f"Mutation study: {len(records)} mutants of the backward methods, "
             f"{sum(r['status'] == 'crash' for r in records)} crashing, "
             f"{sum(r['status'] == 'wrong shape' for r in records)} returning gradients of the wrong shape and "
             f"{sum(r['status'] == 'equivalent' for r in records)} equivalent (dropped), {len(valid)} valid: "
             f"{len(target)} with an error >= {THRESHOLD:g} relative (the table), {len(small)} below. "
             f"{seconds:.0f} s.", "",
             "Command: `python benchmarks/bench_mutation.py " + " ".join(
                 f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k not in ("out",) and v != "")
             + "`", "",
             "| class | valid mutants | " + " | ".join(modes) + " |",
             "|---|---|" + "---|" * len(modes)]

    def cell(rs, mode):
        caught = sum(r["verdicts"].get(mode) != "passed" for r in rs)
        raised = sum(r["verdicts"].get(mode) == "raised" for r in rs)
        return f"{caught}/{len(rs)}" + (f" ({raised} raised)" if raised else ""), caught

    numbers = {}
    for cls in sorted(by_cls):
        rs = by_cls[cls]
        lines.append(f"| {cls} | {len(rs)} | " + " | ".join(cell(rs, m)[0] for m in modes) + " |")
    totals = []
    for m in modes:
        text, caught = cell(target, m)
        numbers[m] = dict(caught=caught, valid=len(target), false_alarms=len(alarms[m]))
        totals.append(f"**{text} = {100.0 * caught / max(len(target), 1):.1f} %**")
    lines.append(f"| **all** | {len(target)} | " + " | ".join(totals) + " |")
    if small:
        lines.append(f"| below {THRESHOLD:g} (not targeted) | {len(small)} | "
                     + " | ".join(cell(small, m)[0] for m in modes) + " |")
    lines.append(f"| false alarms on {a.trials} random correct cases and {a.tie_trials} BN-ReLU tie cases | - | "
                 + " | ".join(str(len(alarms[m])) for m in modes) + " |")
    lines += ["", "Random correct cases: " + ", ".join(f"{k} {v}" for k, v in sorted(kinds.items())) + "."]
    missed = [(r, m) for r in target for m in modes if r["verdicts"].get(m) == "passed"]
    if missed:
        lines += ["", "Missed (error >= threshold):", ""]
        lines += [f"- {m}: {r['cls']}.{r['method']} {r['desc']} (error {r['error']:.1e})" for r, m in missed]
    for m in modes:
        for fa in alarms[m]:
            lines.append(f"- false alarm, {m}: trial {fa['trial']} ({fa['kind']}), {fa['verdict']}")
    return dict(markdown="\n".join(lines) + "\n", numbers=numbers)


if __name__ == "__main__":
    main()
