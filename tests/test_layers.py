"""The layering promise: the core imports no framework and stands in floors without a circle;
adapters never import each other."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "src" / "scorestream"

# The core's floors, bottom first, as docs/architecture.md ("Inside the core") shows them: a
# module imports only modules of its own floor or of the floors below (within a floor, as long as
# no circle forms: test_the_core_has_no_import_cycle). Modules are named relative to
# ``scorestream``; "" is the package itself, the front door the adapters import.
FLOORS: tuple[tuple[str, str], ...] = (
    ("0. plain data", "events journey clv errors adjustments"),
    (
        "1. rules",
        "rules rules.common rules.consent rules.engagement rules.fit rules.lifecycle rules.value rules.accounts rules.model rules.interests rules.groups rules.machine",
    ),
    ("2. state", "state scoring rfm identity privacy interests machine"),
    ("3. the walk and triggers", "walk triggers"),
    ("4. operations on a state", "contact accounts population delivery view"),
    ("5. the fold", "fold"),
    ("6. the front door", ""),
)
FLOOR_OF = {module: floor for floor, modules in FLOORS for module in (modules.split() or [""])}
LEVEL = {floor: level for level, (floor, _) in enumerate(FLOORS)}


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
        ("console", "streams"),
        ("console", "dispatcher"),
        ("console", "sink"),
        ("console", "deploy"),
        ("streams", "console"),
        ("dispatcher", "console"),
        ("collector", "console"),
        ("sink", "console"),
        ("analytics", "console"),
        ("schemas", "console"),
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


# --- the core's floors ------------------------------------------------------------------------------


def core_module_name(path: Path, package: Path = CORE) -> str:
    """``rules/model.py`` -> ``rules.model``; a package's ``__init__.py`` -> the package (``""`` at the top)."""
    parts = list(path.relative_to(package).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def core_imports(package: Path = CORE, root: str = "scorestream") -> dict[str, set[str]]:
    """Per module of ``package``, the modules of ``package`` it imports: ``from root.rules import x``
    counts as ``rules.x`` when ``x`` is a module, else as ``rules`` (the package)."""
    modules = {core_module_name(p, package): p for p in package.rglob("*.py")}

    def inner(dotted: str) -> str | None:
        if dotted == root:
            return ""
        return dotted.removeprefix(root + ".") if dotted.startswith(root + ".") else None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(m for alias in node.names if (m := inner(alias.name)) in modules)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = inner(node.module)
                if base is None:
                    continue
                named = {f"{base}.{alias.name}".lstrip(".") for alias in node.names}
                submodules = named & modules.keys()
                targets.update(submodules if submodules else {base} & modules.keys())
        targets.discard(name)
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of imports (``[a, b, ..., a]``) if the graph has one, else None (depth-first)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in done and (found := visit(nxt)) is not None:
                return found
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (found := visit(start)) is not None:
            return found
    return None


def test_every_core_module_has_a_floor() -> None:
    modules = {core_module_name(p) for p in CORE.rglob("*.py")}
    assert modules - FLOOR_OF.keys() == set(), "a new core module needs a row in FLOORS"
    assert FLOOR_OF.keys() - modules == set(), "FLOORS names a module that does not exist"


def documented_floors(text: str) -> dict[str, set[str]]:
    """The floors table of docs/architecture.md ("| 2. state | `state.py`, ... |" rows): floor ->
    modules, named as in :data:`FLOORS`."""
    floors: dict[str, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and re.fullmatch(r"\d+\. .+", cells[0]):
            paths = re.findall(r"`([\w/]+)\.py`", cells[1])
            floors[cells[0]] = {p.removesuffix("/__init__").replace("/", ".") for p in paths}
    return floors


def test_the_architecture_page_shows_these_floors() -> None:
    documented = documented_floors((ROOT / "docs" / "architecture.md").read_text())
    expected = {floor: set(modules.split()) for floor, modules in FLOORS if modules}
    assert documented == expected


def test_the_table_reader_reads_floor_rows_only() -> None:
    text = (
        "| floor | modules |\n| --- | --- |\n| 1. rules | `rules/model.py`, `rules/__init__.py` | parsed | `errors` |\n"
    )
    assert documented_floors(text) == {"1. rules": {"rules.model", "rules"}}


def test_core_modules_import_only_their_floor_and_the_floors_below() -> None:
    for module, targets in core_imports().items():
        for target in targets:
            assert LEVEL[FLOOR_OF[target]] <= LEVEL[FLOOR_OF[module]], (
                f"scorestream.{module} ({FLOOR_OF[module]}) imports scorestream.{target} ({FLOOR_OF[target]})"
            )


def test_the_rules_import_only_the_standard_library_events_and_errors() -> None:
    rules = {m for m, floor in FLOOR_OF.items() if floor == "1. rules"}
    for module in rules:
        targets = core_imports()[module]
        # and the adjustments' built-in rule ids (rules.model reserves them)
        allowed = rules | {"events", "errors", "adjustments"}
        assert targets <= allowed, f"scorestream.{module} imports {sorted(targets - rules)}"


def nested_imports(package: Path) -> list[str]:
    """``file:line`` of every import that is not a statement of its module's body (inside a
    function, a class, an ``if`` or a ``try``)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        top = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in top:
                found.append(f"{path.relative_to(package.parent)}:{node.lineno}")
    return found


def type_checking_uses(package: Path) -> list[str]:
    """``file:line`` of every use of ``TYPE_CHECKING`` (``typing.TYPE_CHECKING`` included)."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            name: str | None
            if isinstance(node, ast.Name):
                name = node.id
            elif isinstance(node, ast.Attribute):
                name = node.attr
            else:
                name = node.name if isinstance(node, ast.alias) else None
            if name == "TYPE_CHECKING":
                found.append(f"{path.relative_to(package.parent)}:{getattr(node, 'lineno', 0)}")
    return found


def test_the_core_imports_only_at_module_level() -> None:
    assert nested_imports(CORE) == []


def test_the_core_has_no_type_checking_imports() -> None:
    assert type_checking_uses(CORE) == []


def test_the_core_has_no_import_cycle() -> None:
    graph = core_imports()
    assert graph["contact"] >= {"walk", "state"}, "the graph is built from the real imports"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_checks_would_catch_a_function_level_import_a_type_checking_import_and_a_cycle(tmp_path: Path) -> None:
    pkg = tmp_path / "core"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "import typing\n\nif typing.TYPE_CHECKING:\n    from core.c import z\nfrom core.b import x\n"
    )
    (pkg / "b.py").write_text("def x() -> None:\n    from core.a import y\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\n")
    graph = core_imports(pkg, "core")
    assert graph["a"] == {"b", "c"} and graph["b"] == {"a"} and graph["c"] == set()
    assert find_cycle(graph) == ["a", "b", "a"]
    assert nested_imports(pkg) == ["core/a.py:4", "core/b.py:2"]
    assert type_checking_uses(pkg) == ["core/a.py:3", "core/c.py:1"]


# --- the Kafka home -----------------------------------------------------------------------------------

ADAPTERS = ("streams", "dispatcher", "api", "collector", "sink", "analytics", "deploy")
KAFKA_CLIENTS = {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient", "AIOKafkaClient"}


def test_kafka_io_imports_only_schemas_the_kafka_clients_and_the_standard_library() -> None:
    # faust: only its credentials classes, for the Faust app's broker options (kafka_io.clients)
    allowed = set(sys.stdlib_module_names) | {"kafka_io", "schemas", "aiokafka", "faust"}
    for path, roots in imported_roots(ROOT / "kafka_io").items():
        assert roots <= allowed, f"{path} imports {sorted(roots - allowed)}"
        assert not roots & set(ADAPTERS), f"{path} imports an adapter"


def test_telemetry_imports_only_schemas_prometheus_client_structlog_and_the_standard_library() -> None:
    """Metrics and logs are shared by every process, like the Kafka home: they import none of them
    (orjson writes the JSON log lines; starlette gives the ASGI types of the API's access wrapper)."""
    libraries = {"prometheus_client", "structlog", "orjson", "starlette"}
    allowed = set(sys.stdlib_module_names) | {"telemetry", "schemas"} | libraries
    for path, roots in imported_roots(ROOT / "telemetry").items():
        assert roots <= allowed, f"{path} imports {sorted(roots - allowed)}"
        assert not roots & {*ADAPTERS, "kafka_io", "scorestream"}, f"{path} imports a process or the core"


def kafka_clients_built(package: Path) -> list[str]:
    """``file:line Class`` of every construction of an aiokafka client class in ``package``."""
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if name in KAFKA_CLIENTS:
                    found.append(f"{path.relative_to(package.parent)}:{node.lineno} {name}")
    return found


@pytest.mark.parametrize("package", ["src", *ADAPTERS, "telemetry", "bench"])
def test_every_kafka_client_is_built_in_kafka_io(package: str) -> None:
    assert kafka_clients_built(ROOT / package) == [], "build Kafka clients with kafka_io.clients"


def test_the_check_would_catch_a_kafka_client_built_elsewhere(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "bad.py").write_text(
        "import aiokafka\nfrom aiokafka import AIOKafkaProducer\n"
        "p = AIOKafkaProducer(bootstrap_servers='k:1')\nc = aiokafka.AIOKafkaConsumer('t')\n"
    )
    assert kafka_clients_built(tmp_path / "pkg") == ["pkg/bad.py:3 AIOKafkaProducer", "pkg/bad.py:4 AIOKafkaConsumer"]
    assert kafka_clients_built(ROOT / "kafka_io") != []  # where they are built


# One exception root per layer: every exception class a package defines derives from it (the
# per-message policy that goes with them is the table in streams/deadletter.py).
EXCEPTION_ROOTS = {
    "scorestream": "scorestream.errors.ScorestreamError",
    "api": "api.errors.ApiError",
    "schemas": "schemas.errors.ContractError",
    "streams": "streams.errors.WorkerError",
    "dispatcher": "dispatcher.errors.DispatcherError",
    "collector": "collector.errors.CollectorError",
    "sink": "sink.errors.SinkError",
    "analytics": "analytics.errors.AnalyticsError",
    "kafka_io": "kafka_io.errors.KafkaIoError",
}


def _package_modules(package: str) -> list[ModuleType]:
    found = importlib.import_module(package)
    modules = [found]
    for info in pkgutil.walk_packages(found.__path__, prefix=f"{package}."):
        modules.append(importlib.import_module(info.name))
    return modules


def rootless_exceptions(modules: list[ModuleType], root: type[BaseException]) -> list[str]:
    """Exception classes defined in ``modules`` that do not derive from ``root``.

    Only errors (``Exception``): a ``SystemExit`` subclass (streams.worker's ``WrongModel``,
    ``SlotTaken``) ends the process on purpose and must stay out of reach of ``except Exception``.
    """
    return sorted(
        f"{module.__name__}.{name}"
        for module in modules
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, Exception)
        and value.__module__ == module.__name__
        and not issubclass(value, root)
    )


def _root(dotted: str) -> type[BaseException]:
    module, _, name = dotted.rpartition(".")
    root = getattr(importlib.import_module(module), name)
    assert isinstance(root, type) and issubclass(root, BaseException)
    return root


@pytest.mark.parametrize(("package", "root"), sorted(EXCEPTION_ROOTS.items()))
def test_every_exception_of_a_layer_derives_from_its_root(package: str, root: str) -> None:
    modules = _package_modules(package)
    assert any(module.__name__ == root.rpartition(".")[0] for module in modules)
    assert rootless_exceptions(modules, _root(root)) == []


def test_the_root_check_catches_a_stray() -> None:
    module = ModuleType("fake_layer.service")

    class Root(Exception):
        pass

    class Good(Root, ValueError):
        pass

    class Stray(ValueError):
        pass

    class Exit(SystemExit):
        pass

    for cls in (Root, Good, Stray, Exit):
        cls.__module__ = module.__name__
        setattr(module, cls.__name__, cls)
    assert rootless_exceptions([module], Root) == ["fake_layer.service.Stray"]
