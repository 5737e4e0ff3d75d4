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
        # a module, a sub-package, or a file or folder of the package's data (deploy/kubernetes/,
        # deploy/docker-compose.yml): its name with `-` and `.` as `_`, lower case
        names = {p.stem for p in source.glob("*.py")} | {
            p.name.split(".")[0].replace("-", "_").lower() for p in source.iterdir() if p.name != "__pycache__"
        }
        subject = path.stem.removeprefix("test_")
        if not any(subject == n or subject.startswith(f"{n}_") for n in names if n != "__init__"):
            wrong.append(f"{rel}: no module {source.relative_to(root)}/{subject.split('_')[0]}.py")
    return wrong


def test_unit_tests_mirror_the_tree() -> None:
    assert unmirrored(ROOT) == []


def test_the_mirror_check_catches_strays(tmp_path: Path) -> None:
    for name in ("streams/__init__.py", "streams/agents.py", "src/scorestream/rules/__init__.py", "deploy/k8s/a.yaml"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    for name in (
        "tests/streams/test_agents_cache.py",
        "tests/streams/test_nowhere.py",
        "tests/scorestream/test_rules.py",
        "tests/e2e/test_anything.py",
        "tests/deploy/test_k8s.py",
        "tests/deploy/test_k9s.py",
        "tests/test_stray.py",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    assert unmirrored(tmp_path) == [
        "deploy/test_k9s.py: no module deploy/k9s.py",
        "streams/test_nowhere.py: no module streams/nowhere.py",
        "test_stray.py: a unit test belongs in the folder of its package",
    ]


# --- the container image (deploy/Dockerfile): no container engine runs here, so its copies are read


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages(text: str) -> dict[str, list[tuple[str, str]]]:
    """Stage name (``AS name``, else its index) -> its instructions after FROM."""
    found: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for word, rest in dockerfile_instructions(text):
        if word == "FROM":
            parts = rest.split()
            name = parts[-1] if len(parts) >= 3 and parts[-2].lower() == "as" else str(len(found))
            current = found.setdefault(name, [])
        elif current is not None:
            current.append((word, rest))
    return found


def context_copies(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """COPY from the build context: source -> destination (``./x`` and ``x`` alike)."""
    out: dict[str, str] = {}
    for word, rest in instructions:
        if word not in ("COPY", "ADD"):
            continue
        args = [a for a in rest.split() if not a.startswith("--")]
        if any(a.startswith("--from") for a in rest.split()):
            continue
        *sources, dest = args
        for source in sources:
            out[source.removeprefix("./").rstrip("/") or "."] = dest.removeprefix("./").rstrip("/") or "."
    return out


def missing_copies(dockerfile: str, dirs: dict[str, str]) -> list[str]:
    """The packages (``package-dir``) no COPY of the builder brings in at their own path."""
    copies: dict[str, str] = {}
    for instructions in stages(dockerfile).values():
        copies.update(context_copies(instructions))
    missing = []
    for name, folder in sorted(dirs.items()):
        covering = [
            (source, dest)
            for source, dest in copies.items()
            if source == "." or folder == source or folder.startswith(f"{source}/")
        ]
        # copied where pyproject.toml expects it: the same relative path under the WORKDIR
        if not any(dest == source for source, dest in covering):
            missing.append(f"{name} ({folder})")
    return missing


def ignore_patterns(text: str) -> list[str]:
    return [line.strip().rstrip("/") for line in text.splitlines() if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes ``path`` (relative, with /): a pattern matching it or a folder above it.
    (Docker's syntax, as far as this repository's file uses it: ``*``, ``**/``; no ``!`` exceptions.)"""
    from fnmatch import fnmatchcase

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        assert not pattern.startswith("!"), "exceptions are not understood by this check"
        bare = pattern.removeprefix("**/")
        for prefix in prefixes:
            if fnmatchcase(prefix, pattern) or (
                pattern.startswith("**/") and fnmatchcase(prefix.rsplit("/", 1)[-1], bare)
            ):
                return True
    return False


def package_files() -> list[str]:
    """Every file the wheel is built from: the packages' modules and their package data."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    files: list[str] = []
    for name, folder in setuptools["package-dir"].items():
        files += [p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts]
        for pattern in setuptools.get("package-data", {}).get(name, []):
            files += [p.relative_to(ROOT).as_posix() for p in (ROOT / folder).glob(pattern) if p.is_file()]
    return files


def test_the_dockerfile_copies_every_package() -> None:
    """A package pyproject.toml declares (a new one included) is copied into the image at its path."""
    _, dirs = declared()
    assert missing_copies((ROOT / "deploy" / "Dockerfile").read_text(), dirs) == []


def test_the_dockerignore_keeps_every_package_file() -> None:
    """No module nor package data (schemas/models/*.yaml, deploy/clickhouse/*.sql, ...) is left out of the
    build context, while the bulky folders are (a context of gigabytes would be sent to the engine)."""
    patterns = ignore_patterns((ROOT / ".dockerignore").read_text())
    files = package_files()
    assert "schemas/models/default.yaml" in files
    assert "deploy/clickhouse/0001_events.sql" in files
    assert [f for f in files if ignored(f, patterns)] == []
    assert not ignored("pyproject.toml", patterns)
    assert not ignored("README.md", patterns)  # pyproject.toml's readme: the build reads it
    for bulky in (
        ".venv/bin/python",
        "var/kafka/x",
        ".git/HEAD",
        "tests/browser/node_modules/x",
        "bench/results/a.json",
    ):
        assert ignored(bulky, patterns), bulky


def test_the_image_runs_as_a_non_root_user_from_a_slim_runtime_stage() -> None:
    found = stages((ROOT / "deploy" / "Dockerfile").read_text())
    assert len(found) >= 2, "multi-stage: a builder and a runtime"
    runtime = list(found.values())[-1]
    users = [rest for word, rest in runtime if word == "USER"]
    assert users, "the runtime stage sets USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric non-root uid (Kubernetes runAsNonRoot can verify it)"
    # the runtime takes the virtualenv from the builder, nothing from the build context, and installs nothing
    assert context_copies(runtime) == {}
    assert any(word == "COPY" and "--from=" in rest for word, rest in runtime)
    assert not any(word == "RUN" and ("pip install" in rest or "apt-get install" in rest) for word, rest in runtime)
    assert any(word == "VOLUME" and "/data" in rest for word, rest in runtime)


def test_the_copy_check_catches_a_forgotten_package() -> None:
    dockerfile = "FROM python AS builder\nCOPY src/scorestream ./src/scorestream\nCOPY api /elsewhere/api\nCOPY schemas \\\n  ./schemas\n"
    dirs = {"scorestream": "src/scorestream", "api": "api", "schemas": "schemas", "telemetry": "telemetry"}
    assert missing_copies(dockerfile, dirs) == ["api (api)", "telemetry (telemetry)"]
    assert missing_copies("FROM python\nCOPY . .\n", dirs) == []
    assert ignored("a/b/__pycache__/c.pyc", ["**/__pycache__"])
    assert not ignored("schemas/models/default.yaml", ["tests", "*.egg-info"])


def test_the_image_labels_carry_the_projects_version() -> None:
    """``org.opencontainers.image.version`` defaults to pyproject.toml's version (a release bumps both)."""
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    runtime = list(stages((ROOT / "deploy" / "Dockerfile").read_text()).values())[-1]
    assert ("ARG", f"VERSION={version}") in runtime
