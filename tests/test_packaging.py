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


REPO_WIDE = {"test_docs.py", "test_layers.py", "test_packaging.py"}
# tests of the running service as a whole (real broker, processes, browser) and their data
WHOLE_SERVICE = {"e2e", "browser", "hostile"}


def source_dir(root: Path, test_dir: Path) -> Path:
    """The source folder a test folder mirrors: tests/scorestream/rules -> src/scorestream/rules."""
    parts = test_dir.relative_to(root / "tests").parts
    return root / ("src/" if parts[0] == "scorestream" else "") / Path(*parts)


def unmirrored(root: Path) -> list[str]:
    """Unit test files that do not sit at ``tests/<package>/test_<module>[_<aspect>].py``."""
    tests_root = root / "tests"
    wrong: list[str] = []
    for path in sorted(tests_root.rglob("test_*.py")):
        rel = path.relative_to(tests_root)
        if rel.parts[0] in WHOLE_SERVICE or "node_modules" in rel.parts:
            continue
        if len(rel.parts) == 1:
            if rel.name not in REPO_WIDE:
                wrong.append(f"{rel}: a unit test belongs in the folder of its package")
            continue
        source = source_dir(root, path.parent)
        names = {p.stem for p in source.glob("*.py")} | {
            p.name for p in source.iterdir() if (p / "__init__.py").is_file()
        }
        subject = path.stem.removeprefix("test_")
        if not any(subject == n or subject.startswith(f"{n}_") for n in names if n != "__init__"):
            wrong.append(f"{rel}: no module {source.relative_to(root)}/{subject.split('_')[0]}.py")
    return wrong


def test_unit_tests_mirror_the_tree() -> None:
    assert unmirrored(ROOT) == []


def test_the_mirror_check_catches_strays(tmp_path: Path) -> None:
    for name in ("streams/__init__.py", "streams/agents.py", "src/scorestream/rules/__init__.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    for name in (
        "tests/streams/test_agents_cache.py",
        "tests/streams/test_nowhere.py",
        "tests/scorestream/test_rules.py",
        "tests/e2e/test_anything.py",
        "tests/test_stray.py",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert unmirrored(tmp_path) == [
        "streams/test_nowhere.py: no module streams/nowhere.py",
        "test_stray.py: a unit test belongs in the folder of its package",
    ]
