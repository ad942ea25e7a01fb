"""The layers of client/parley/crypto (docs/crypto.md, "Layers"): who may import what.

Every module's imports are read from its source (``ast``, so imports inside
functions and ``TYPE_CHECKING`` blocks count too):

* only ``primitives`` imports ``cryptography``; the protocols use its wrappers;
* a module imports only package modules of a lower layer (protocols may also
  import each other), so nothing below the session API depends on it;
* nothing in the package imports modules dynamically, and no production module
  imports the test DRBG (``tests.*``);
* only ``errors`` defines exception classes.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import parley
import parley.crypto
import pytest

PACKAGE = "parley.crypto"
PACKAGE_DIR = Path(parley.crypto.__file__).resolve().parent
CLIENT_DIR = Path(parley.__file__).resolve().parent

ERRORS, BASE, PROTOCOLS, SESSION_API, PUBLIC = 0, 1, 2, 3, 4
LAYER = {
    "errors": ERRORS,
    "primitives": BASE,  # thin wrappers over cryptography
    "encoding": BASE,  # base64url, integers, state JSON
    "bundle": PROTOCOLS,
    "device": PROTOCOLS,
    "device_list": PROTOCOLS,
    "fingerprint": PROTOCOLS,
    "franking": PROTOCOLS,
    "linking": PROTOCOLS,
    "pqxdh": PROTOCOLS,
    "ratchet": PROTOCOLS,
    "sender_keys": PROTOCOLS,
    "wire": PROTOCOLS,
    "session": SESSION_API,
    "__init__": PUBLIC,  # re-exports the session API
}
MAY_IMPORT_CRYPTOGRAPHY = {"primitives"}


def _modules() -> dict[str, Path]:
    return {path.stem: path for path in sorted(PACKAGE_DIR.glob("*.py"))}


def _imports(path: Path, package: str) -> set[str]:
    return _imported_names(path.read_text(encoding="utf-8"), package)


def _imported_names(source: str, package: str) -> set[str]:
    """Absolute names of every module ``source`` imports (``from m import x``: ``m`` and
    ``m.x``, since ``x`` may be a submodule); ``package`` resolves relative imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _dynamic_imports(path: Path) -> list[int]:
    return _dynamic_imports_in(path.read_text(encoding="utf-8"))


def _dynamic_imports_in(source: str) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in {"import_module", "__import__"}:
                lines.append(node.lineno)
    return lines


def _is_under(name: str, top: str) -> bool:
    return name == top or name.startswith(top + ".")


def test_every_module_has_a_layer() -> None:
    assert set(_modules()) == set(LAYER), "add new modules to LAYER (and to docs/crypto.md)"


@pytest.mark.parametrize("module", sorted(LAYER))
def test_only_primitives_imports_cryptography(module: str) -> None:
    imported = _imports(_modules()[module], PACKAGE)
    direct = sorted(name for name in imported if _is_under(name, "cryptography"))
    if module in MAY_IMPORT_CRYPTOGRAPHY:
        assert direct, "primitives is where cryptography is wrapped"
    else:
        assert direct == [], f"{module} must use parley.crypto.primitives, not {direct}"


@pytest.mark.parametrize("module", sorted(LAYER))
def test_imports_go_down_the_layers(module: str) -> None:
    layer = LAYER[module]
    for name in _imports(_modules()[module], PACKAGE):
        if not _is_under(name, PACKAGE) or name == PACKAGE:
            continue
        target = name.removeprefix(PACKAGE + ".").split(".")[0]
        if target not in LAYER:  # ``from parley.crypto.x import Name``: Name is no module
            continue
        if target == module:
            continue
        allowed = LAYER[target] < layer or LAYER[target] == layer == PROTOCOLS
        assert allowed, f"{module} (layer {layer}) imports {target} (layer {LAYER[target]})"


def test_no_dynamic_imports_in_the_package() -> None:
    found = {m: lines for m, path in _modules().items() if (lines := _dynamic_imports(path))}
    assert found == {}


def test_no_production_module_imports_test_code() -> None:
    """The test DRBG (tests/crypto/drbg.py) is out of reach of the installed package."""
    for path in sorted(CLIENT_DIR.rglob("*.py")):
        package = ".".join(path.relative_to(CLIENT_DIR.parent).parent.parts)
        bad = sorted(n for n in _imports(path, package) if _is_under(n, "tests"))
        assert bad == [], f"{path.relative_to(CLIENT_DIR.parent)} imports {bad}"
    assert not hasattr(importlib.import_module(f"{PACKAGE}.primitives"), "deterministic_random")


def test_only_errors_defines_exceptions() -> None:
    for module in LAYER:
        name = PACKAGE if module == "__init__" else f"{PACKAGE}.{module}"
        mod = importlib.import_module(name)
        defined = [
            obj.__name__
            for obj in vars(mod).values()
            if inspect.isclass(obj)
            and issubclass(obj, BaseException)
            and obj.__module__ == mod.__name__
        ]
        if module == "errors":
            assert defined
        else:
            assert defined == [], f"{module} defines {defined}: put them in errors.py"


def test_the_checker_sees_what_it_must() -> None:
    """The import reader itself: relative, nested and ``from`` imports are all seen."""
    source = (
        "import cryptography.hazmat\n"
        "from . import primitives\n"
        "def f():\n"
        "    from ..crypto.session import Session\n"
        "    from cryptography.hazmat.primitives.ciphers.aead import AESGCM\n"
    )
    imported = _imported_names(source, PACKAGE)
    assert "cryptography.hazmat" in imported
    assert "parley.crypto.primitives" in imported
    assert "parley.crypto.session" in imported
    assert "cryptography.hazmat.primitives.ciphers.aead" in imported
    assert _dynamic_imports_in("importlib.import_module('cryptography')") == [1]
