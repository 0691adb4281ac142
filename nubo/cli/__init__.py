"""The `nubo` command: thin Typer commands that parse, call the library and print with Rich."""
