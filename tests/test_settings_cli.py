"""Every `nubo` command describes itself in `--help`; a bad setting stops a command with one line and exit 2.

Also unit tests of `nubo.settings.load_settings` (sizes, rates, durations, URLs, prod secret rules).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st

from nubo.cli.main import app
from nubo.settings import (
    DEV_JWT_SECRET,
    RateLimit,
    Settings,
    SettingsError,
    load_settings,
    parse_duration,
    parse_rate,
    parse_size,
)
from tests.harness import run_nubo


def command_paths() -> list[tuple[tuple[str, ...], str]]:
    """Every registered command and group as (path, its help text), walking the Typer/Click tree."""
    found: list[tuple[tuple[str, ...], str]] = []

    def walk(command: Any, path: tuple[str, ...]) -> None:
        found.append((path, command.help or command.short_help or ""))
        # Typer >= 0.20 vendors Click: a group is whatever has sub-commands.
        for name, sub in (getattr(command, "commands", None) or {}).items():
            if not sub.hidden:
                walk(sub, (*path, name))

    walk(typer.main.get_command(app), ())
    return found


COMMANDS = command_paths()


def normalized(text: str) -> str:
    """Help text without Rich box characters and line wrapping, for substring checks."""
    for ch in "│╭╮╰╯─":
        text = text.replace(ch, " ")
    return " ".join(text.split())


def test_the_foundation_commands_are_registered() -> None:
    paths = {path for path, _ in COMMANDS}
    assert {(), ("serve",), ("db",), ("db", "init"), ("db", "purge")} <= paths


@pytest.mark.parametrize(("path", "help_text"), COMMANDS, ids=[" ".join(p) or "nubo" for p, _ in COMMANDS])
def test_every_command_help_describes_it(process_env: dict[str, str], path: tuple[str, ...], help_text: str) -> None:
    assert help_text.strip(), f"`nubo {' '.join(path)}` has no help text"
    result = run_nubo([*path, "--help"], {**process_env, "COLUMNS": "200", "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    out = normalized(result.stdout)
    assert "Usage:" in out
    first_words = " ".join(help_text.split()[:6])
    assert first_words in out, f"help of `nubo {' '.join(path)}` does not show its description"


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


# ------------------------------------------------------------------------------------------ load_settings


def load(**env: str) -> Settings:
    return load_settings(env, env_file=None)


def test_defaults_follow_the_design() -> None:
    settings = load()
    assert (settings.port, settings.mongo_db, settings.redis_prefix, settings.env) == (
        8080,
        "nubo_recent",
        "nubo:",
        "dev",
    )
    assert settings.retention_days == 30 and settings.jwt_secret == DEV_JWT_SECRET
    assert settings.ws_max_frame_bytes == 64 * 1024


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1048576", 1048576),
        ("512mb", 512 * 1024**2),
        ("64k", 64 * 1024),
        ("64KB", 64 * 1024),
        ("1g", 1024**3),
        (" 10 b ", 10),
        ("0", 0),
    ],
)
def test_sizes(raw: str, expected: int) -> None:
    assert parse_size("X", raw) == expected
    assert load(NUBO_REDIS_MEMORY_BUDGET=raw).redis_memory_budget == expected


@pytest.mark.parametrize("raw", ["12parsecs", "-5mb", "1.5gb", "mb", "ten"])
def test_bad_sizes_name_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(NUBO_WS_MAX_FRAME=raw)
    assert info.value.variable == "NUBO_WS_MAX_FRAME" and raw.strip() in str(info.value)


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(["", "b", "k", "kb", "m", "mb", "g", "gb"]))
def test_size_units_multiply(amount: int, unit: str) -> None:
    factor = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}
    assert parse_size("X", f"{amount}{unit.upper()}") == amount * factor[unit]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("10/5m", RateLimit(10, 300)),
        ("300/minute", RateLimit(300, 60)),
        ("5/30minutes", RateLimit(5, 1800)),
        ("60/10s", RateLimit(60, 10)),
        ("1/h", RateLimit(1, 3600)),
        ("100 / 1 day", RateLimit(100, 86400)),
    ],
)
def test_rates(raw: str, expected: RateLimit) -> None:
    assert parse_rate("X", raw) == expected
    assert load(NUBO_RATE_LOGIN=raw).rate_login == expected


@pytest.mark.parametrize("raw", ["0/m", "10", "10/fortnight", "abc", "10/0m", "-1/m"])
def test_bad_rates_name_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(NUBO_RATE_MESSAGES=raw)
    assert info.value.variable == "NUBO_RATE_MESSAGES"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("900", 900),
        ("15m", 900),
        ("1h", 3600),
        ("30d", 30 * 86400),
        ("45s", 45),
        ("2 hours", 7200),
    ],
)
def test_durations(raw: str, expected: int) -> None:
    assert parse_duration("X", raw) == expected
    assert load(NUBO_ACCESS_TOKEN_TTL=raw).access_token_ttl == expected


@pytest.mark.parametrize("raw", ["0", "-5", "5x", "1.5h", "soon"])
def test_bad_durations_name_the_variable(raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(NUBO_REFRESH_TOKEN_TTL=raw)
    assert info.value.variable == "NUBO_REFRESH_TOKEN_TTL"


def test_memory_margin_percent_or_size() -> None:
    assert load(NUBO_REDIS_MEMORY_MARGIN="10%").memory_margin_bytes(1000) == 100
    assert load(NUBO_REDIS_MEMORY_MARGIN="64mb").memory_margin_bytes(1024**3) == 64 * 1024**2
    for bad in ("95%", "lots"):
        with pytest.raises(SettingsError, match="NUBO_REDIS_MEMORY_MARGIN"):
            load(NUBO_REDIS_MEMORY_MARGIN=bad)


def test_prod_requires_a_32_byte_secret() -> None:
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        load(NUBO_ENV="prod")
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        load(NUBO_ENV="prod", JWT_SECRET="x" * 31)
    assert load(NUBO_ENV="prod", JWT_SECRET="x" * 32).is_prod
    assert load(NUBO_ENV="test", JWT_SECRET="short").jwt_secret == "short"  # only prod insists


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("PORT", "abc"),
        ("PORT", "70000"),
        ("PORT", "-1"),
        ("NUBO_POSTGRES_URL", "not-a-url"),
        ("NUBO_POSTGRES_URL", "postgresql://h:port/db"),
        ("NUBO_MONGO_URL", "postgresql://h/db"),
        ("NUBO_REDIS_PREFIX", "nubo:*"),
        ("NUBO_MONGO_DB", "bad name"),
        ("NUBO_LOG_LEVEL", "loud"),
        ("NUBO_MODERATOR_GRADE", "-1"),
        ("NUBO_WS_QUEUE_SIZE", "0"),
        ("NUBO_RATE_LEASES", "maybe"),
        ("NUBO_NEAR_CACHE", "2"),
    ],
)
def test_bad_values_name_their_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(**{variable: raw})
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}: ")


def test_the_infrastructure_switches_are_on_unless_turned_off() -> None:
    """`NUBO_REDIS_AUTOPIPELINE`, `NUBO_NEAR_CACHE`, `NUBO_RATE_LEASES`: on by default (what ships)."""
    switches = ("redis_autopipeline", "near_cache", "rate_leases")
    assert [getattr(load(), name) for name in switches] == [True, True, True]
    off = load(NUBO_REDIS_AUTOPIPELINE="off", NUBO_NEAR_CACHE="0", NUBO_RATE_LEASES="False")
    assert [getattr(off, name) for name in switches] == [False, False, False]
    on = load(NUBO_REDIS_AUTOPIPELINE="ON", NUBO_NEAR_CACHE="yes", NUBO_RATE_LEASES=" 1 ")
    assert [getattr(on, name) for name in switches] == [True, True, True]


def test_lists_urls_and_empty_values() -> None:
    settings = load(
        NUBO_ALLOWED_ORIGINS="https://a.example, https://b.example,,",
        PORT="",
        NUBO_POSTGRES_URL="postgres://u:p@db:5433/nubo",
        NUBO_REDIS_URL="rediss://cache:6380/1",
    )
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.port == 8080  # an empty value means unset
    assert settings.postgres_url == "postgres://u:p@db:5433/nubo"


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=9000\nNUBO_MONGO_DB=from_file\n")
    settings = load_settings({"NUBO_MONGO_DB": "from_env"}, env_file=env_file)
    assert settings.port == 9000 and settings.mongo_db == "from_env"
    assert load_settings({}, env_file=tmp_path / "missing.env").port == 8080
