"""Every `nubo` command describes itself in `--help`; a bad setting stops a command with one line and exit 2.

The rules of `nubo.settings` themselves are unit tests: `tests/unit/test_settings.py`.
"""

from __future__ import annotations

import re
import socket

import pytest

from tests.helpers.cli import command_paths
from tests.helpers.harness import run_nubo

COMMANDS = command_paths()


def normalized(text: str) -> str:
    """Help text without Rich box characters and line wrapping, for substring checks."""
    for ch in "│╭╮╰╯─":
        text = text.replace(ch, " ")
    return " ".join(text.split())


@pytest.mark.parametrize(("path", "help_text"), COMMANDS, ids=[" ".join(p) or "nubo" for p, _ in COMMANDS])
def test_every_command_help_describes_it(process_env: dict[str, str], path: tuple[str, ...], help_text: str) -> None:
    assert help_text.strip(), f"`nubo {' '.join(path)}` has no help text"
    result = run_nubo([*path, "--help"], {**process_env, "COLUMNS": "200", "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    out = normalized(result.stdout)
    assert "Usage:" in out
    first_words = " ".join(help_text.split()[:6])
    assert first_words in out, f"help of `nubo {' '.join(path)}` does not show its description"


@pytest.mark.parametrize(("path", "help_text"), COMMANDS, ids=[" ".join(p) or "nubo" for p, _ in COMMANDS])
def test_help_shows_no_python_type_metavars(process_env: dict[str, str], path: tuple[str, ...], help_text: str) -> None:
    result = run_nubo([*path, "--help"], {**process_env, "COLUMNS": "200", "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    assert not re.search(r"<(bool|str|int|float|path)>", result.stdout), result.stdout


def test_db_help_lists_its_commands_and_options(process_env: dict[str, str]) -> None:
    env = {**process_env, "COLUMNS": "200", "NO_COLOR": "1"}
    assert {"init", "purge"} <= set(normalized(run_nubo(["db", "--help"], env).stdout).split())
    purge_help = normalized(run_nubo(["db", "purge", "--help"], env).stdout)
    for option in ("--days", "--dry-run", "--json"):
        assert option in purge_help
    assert "--json" in normalized(run_nubo(["db", "init", "--help"], env).stdout)


BAD_SETTINGS = [
    ({"NUBO_POSTGRES_URL": "not-a-url"}, "NUBO_POSTGRES_URL"),
    ({"PORT": "abc"}, "PORT"),
    ({"NUBO_ENV": "prod", "JWT_SECRET": "too-short"}, "JWT_SECRET"),
    ({"NUBO_MONGO_URL": "http://127.0.0.1:27017"}, "NUBO_MONGO_URL"),
    ({"NUBO_REDIS_URL": "redis://127.0.0.1:notaport/0"}, "NUBO_REDIS_URL"),
    ({"NUBO_RETENTION_DAYS": "0"}, "NUBO_RETENTION_DAYS"),
    ({"NUBO_MAX_BODY": "12parsecs"}, "NUBO_MAX_BODY"),
    ({"NUBO_ENV": "staging"}, "NUBO_ENV"),
]


@pytest.mark.parametrize("command", [["serve"], ["db", "init"], ["db", "purge"]], ids=" ".join)
@pytest.mark.parametrize(("overrides", "variable"), BAD_SETTINGS, ids=[v for _, v in BAD_SETTINGS])
def test_bad_setting_is_one_line_naming_it_and_exit_2(
    process_env: dict[str, str], command: list[str], overrides: dict[str, str], variable: str
) -> None:
    result = run_nubo(command, {**process_env, **overrides}, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0] and "Traceback" not in result.stderr
    assert "too-short" not in result.stderr  # a rejected secret is never echoed
    assert result.stdout == ""


def test_serve_refuses_the_development_key_off_loopback_without_an_explicit_dev_env(
    process_env: dict[str, str],
) -> None:
    env = {k: v for k, v in process_env.items() if k not in ("JWT_SECRET", "NUBO_ENV")}
    result = run_nubo(["serve", "--host", "0.0.0.0", "--port", "1"], env, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "JWT_SECRET" in lines[0] and "NUBO_ENV=dev" in lines[0], result.stderr


def test_serve_warns_about_the_development_key_under_an_explicit_dev_env(process_env: dict[str, str]) -> None:
    env = {k: v for k, v in process_env.items() if k != "JWT_SECRET"} | {"NUBO_ENV": "dev"}
    with socket.socket() as taken:  # the port is taken, so the server stops right after the warning
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_nubo(["serve", "--host", "0.0.0.0", "--port", str(port)], env, timeout=60)
    assert result.returncode != 0
    assert "warning" in result.stderr and "development JWT key" in result.stderr, result.stderr


@pytest.mark.parametrize("command", [["serve"], ["cache", "flush"]], ids=" ".join)
def test_an_empty_redis_prefix_stops_the_command(process_env: dict[str, str], command: list[str]) -> None:
    result = run_nubo(command, {**process_env, "NUBO_REDIS_PREFIX": " "}, timeout=30)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(result.stderr.strip().splitlines()) == 1 and "NUBO_REDIS_PREFIX" in result.stderr
