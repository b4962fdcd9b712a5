"""The package layout (README "Layout"): which subpackage may import which, and no import circles.

The import graph is read from the source with `ast` (every `import` and `from ... import`, at module level or inside
a function: a lazy import is still a dependency). A name imported from a package is followed to the module that
defines it: through the package `__init__`'s own imports and through its table of lazy names (a dict of
name -> module strings), so `from dinov2_eqcoh import EqCohMetaArch` is an edge to `dinov2_eqcoh.meta_arch`.
Each rule test first shows that the checker finds a planted violation, so it cannot pass by finding nothing.
The component strings that configs name (`train.meta_arch: package.module:name`, ...) must import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dinov2_eqcoh

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
    "experiments": {"*"},
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


def package_exports(files: dict[str, Path]) -> dict[str, dict[str, str]]:
    """{package: {name: module that defines it}} for the names each package `__init__` makes importable: its own
    `from M import name` (and relative) imports, and the name -> module strings of a lazy table (a dict literal)."""
    out: dict[str, dict[str, str]] = {}
    for name, path in files.items():
        if path.name != "__init__.py":
            continue
        names: dict[str, str] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                mod = ".".join(name.split(".")[: len(name.split(".")) - node.level + 1] + [node.module or ""]) \
                    if node.level else node.module or ""
                for a in node.names:
                    names[a.asname or a.name] = f"{mod.rstrip('.')}.{a.name}" if f"{mod}.{a.name}" in files else mod
            elif isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values):
                    if isinstance(k, ast.Constant) and isinstance(v, ast.Constant) and v.value in files:
                        names[str(k.value)] = v.value
        out[name] = names
    return out


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module: modules of `package` it imports}; `from a import b` counts as `a.b` when that is a module, and as
    the module `a`'s `__init__` takes `b` from when `a` is a package that re-exports it."""
    files = module_files(root, package)
    exports = package_exports(files)

    def through_init(mod: str, attr: str) -> str:
        seen = set()
        while attr in exports.get(mod, {}) and (mod, attr) not in seen:
            seen.add((mod, attr))
            mod = exports[mod][attr]
        return mod

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
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in files else through_init(mod, a.name)
                           for a in node.names]
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
        if src == "":  # the top-level __init__: its lazy table names the public classes
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


def test_checker_follows_an_import_through_a_package_init(tmp_path):
    root = _plant(tmp_path, {
        "__init__.py": '_LAZY = {"Model": "pkg.run.b"}\nfrom pkg.eval.c import score\n',
        "method/__init__.py": "",
        "method/a.py": "def f():\n    from pkg import Model, score\n",  # both reach run/eval through pkg/__init__
        "run/__init__.py": "",
        "run/b.py": "class Model: ...\n",
        "eval/__init__.py": "",
        "eval/c.py": "def score(): ...\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.method.a"] == {"pkg.run.b", "pkg.eval.c"}
    bad = layering_violations(graph, "pkg", {"method": set(), "run": set(), "eval": set()})
    assert bad == ["pkg.method.a imports pkg.eval.c: 'method' may import only itself",
                   "pkg.method.a imports pkg.run.b: 'method' may import only itself"]


def test_package_top_holds_only_modules_with_code_of_their_own():
    """No alias modules: every top-level module defines something (a function, a class or a constant)."""
    for path in sorted(ROOT.glob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        defined = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Assign, ast.AnnAssign))]
        assert defined, f"{path.name} defines nothing: an alias module (the README's layout names where code lives)"


# ---------------------------------------------------------------------------------------------- config components

def component_strings(config_dirs) -> list[tuple[str, str, str]]:
    """(file, key, value) of every component string in the YAML files under `config_dirs`: the values of the
    config keys that name code by import path (`dinov2_eqcoh.method.config.COMPONENT_KEYS`)."""
    from omegaconf import OmegaConf

    from dinov2_eqcoh.method.config import COMPONENT_KEYS

    out = []
    for d in config_dirs:
        for path in sorted(Path(d).rglob("*.yaml")):
            cfg = OmegaConf.load(path)
            for key in COMPONENT_KEYS:
                value = OmegaConf.select(cfg, key, default=None)
                if isinstance(value, str) and (":" in value or value.startswith("dinov2_eqcoh.")):
                    out.append((str(path), key, value))
    return out


