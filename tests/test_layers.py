"""The layering promise: the core imports no framework; adapters never import each other."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_roots(package: Path) -> dict[str, set[str]]:
    """Top-level module names imported by every file of ``package``."""
    found: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        roots: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                roots.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split(".")[0])
        found[str(path.relative_to(package.parent))] = roots
    return found


def test_core_imports_only_the_standard_library() -> None:
    allowed = set(sys.stdlib_module_names) | {"scorestream"}
    forbidden_io = {"socket", "asyncio", "subprocess", "time", "os", "pathlib", "urllib", "http", "sqlite3", "random"}
    for path, roots in imported_roots(ROOT / "src" / "scorestream").items():
        assert roots <= allowed, f"{path} imports non-stdlib {sorted(roots - allowed)}"
        assert not roots & forbidden_io, f"{path} imports I/O or clock modules {sorted(roots & forbidden_io)}"


@pytest.mark.parametrize(
    ("package", "must_not"),
    [
        ("streams", "api"),
        ("streams", "dispatcher"),
        ("dispatcher", "streams"),
        ("dispatcher", "api"),
        ("dispatcher", "collector"),
        ("dispatcher", "sink"),
        ("collector", "api"),
        ("collector", "streams"),
        ("collector", "sink"),
        ("sink", "api"),
        ("sink", "streams"),
        ("sink", "collector"),
        ("api", "dispatcher"),
        ("api", "streams"),
        ("schemas", "streams"),
        ("schemas", "api"),
        ("schemas", "deploy"),
        ("schemas", "analytics"),
        ("analytics", "api"),
        ("analytics", "streams"),
        ("analytics", "deploy"),
        ("streams", "analytics"),
    ],
)
def test_adapters_do_not_import_each_other(package: str, must_not: str) -> None:
    for path, roots in imported_roots(ROOT / package).items():
        assert must_not not in roots, f"{path} imports {must_not}"


def test_the_check_would_catch_a_framework_import(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "bad.py").write_text("import faust\nfrom fastapi import FastAPI\n")
    roots = imported_roots(tmp_path / "pkg")["pkg/bad.py"]
    assert {"faust", "fastapi"} <= roots
