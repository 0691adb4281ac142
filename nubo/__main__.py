"""`python -m nubo` is the `nubo` command."""

from nubo.cli.main import run

run()