def unresolved_components(found) -> list[str]:
    from dinov2.utils.config import resolve_component

    bad = []
    for path, key, value in found:
        try:
            resolve_component(value, None)
        except ValueError as e:
            bad.append(f"{path}: {key}: {e}")
    return bad


def test_component_check_fails_on_a_config_naming_a_missing_component(tmp_path):
    (tmp_path / "bad.yaml").write_text("train:\n  meta_arch: dinov2_eqcoh.meta_arch:NoSuchArch\n"
                                       "  data_transform: dinov2_eqcoh.data.augmentation:build_data_transform\n")
    bad = unresolved_components(component_strings([tmp_path]))
    assert len(bad) == 2 and "NoSuchArch" in bad[0] and "dinov2_eqcoh.data.augmentation" in bad[1]


def test_every_component_a_shipped_config_names_imports():
    found = component_strings([ROOT.parent / "configs", ROOT / "configs"])
    keys = {key for _, key, _ in found}
    assert {"train.meta_arch", "train.data_transform", "train.collate_fn", "student.arch"} <= keys  # it looked
    bad = unresolved_components(found)
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------------------------------- experiments

def entry_modules(files: dict[str, Path], package: str) -> set[str]:
    """The experiments' programs: modules directly under `<package>.experiments` that define `main`."""
    prefix = f"{package}.experiments."
    out = set()
    for name, path in files.items():
        if name.startswith(prefix) and "." not in name[len(prefix):] and path.name != "__init__.py":
            if any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in ast.parse(path.read_text()).body):
                out.add(name)
    return out


def experiment_cross_imports(root: Path, package: str) -> list[str]:
    """Programs of experiments/ that import another program (what they share belongs in a shared module)."""
    files = module_files(root, package)
    entries = entry_modules(files, package)
    graph = import_graph(root, package)
    return [f"{a} imports {b}" for a in sorted(entries) for b in sorted(graph[a] & entries) if b != a]


def test_checker_finds_an_experiment_importing_another(tmp_path):
    root = _plant(tmp_path, {
        "__init__.py": "",
        "experiments/__init__.py": "",
        "experiments/study.py": "from pkg.experiments.shared import f\ndef main(): ...\n",
        "experiments/curves.py": "def main():\n    from pkg.experiments.study import main as m\n",
        "experiments/shared.py": "def f(): ...\n",
    })
    assert experiment_cross_imports(root, "pkg") == ["pkg.experiments.curves imports pkg.experiments.study"]


def test_no_experiment_imports_another():
    files = module_files(ROOT, "dinov2_eqcoh")
    assert {"dinov2_eqcoh.experiments.study", "dinov2_eqcoh.experiments.curves"} <= entry_modules(files, "dinov2_eqcoh")
    bad = experiment_cross_imports(ROOT, "dinov2_eqcoh")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------------------------------------- module size

MAX_LINES = 450


def long_without_reason(root: Path) -> list[str]:
    """Modules over MAX_LINES lines whose docstring gives no reason (a paragraph starting `Length:`)."""
    out = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        n = text.count("\n")
        if n > MAX_LINES and "\nLength: " not in "\n" + (ast.get_docstring(ast.parse(text)) or ""):
            out.append(f"{path.relative_to(root)}: {n} lines, no 'Length:' reason in its docstring")
    return out


def test_size_check_finds_a_long_module_without_a_reason(tmp_path):
    body = "x = 1\n" * (MAX_LINES + 1)
    (tmp_path / "long.py").write_text('"""A module."""\n' + body)
    (tmp_path / "reasoned.py").write_text('"""A module.\n\nLength: one protocol.\n"""\n' + body)
    (tmp_path / "short.py").write_text('"""A module."""\nx = 1\n')
    assert [b.split(":")[0] for b in long_without_reason(tmp_path)] == ["long.py"]


def test_no_module_is_long_without_a_stated_reason():
    bad = long_without_reason(ROOT)
    assert not bad, "\n".join(bad)
