"""The long-command pattern of nubo/cli/common.py: progress only for a person, JSON alone on stdout."""

from __future__ import annotations

import json

import pytest

from nubo.cli.common import finish, working


def test_json_output_shows_no_progress_and_prints_only_json(capsys: pytest.CaptureFixture[str]) -> None:
    with working("purging", json_output=True) as progress:
        progress.update("posts_recent", 1, 3)  # a no-op without a display
    finish({"total": 3}, True, lambda _r: print("table"), lambda r: {**r, "ok": True})
    out, err = capsys.readouterr()
    assert json.loads(out) == {"total": 3, "ok": True} and err == ""


def test_human_output_uses_the_printer(capsys: pytest.CaptureFixture[str]) -> None:
    with working("purging", json_output=False) as progress:  # stderr is not a terminal here: no display
        progress.update("step")
    finish({"total": 3}, False, lambda r: print(f"deleted {r['total']}"))
    assert capsys.readouterr().out == "deleted 3\n"
