"""The package layout (README "Layout"): which subpackage may import which, and no import circles.

The import graph is read from the source with `ast` (every `import` and `from ... import`, at module level or inside
a function: a lazy import is still a dependency; the deprecated aliases of `dinov2_eqcoh._moved` resolve their
targets by string and add no edge). Each rule test first shows that the checker finds a planted violation, so it
cannot pass by finding nothing.
"""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

import dinov2_eqcoh
from dinov2_eqcoh import _moved

ROOT = Path(dinov2_eqcoh.__file__).resolve().parent

# subpackage (or top-level module) -> the parts of dinov2_eqcoh it may import (besides itself); README "Layout"
ALLOWED = {
    "method": set(),
    "data": {"method"},
    "weights": {"method", "data"},
    "run": {"method", "data", "weights"},
    "eval": {"method", "data", "weights"},
    "meta_arch": {"method", "data", "run", "weights"},  # the one module where DINOv2's seams meet the method
    "train": {"_upstream", "run"},
    "models": set(),
    "_upstream": set(),
    "_moved": set(),
    "experiments": {"*"},
    "plot": {"eval"},  # python -m dinov2_eqcoh.plot: the command name of eval.training_curves
}


def module_files(root: Path, package: str) -> dict[str, Path]:
    """{dotted module name: file} of every .py under `root` (package `package`)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([package, *parts])] = path
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module: modules of `package` it imports}; `from a import b` counts as `a.b` when that is a module."""
    files = module_files(root, package)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_pkg = path.name == "__init__.py"
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative import
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in files else mod for a in node.names]
            for t in targets:
                while t and t not in files:  # `import a.b.c` of a name inside a module: the module
                    t = t.rpartition(".")[0]
                if t and t.startswith(package) and t != name:
                    edges.add(t)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def part(module: str, package: str) -> str:
    """The layout part of a module: its first name under the package ("" for the package's __init__)."""
    rest = module[len(package) + 1:] if module != package else ""
    return rest.split(".")[0]


def layering_violations(graph: dict[str, set[str]], package: str, allowed: dict[str, set[str]]) -> list[str]:
    out = []
    for mod, deps in sorted(graph.items()):
        src = part(mod, package)
        if src == "" or (mod in _moved.MOVED):  # the lazy top-level __init__ and the deprecated aliases
            continue
        if src not in allowed:
            out.append(f"{mod}: part '{src}' has no rule in ALLOWED (add it to the README's layout and here)")
            continue
        for dep in sorted(deps):
            dst = part(dep, package)
            if dst in ("", src) or "*" in allowed[src] or dst in allowed[src]:
                continue
            out.append(f"{mod} imports {dep}: '{src}' may import only {sorted(allowed[src]) or 'itself'}")
    return out


def _plant(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_checker_finds_a_planted_circle_and_a_planted_layering_violation(tmp_path):
    root = _plant(tmp_path, {
        "__init__.py": "",
        "method/__init__.py": "",
        "method/a.py": "def f():\n    from pkg.run import b\n",  # lazy import: still an edge
        "run/__init__.py": "",
        "run/b.py": "from pkg.method.a import f\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.method.a"] == {"pkg.run.b"} and graph["pkg.run.b"] == {"pkg.method.a"}
    assert cycles(graph) == [["pkg.method.a", "pkg.run.b"]]
    bad = layering_violations(graph, "pkg", {"method": set(), "run": {"method"}})
    assert bad == ["pkg.method.a imports pkg.run.b: 'method' may import only itself"]


def test_no_import_circles_in_the_package():
    found = cycles(import_graph(ROOT, "dinov2_eqcoh"))
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_import_follows_the_layout():
    graph = import_graph(ROOT, "dinov2_eqcoh")
    assert "dinov2_eqcoh.method.ssl_meta_arch" in graph  # the graph really covers the package
    bad = layering_violations(graph, "dinov2_eqcoh", ALLOWED)
    assert not bad, "\n".join(bad)


def test_every_subpackage_documents_what_it_may_import():
    for init in sorted(ROOT.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        if init.parent.name == "configs":
            continue
        assert "May import" in doc, f"{init}: the docstring says what lives here but not what it may import"


@pytest.mark.parametrize("old,new", sorted(_moved.MOVED.items()))
def test_old_module_names_still_import_with_a_deprecation_message(old, new):
    sys.modules.pop(old, None)  # imported before by another test: import it afresh
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importlib.import_module(old)
    assert sys.modules[old] is importlib.import_module(new)
    assert any(issubclass(w.category, FutureWarning) and new in str(w.message) for w in caught), old
