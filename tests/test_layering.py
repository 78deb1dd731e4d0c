"""The package's architecture, kept visible: every import runs one way down the layers below.

    nn, data, optim  <-  model  <-  fast  <-  zoo  <-  io  <-  {gradcheck, training, study, hub}  <-  cli

The imports of every module are parsed (at module level and inside functions) and the test fails on an import
cycle between modules, on an arrow against that order, on an import between two of gradcheck, training, study
and hub, on an import inside a function of anything but an optional dependency, and on a private name (one
starting with ``_``) used outside the module that defines it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "numpy_densenet"
ROOT = "numpy_densenet"

# The layers, lowest first: a unit may import units of a lower rank (and itself), nothing else.
RANK = {"nn": 0, "data": 0, "optim": 0, "model": 1, "fast": 2, "zoo": 3, "io": 4,
        "gradcheck": 5, "training": 5, "study": 5, "hub": 5, ROOT: 6, "cli": 7, "__main__": 8}
# Imports allowed inside a function: optional dependencies, imported only when used.
OPTIONAL = {"matplotlib", "PIL", "mpi4py", "torch", "jax", "dask", "distributed", "threadpoolctl", "sklearn", "ray"}


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module):
    """The layer a module belongs to: numpy_densenet.training.run -> training; the package itself -> ROOT."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def imports(source, module, is_package, known):
    """(target module, imported name or None, inside a function, line) for every import of ours in ``source``,
    and (top-level name, line) of every other import inside a function."""
    ours, inner_other = [], []
    base = module.split(".") if is_package else module.split(".")[:-1]

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == ROOT:
                        ours.append((alias.name, None, in_function, child.lineno))
                    elif in_function:
                        inner_other.append((alias.name.split(".")[0], child.lineno))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    target = ".".join(base[:len(base) - child.level + 1] + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] != ROOT:
                    if in_function:
                        inner_other.append((target.split(".")[0], child.lineno))
                    continue
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    if sub in known:                                   # `from . import fast`: a module
                        ours.append((sub, None, in_function, child.lineno))
                    else:
                        ours.append((target, alias.name, in_function, child.lineno))
            visit(child, inside)

    visit(ast.parse(source), False)
    return ours, inner_other


def private_attribute_uses(source, module_aliases):
    """(alias, attribute, line) for every ``alias._name`` where alias names one of our modules."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases \
                and node.attr.startswith("_") and not node.attr.startswith("__"):
            found.append((node.value.id, node.attr, node.lineno))
    return found


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def arrow_problem(source, target):
    """Why ``source`` may not import ``target`` (module names), or None."""
    a, b = unit(source), unit(target)
    if a == b:
        return None
    if a not in RANK or b not in RANK:
        return f"{a} or {b} has no place in the layers (add it to RANK)"
    if RANK[b] >= RANK[a]:
        same = " (the same layer)" if RANK[b] == RANK[a] else ""
        return f"{a} (layer {RANK[a]}) imports {b} (layer {RANK[b]}){same}"
    return None


def scan():
    """Every module of the package: name -> (path, source)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        modules[module_name(path)] = (path, path.read_text(encoding="utf-8"))
    return modules


MODULES = scan()
KNOWN = set(MODULES)
EDGES = {}
for _name, (_path, _source) in MODULES.items():
    EDGES[_name] = imports(_source, _name, _path.name == "__init__.py", KNOWN)


def test_the_scan_sees_the_package():
    assert {"numpy_densenet.model", "numpy_densenet.zoo", "numpy_densenet.io.weights", "numpy_densenet.training.run",
            "numpy_densenet.gradcheck.engine", "numpy_densenet.study.flow", "numpy_densenet.cli.main"} <= KNOWN
    assert sum(len(ours) for ours, _ in EDGES.values()) > 100


def test_no_import_cycle_between_modules():
    graph = {name: {target for target, _, _, _ in ours if target in KNOWN and target != name}
             for name, (ours, _) in EDGES.items()}
    assert cycles(graph) == []


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_every_arrow_runs_down_the_layers(name):
    ours, _ = EDGES[name]
    wrong = [f"line {line}: {name} -> {target}: {arrow_problem(name, target)}"
             for target, _, _, line in ours if arrow_problem(name, target)]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_imports_inside_functions_are_optional_dependencies_only(name):
    ours, inner_other = EDGES[name]
    hidden = [f"line {line}: {target}" for target, _, in_function, line in ours if in_function]
    hidden += [f"line {line}: {top}" for top, line in inner_other if top not in OPTIONAL]
    assert not hidden, f"{name} imports inside a function (only optional dependencies may be): {hidden}"


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_no_private_name_is_used_outside_its_module(name):
    ours, _ = EDGES[name]
    path, source = MODULES[name]
    bad = [f"line {line}: from {target} import {imported}" for target, imported, _, line in ours
           if imported and imported.startswith("_") and not imported.startswith("__")]
    bad += [f"line {line}: {target}" for target, _, _, line in ours
            if any(part.startswith("_") and not part.startswith("__") for part in target.split(".")[1:])
            and target.rsplit(".", 1)[0] != name.rsplit(".", 1)[0]]
    aliases = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            aliases |= {a.asname or a.name for a in node.names}
        elif isinstance(node, ast.Import):
            aliases |= {(a.asname or a.name).split(".")[0] for a in node.names if a.name.startswith(ROOT)}
    module_aliases = {a for a in aliases
                      if any(t == m or t.endswith("." + a) for t, _, _, _ in ours for m in KNOWN if t == m)}
    bad += [f"line {line}: {alias}.{attr}" for alias, attr, line in private_attribute_uses(source, module_aliases)]
    assert not bad, f"{name} uses private names of other modules: {bad}"


# -- the checks themselves catch what they are for -------------------------------------------------------------
def test_the_checks_catch_a_cycle_an_upward_arrow_a_hidden_import_and_a_private_name():
    known = {"numpy_densenet.nn", "numpy_densenet.model", "numpy_densenet.zoo", "numpy_densenet.fast.norm"}
    source = ("from .zoo import build_model\n"
              "from .fast.norm import _private\n"
              "def f():\n    from . import zoo\n    import json\n    return zoo\n")
    ours, other = imports(source, "numpy_densenet.model", False, known)
    assert ("numpy_densenet.zoo", "build_model", False, 1) in ours
    assert ("numpy_densenet.fast.norm", "_private", False, 2) in ours
    assert ("numpy_densenet.zoo", None, True, 4) in ours and ("json", 5) in other
    assert arrow_problem("numpy_densenet.model", "numpy_densenet.zoo")          # the specification upward
    assert arrow_problem("numpy_densenet.training.run", "numpy_densenet.hub")    # two peers
    assert arrow_problem("numpy_densenet.zoo", "numpy_densenet.model") is None
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert private_attribute_uses("import x\nx._blas()\nx.__name__\n", {"x"}) == [("x", "_blas", 2)]
