"""What the installed project (the container image, a wheel) holds: every package of the tree."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def declared() -> tuple[set[str], dict[str, str]]:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(setuptools["packages"]), dict(setuptools["package-dir"])


def packages_under(name: str, folder: Path) -> set[str]:
    """``name`` and every sub-package (a folder with ``__init__.py``) below ``folder``."""
    found = {name}
    for init in folder.rglob("__init__.py"):
        parts = init.parent.relative_to(folder).parts
        if parts:
            found.add(".".join((name, *parts)))
    return found


def test_every_package_of_the_tree_is_installed() -> None:
    packages, dirs = declared()
    assert set(dirs) <= packages
    for name, folder in dirs.items():
        missing = packages_under(name, ROOT / folder) - packages
        assert not missing, f"pyproject.toml [tool.setuptools] packages lacks {sorted(missing)}"


def test_every_top_level_package_is_declared() -> None:
    """A new process folder (a top-level package with code) must be installed too."""
    _, dirs = declared()
    skipped = {"tests", "bench", "src", "var", "node_modules"}
    top = {p.parent.name for p in ROOT.glob("*/__init__.py")} - skipped
    assert top <= set(dirs), f"not in package-dir: {sorted(top - set(dirs))}"


def test_the_check_sees_a_sub_package(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    assert packages_under("pkg", tmp_path / "pkg") == {"pkg", "pkg.sub"}
