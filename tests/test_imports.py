"""The import rules, checked by reading the source (``ast``), not by importing it.

Every module under ``services/`` and ``client/parley`` is parsed and each of
its imports resolved to a module of ours (relative imports included, imports
inside functions included: a lazy import is how a circle hides). Then:

- no cycles: no module reaches itself through imports that run (imports
  under ``if TYPE_CHECKING:`` are only for the type checker and do not count);
- no import between two services: ``services.<x>`` imports only
  ``services.<x>`` and ``services.common``; ``services.common`` imports only
  itself (it is shared by all, so it knows none of them);
- no server module imports the client (``parley``, and so ``parley.crypto``):
  servers relay and store ciphertext, they never run the protocol code;
- ``services/common/state.py`` (every app key) imports nothing from
  ``services`` that runs, so that anything may use the keys.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (directory that holds the top-level package, top-level package)
TREES = [(ROOT, "services"), (ROOT / "client", "parley")]


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # a module of ours
    line: int
    runtime: bool  # False: under ``if TYPE_CHECKING:``

    def __str__(self) -> str:
        where = "" if self.runtime else " (TYPE_CHECKING)"
        return f"{self.source}:{self.line} imports {self.target}{where}"


def module_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for base, package in TREES:
        for path in sorted((base / package).rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = module_files()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, runtime: bool = True) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement under ``node``, with whether it runs at run time."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, runtime
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk_one(stmt, False)
            for stmt in child.orelse:
                yield from _walk_one(stmt, runtime)
        else:
            yield from _walk(child, runtime)


def _walk_one(stmt: ast.stmt, runtime: bool) -> Iterator[tuple[ast.stmt, bool]]:
    if isinstance(stmt, ast.Import | ast.ImportFrom):
        yield stmt, runtime
    else:
        yield from _walk(stmt, runtime)


def _ours(name: str) -> str | None:
    """The longest prefix of ``name`` that is one of our modules."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in MODULES:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, text: str | None = None) -> list[Import]:
    """What ``module`` imports of ours (``text``: its source, if not the file's)."""
    path = MODULES.get(module, Path(module.replace(".", "/") + ".py"))
    tree = ast.parse(path.read_text() if text is None else text, str(path))
    is_package = path.name == "__init__.py"
    found: list[Import] = []
    for stmt, runtime in _walk(tree):
        names: list[str] = []
        if isinstance(stmt, ast.Import):
            names = [alias.name for alias in stmt.names]
        else:
            assert isinstance(stmt, ast.ImportFrom)
            if stmt.level:
                anchor = module.split(".")
                if not is_package:
                    anchor = anchor[:-1]
                anchor = anchor[: len(anchor) - (stmt.level - 1)]
                base = ".".join(anchor + ([stmt.module] if stmt.module else []))
            else:
                base = stmt.module or ""
            # ``from pkg import name``: the submodule ``pkg.name`` if there is one.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in stmt.names
            ]
        for name in names:
            target = _ours(name)
            if target is not None and target != module:
                found.append(Import(module, target, stmt.lineno, runtime))
    return found


IMPORTS = [imp for module in MODULES for imp in imports_of(module)]


def service_of(module: str) -> str | None:
    """``services.keys.store`` -> ``keys``; ``None`` outside services/."""
    parts = module.split(".")
    return parts[1] if parts[0] == "services" and len(parts) > 1 else None


def cycles(edges: list[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in edges:
        graph[imp.source].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def cross_service(imports: list[Import]) -> list[str]:
    wrong = []
    for imp in imports:
        source, target = service_of(imp.source), service_of(imp.target)
        if source is None or target is None or source == target:
            continue
        if source == "common" or target != "common":
            wrong.append(str(imp))
    return wrong


def server_imports_client(imports: list[Import]) -> list[str]:
    return [
        str(imp)
        for imp in imports
        if imp.source.startswith("services") and imp.target.split(".")[0] == "parley"
    ]


def test_the_walk_sees_every_module_and_resolves_imports() -> None:
    # The walker itself, so that the rules below cannot pass vacuously.
    assert {"services.common.app", "services.keys.store", "parley.crypto.ratchet"} <= set(MODULES)
    edges = {(i.source, i.target) for i in IMPORTS}
    assert ("services.keys.app", "services.keys.store") in edges
    assert ("services.keys.routes", "services.keys.bundles") in edges  # from pkg import mod
    assert ("services.common.app", "services.common.state") in edges
    assert len(IMPORTS) > 200
    probe = imports_of(
        "services.keys.probe",
        "from typing import TYPE_CHECKING\n"
        "from . import store\n"
        "from .state import KEYS\n"
        "if TYPE_CHECKING:\n"
        "    from services.keys.events import EventPublisher\n"
        "def later():\n"
        "    import services.common.auth\n",
    )
    assert [(i.target, i.runtime) for i in probe] == [
        ("services.keys.store", True),
        ("services.keys.state", True),
        ("services.keys.events", False),
        ("services.common.auth", True),
    ]


def test_no_import_cycles() -> None:
    found = cycles([i for i in IMPORTS if i.runtime])
    detail = [
        " <-> ".join(c)
        + "\n    "
        + "\n    ".join(str(i) for i in IMPORTS if i.runtime and {i.source, i.target} <= set(c))
        for c in found
    ]
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_no_service_imports_another() -> None:
    wrong = cross_service(IMPORTS)
    assert not wrong, "imports between services:\n" + "\n".join(wrong)


def test_no_server_module_imports_the_client() -> None:
    wrong = server_imports_client(IMPORTS)
    assert not wrong, "server modules importing the client:\n" + "\n".join(wrong)


def test_the_app_keys_module_is_a_leaf() -> None:
    runtime = [str(i) for i in IMPORTS if i.source == "services.common.state" and i.runtime]
    assert runtime == []


def test_the_rules_catch_what_they_are_for() -> None:
    def probe(module: str, text: str) -> list[Import]:
        return imports_of(module, text)

    assert cross_service(probe("services.auth.probe", "from services.keys import store\n"))
    assert cross_service(probe("services.common.probe", "import services.auth.state\n"))
    assert not cross_service(probe("services.auth.probe", "from services.common import auth\n"))
    assert server_imports_client(probe("services.keys.probe", "import parley.crypto.ratchet\n"))
    assert server_imports_client(probe("services.keys.probe", "from parley import Client\n"))
    a = Import("services.common.app", "services.common.openapi", 1, True)
    b = Import("services.common.openapi", "services.common.app", 1, True)
    assert cycles([a, b]) == [["services.common.app", "services.common.openapi"]]
    assert cycles([a]) == []
