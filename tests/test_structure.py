"""Package boundaries of src/neuronlens, read from the source with ast (nothing is imported).

Units: each top-level subpackage (risk, saes, ...) and each top-level module (config, _io, cli, ...)
of neuronlens is one node; the root `neuronlens/__init__.py` is the node "neuronlens".
- no import cycle between nodes, counting imports inside function bodies (lazy) as well;
- a node uses another only through its public surface: never its private modules
  (`from ..risk._labels import x`) nor its private names (`from ..risk import _x`, `risk._x`);
  inside one node private modules and names are free; a top-level `_io`-style module is a node of
  its own, shared library-internally under its own name;
- benchmarks/ and scripts/ use only public names of neuronlens (no `_` component, no `_name`);
- modules over 400 lines and functions over 60: today's offenders are listed below and the list
  may only shrink (a listed entry that is back under the limit fails too: delete it).
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "neuronlens"
PKG_DIR = ROOT / "src" / PKG
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# Today's offenders (path relative to src/neuronlens, function as module-path:qualname).
# Shrink only; each one left is a refactor waiting.
LONG_MODULES: set[str] = set()
LONG_FUNCTIONS: set[str] = set()
# TEMPORARY: owned by changes in flight, printed on every run; an entry that no longer occurs
# fails too (delete it), so these can only go.
IN_PROGRESS_CYCLES: set[tuple[str, ...]] = set()
IN_PROGRESS_IMPORTS: set[tuple[str, str, str | None]] = set()


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    target: str  # dotted module the name comes from (or the imported module itself)
    name: str | None  # the name taken from target; None when target itself is imported
    line: int
    lazy: bool  # inside a function body

    def where(self) -> str:
        what = self.target if self.name is None else f"{self.target}:{self.name}"
        return f"{self.importer}:{self.line} -> {what}{' (lazy)' if self.lazy else ''}"


def node_of(module: str) -> str:
    """The unit a dotted module belongs to: `neuronlens.risk._score` -> `risk`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def _resolve(importer: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = importer.split(".")
    base = parts if is_pkg else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


class _Reader(ast.NodeVisitor):
    """Collects imports (marking those inside functions) and `alias._private` attribute reads."""

    def __init__(self, importer: str, is_pkg: bool, modules: set[str]):
        self.importer, self.is_pkg, self.modules = importer, is_pkg, modules
        self.depth = 0
        self.imports: list[Import] = []
        self.aliases: dict[str, str] = {}  # local name -> imported neuronlens module

    def _add(self, target: str, name: str | None, line: int, bound: str | None) -> None:
        self.imports.append(Import(self.importer, target, name, line, self.depth > 0))
        if bound and name is None:
            self.aliases[bound] = target

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name.split(".")[0] == PKG:
                self._add(a.name, None, node.lineno, a.asname)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        target = _resolve(self.importer, self.is_pkg, node)
        if target.split(".")[0] != PKG:
            return
        for a in node.names:
            sub = f"{target}.{a.name}"
            if sub in self.modules:
                self._add(sub, None, node.lineno, a.asname or a.name)
            else:
                self._add(target, a.name, node.lineno, None)

    def visit_Constant(self, node: ast.Constant) -> None:
        """Python source held in a string (a benchmark's child-process script) is read too, as lazy."""
        text = node.value
        if isinstance(text, str) and PKG in text and "import" in text:
            try:
                tree = ast.parse(textwrap.dedent(text))
            except SyntaxError:  # prose (a docstring), not code
                return
            self.depth += 1
            self.visit(tree)
            self.depth -= 1

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if isinstance(node.value, ast.Name) and node.value.id in self.aliases and is_private(node.attr):
            target = self.aliases[node.value.id]
            sub = f"{target}.{node.attr}"
            self.imports.append(
                Import(self.importer, sub if sub in self.modules else target,
                       None if sub in self.modules else node.attr, node.lineno, self.depth > 0))
        self.generic_visit(node)


def read_imports(sources: dict[str, tuple[bool, str]], modules: set[str] | None = None) -> list[Import]:
    """sources: dotted module name -> (is_package, source text)."""
    modules = set(sources) if modules is None else modules
    found = []
    for name, (is_pkg, text) in sorted(sources.items()):
        reader = _Reader(name, is_pkg, modules)
        reader.visit(ast.parse(text))
        found += reader.imports
    return found


def boundary_breaks(imports: list[Import], *, outside: bool = False) -> list[Import]:
    """Imports of a private module or name across nodes (every one of them when `outside`)."""
    bad = []
    for imp in imports:
        if not outside and node_of(imp.importer) == node_of(imp.target):
            continue
        skip = 1 if outside else 2  # inside the library, a node's own name may be private (_io)
        parts = imp.target.split(".")[skip:] + ([imp.name] if imp.name else [])
        if any(is_private(p) for p in parts):
            bad.append(imp)
    return bad


def node_graph(imports: list[Import], *, lazy: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for imp in imports:
        a, b = node_of(imp.importer), node_of(imp.target)
        if a != b and (lazy or not imp.lazy):
            graph.setdefault(a, set()).add(b)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def edges_within(comp: list[str], imports: list[Import]) -> list[str]:
    members = set(comp)
    return [i.where() for i in imports
            if node_of(i.importer) != node_of(i.target)
            and {node_of(i.importer), node_of(i.target)} <= members]


def long_functions(text: str, limit: int = MAX_FUNCTION_LINES) -> dict[str, int]:
    found = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    n = child.end_lineno - child.lineno + 1
                    if n > limit:
                        found[qual] = n
                walk(child, qual + ".")
            else:
                walk(child, prefix)

    walk(ast.parse(text), "")
    return found


# ---- the tree as it is --------------------------------------------------------------------------

def _library() -> dict[str, tuple[bool, str]]:
    out = {}
    for path in sorted(PKG_DIR.rglob("*.py")):
        rel = path.relative_to(PKG_DIR.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (is_pkg, path.read_text(encoding="utf-8"))
    return out


LIBRARY = _library()
IMPORTS = read_imports(LIBRARY)


def _rel(module: str) -> str:
    is_pkg = LIBRARY[module][0]
    path = module.split(".")[1:]
    return "/".join(path) + ("/__init__.py" if is_pkg else ".py") if path else "__init__.py"


def _key(i: Import) -> tuple[str, str, str | None]:
    return i.importer, i.target, i.name


def _check_breaks(found: list[Import]) -> None:
    for i in found:
        print("TEMPORARY (in progress): " * (_key(i) in IN_PROGRESS_IMPORTS) + i.where())
    assert [i.where() for i in found if _key(i) not in IN_PROGRESS_IMPORTS] == []


def test_no_import_cycle_between_packages():
    found = cycles(node_graph(IMPORTS, lazy=True))
    eager = cycles(node_graph(IMPORTS, lazy=False))
    for comp in found:
        allowed = tuple(comp) in IN_PROGRESS_CYCLES
        print("TEMPORARY (in progress): " * allowed + "cycle:", comp, "(eager)" if comp in eager else "(through lazy imports)")
        for e in edges_within(comp, IMPORTS):
            print("   ", e)
    assert [c for c in found if tuple(c) not in IN_PROGRESS_CYCLES] == []
    assert sorted(IN_PROGRESS_CYCLES - {tuple(c) for c in found}) == [], "gone: delete from IN_PROGRESS_CYCLES"


def test_no_private_module_or_name_across_packages():
    _check_breaks(boundary_breaks(IMPORTS))


def _script_sources() -> dict[str, tuple[bool, str]]:
    out = {}
    for folder in ("benchmarks", "scripts"):
        for path in sorted((ROOT / folder).glob("*.py")):
            out[f"{folder}.{path.stem}"] = (False, path.read_text(encoding="utf-8"))
    return out


SCRIPTS = _script_sources()
SCRIPT_IMPORTS = read_imports(SCRIPTS, modules=set(LIBRARY))


def test_benchmarks_and_scripts_use_public_names():
    assert {"benchmarks.detection", "scripts.refresh_sae_registry"} <= set(SCRIPTS), "benchmarks or scripts not found"
    _check_breaks(boundary_breaks(SCRIPT_IMPORTS, outside=True))


def test_each_temporary_import_entry_still_occurs():
    found = {_key(i) for i in boundary_breaks(IMPORTS) + boundary_breaks(SCRIPT_IMPORTS, outside=True)}
    assert sorted(IN_PROGRESS_IMPORTS - found, key=str) == [], "gone: delete from IN_PROGRESS_IMPORTS"


def test_module_and_function_sizes_only_shrink():
    long_mods, long_fns = set(), {}
    for module, (_, text) in LIBRARY.items():
        rel = _rel(module)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_mods.add(rel)
        for qual, n in long_functions(text).items():
            long_fns[f"{rel}:{qual}"] = n
    print(f"modules over {MAX_MODULE_LINES} lines:", sorted(long_mods))
    print(f"functions over {MAX_FUNCTION_LINES} lines:", dict(sorted(long_fns.items())))
    assert sorted(long_mods - LONG_MODULES) == [], "new long module"
    assert sorted(set(long_fns) - LONG_FUNCTIONS) == [], "new long function"
    assert sorted(LONG_MODULES - long_mods) == [], "now short enough: delete from LONG_MODULES"
    assert sorted(LONG_FUNCTIONS - set(long_fns)) == [], "now short enough: delete from LONG_FUNCTIONS"


# ---- the checker can fail -----------------------------------------------------------------------

SYNTHETIC = {
    "neuronlens": (True, "from . import a\n"),
    "neuronlens.a": (True, "from ._impl import f\n"),
    "neuronlens.a._impl": (False, "from ..b import g\nfrom .._io import write\n"),
    "neuronlens.b": (True, "def g():\n    from ..a._impl import f\n    from ..a import _hidden\n"),
    "neuronlens.c": (True, "import neuronlens.a as a\nx = a._secret\nfrom neuronlens.b import g\n"),
    "neuronlens._io": (False, "def write():\n    pass\n"),
}


def test_checker_sees_a_lazy_cycle_and_private_crossings():
    imports = read_imports(SYNTHETIC)
    assert cycles(node_graph(imports, lazy=True)) == [["a", "b"]]
    assert cycles(node_graph(imports, lazy=False)) == []
    bad = {(i.importer, i.target, i.name) for i in boundary_breaks(imports)}
    assert bad == {
        ("neuronlens.b", "neuronlens.a._impl", "f"),  # another node's private module
        ("neuronlens.b", "neuronlens.a", "_hidden"),  # another node's private name
        ("neuronlens.c", "neuronlens.a", "_secret"),  # ... read as an attribute
    }  # while neuronlens._io (a node of its own) and a's own `._impl` are fine


def test_checker_flags_private_use_from_outside_the_library():
    child = 'CHILD = """\n    import sys\n    from neuronlens.a._impl import f\n"""\n'  # a script run in a subprocess
    script = {"benchmarks.x": (False, "from neuronlens._io import write\nfrom neuronlens.a import f, _g\n" + child)}
    bad = boundary_breaks(read_imports(script, modules=set(SYNTHETIC)), outside=True)
    assert [(i.target, i.name, i.lazy) for i in bad] == [
        ("neuronlens._io", "write", False), ("neuronlens.a", "_g", False), ("neuronlens.a._impl", "f", True)
    ]


def test_checker_measures_long_functions():
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))  # a method of 61 lines
    text = "class K:\n    def m(self):\n" + body + "\n\ndef short():\n    pass\n"
    assert long_functions(text) == {"K.m": MAX_FUNCTION_LINES + 1}


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-s"]))
