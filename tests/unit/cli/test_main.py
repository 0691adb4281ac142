"""The `nubo` command (nubo.cli.main) registers its commands; their help is checked on real processes in
`tests/integration/cli/test_main.py`."""

from __future__ import annotations

from tests.helpers.cli import command_paths


def test_the_foundation_commands_are_registered() -> None:
    paths = {path for path, _ in command_paths()}
    assert {(), ("serve",), ("db",), ("db", "init"), ("db", "purge")} <= paths
