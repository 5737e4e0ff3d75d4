"""The ``scorestream`` command line: --version, help for every sub-command and option, exit codes."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib.metadata import version

import pytest

from deploy.cli import EXIT_CODES_HELP, EXIT_USAGE, _parser, main
from schemas.settings import Settings

# at least these (a sub-command added later is checked as well: see ALL)
COMMANDS = {
    "run", "worker", "api", "dispatcher", "sink", "topics", "views",
    "demo", "replay", "shadow", "promote", "retire", "models",
}  # fmt: skip


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


ALL = sorted(subcommands(_parser()))


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed console script's module, as a container or a supervisor runs it."""
    return subprocess.run(
        [sys.executable, "-m", "deploy.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_version_is_the_installed_distributions() -> None:
    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"scorestream {version('scorestream')}"


def test_the_help_lists_every_sub_command_and_the_exit_codes() -> None:
    done = cli("--help")
    assert done.returncode == 0
    for command in ALL:
        assert f"\n    {command}" in done.stdout, command
    for code in ("0", "1", "2", "3"):
        assert f"\n  {code}  " in done.stdout
    assert set(ALL) >= COMMANDS


def undocumented(parser: argparse.ArgumentParser, path: str) -> list[str]:
    """The sub-commands and options below ``parser`` without a help text (nested sub-commands too)."""
    missing: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                if not helps.get(name):
                    missing.append(f"{path} {name}")
                missing += undocumented(sub, f"{path} {name}")
        elif not action.help:
            missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    return missing


def test_the_help_check_sees_a_bare_option() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers().add_parser("x", help="x")
    sub.add_argument("--y")
    assert undocumented(parser, "p") == ["p x --y"]


@pytest.mark.parametrize("command", ALL)
def test_every_sub_command_and_option_has_help(command: str) -> None:
    parser = _parser()
    missing = [m for m in undocumented(parser, "scorestream") if m.split()[1] == command]
    assert missing == [], "no help text"
    done = cli(command, "--help")
    assert done.returncode == 0
    assert done.stdout.startswith(f"usage: scorestream {command}")


def test_usage_errors_exit_2() -> None:
    assert cli("no-such-command").returncode == EXIT_USAGE
    assert cli("demo", "--events", "many").returncode == EXIT_USAGE
    assert cli().returncode == EXIT_USAGE  # a sub-command is required


def test_an_invalid_setting_is_one_line_and_exit_2() -> None:
    """A supervisor's log shows which variable is wrong, without a traceback nor its value."""
    done = cli("topics", env={"SCORESTREAM_PARTITIONS": "0", "SCORESTREAM_API_KEYS": "short-secret"})
    assert done.returncode == EXIT_USAGE
    lines = done.stderr.strip().splitlines()
    assert lines == ["scorestream: invalid setting SCORESTREAM_PARTITIONS: Input should be greater than or equal to 1"]
    done = cli("api", env={"SCORESTREAM_ENV": "production", "SCORESTREAM_API_KEYS": ""})
    assert done.returncode == EXIT_USAGE
    assert done.stderr.strip().splitlines() == [
        "scorestream api: SCORESTREAM_API_KEYS must be set when SCORESTREAM_ENV=production"
    ]


def test_only_the_api_needs_keys_in_production() -> None:
    """A worker, dispatcher, sink or topics job takes no API key: production settings without any are valid."""
    assert Settings(env="production").production_without_keys()
    assert not Settings(env="production", api_keys="k" * 24).production_without_keys()  # type: ignore[arg-type]
    assert not Settings().production_without_keys()


def test_main_raises_the_usage_exit_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCORESTREAM_BATCH_MAX", "0")
    with pytest.raises(SystemExit) as stopped:
        main(["topics"])
    assert stopped.value.code == EXIT_USAGE
    assert "exit codes:" in EXIT_CODES_HELP


def test_the_exit_codes_are_documented_in_operations() -> None:
    """docs/operations.md's table lists exactly the codes the CLI defines."""
    import re
    from pathlib import Path

    from deploy import cli as module

    page = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()
    section = page.split("\n## Exit codes\n", 1)[1].split("\n## ", 1)[0]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", section, flags=re.MULTILINE)}
    defined = {value for name, value in vars(module).items() if name.startswith("EXIT_") and isinstance(value, int)}
    assert documented == defined == {0, 1, 2, 3}
