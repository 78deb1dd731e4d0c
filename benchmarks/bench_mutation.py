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
# Main
# ----------------------------------------------------------------------------------------------------------
def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-mutants", type=int, default=400)
    p.add_argument("--per-layer", type=int, default=30, help="at most this many mutants per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", default="", help="comma-separated class names (default: every class)")
    p.add_argument("--modes", default="full,sampled,directional,torch,check_torch",
                   help="oracles: gradcheck modes, 'torch' and 'check_torch' (both skipped when PyTorch is missing)")
    p.add_argument("--trials", type=int, default=40, help="random correct-layer cases for the false alarms")
    p.add_argument("--timeout", type=int, default=60, help="seconds per oracle run")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "mutation"))
    a = p.parse_args()

    modes = [m for m in a.modes.split(",") if m]
    if "torch" in modes or "check_torch" in modes:
        try:
            import torch
            torch.set_num_threads(1)
        except ImportError:
            print("PyTorch is not installed: the torch oracles are skipped", flush=True)
            modes = [m for m in modes if m not in ("torch", "check_torch")]
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
                    pending = [m for m in modes if verdicts[m] == "passed"]
                    if not pending:
                        break
                    verdicts.update(oracle_verdicts(mpkg, module, x, pending, a.timeout))
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
        for t in range(a.trials):
            kind, module, x = random_case(pkg, rng)
            kinds[kind] = kinds.get(kind, 0) + 1
            details = {}
            for mode, v in oracle_verdicts(pkg, module, x, modes, a.timeout, details).items():
                if v != "passed":
                    alarms[mode].append(dict(trial=t, kind=kind, verdict=v, module=repr(module),
                                             detail=details.get(mode, "")))
                    print(f"false alarm, {mode}, trial {t} ({kind}):\n{details.get(mode, '')}", flush=True)
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
    lines.append(f"| false alarms on {a.trials} random correct cases | - | "
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
