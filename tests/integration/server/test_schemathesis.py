"""schemathesis over every operation of the OpenAPI document, with every check, against a real `nubo serve`
(docs/api.md "Contract tests").

Bounded to fit CI: a few examples per operation, no shrinking, a fixed seed. Run as a signed-in user and as a
moderator (so the admin routes answer more than 403), with the rate limits raised; half the path ids are rows
that exist (a post, a comment, a conversation...), so that success responses are checked too. The operations
that end the caller's own session or account (`POST /logout`, `DELETE /me`, `DELETE /sessions/{id}`) get a
run of their own with a throwaway user, since the other runs need their token to stay valid. Any 5xx or any
check failure fails the test, except the accepted ones listed in :data:`ACCEPTED`.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from nubo.settings import Settings
from nubo.stores import Stores
from tests.helpers.auth import login, signup_body
from tests.helpers.harness import ServerProcess
from tests.helpers.social import set_user_fields

SELF_ENDING = r"^(POST /logout|DELETE /me|DELETE /sessions/\{session_id\})$"
MAX_EXAMPLES = "5"
RAISED_LIMITS = {
    "NUBO_RATE_DEFAULT": "100000/minute",
    "NUBO_RATE_LOGIN": "100000/minute",
    "NUBO_RATE_SIGNUP": "100000/minute",
    "NUBO_RATE_MESSAGES": "100000/minute",
}
# (failure code, operation) pairs a run may fail without failing the test, each with its reason. Keep it short.
ACCEPTED: dict[tuple[str, str], str] = {
    ("ST202", "PATCH /me"): "a birthdate may not be in the future: no JSON Schema keyword compares with today",
    ("ST202", "POST /signup"): "a birthdate may not be in the future: no JSON Schema keyword compares with today",
    ("ST202", "POST /posts"): "media_ids must name media the caller uploaded: it depends on stored rows",
    ("ST202", "PATCH /posts/{post_id}"): "media_ids must name media the caller uploaded: it depends on stored rows",
    ("ST202", "POST /media"): "the size limit per kind and the daily quota are settings, the quota stored rows",
    ("ST202", "POST /conversations/{conversation_id}/messages"): "media_ids must name the sender's ready media",
}


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(RAISED_LIMITS)


async def _existing_rows(server: ServerProcess, token: str) -> dict[str, str]:
    """Rows the user's run can find (else every `{id}` route answers only 404): a peer, a post with a comment,
    a media, a group conversation with a message, and a report. By path parameter name."""
    headers = {"Authorization": f"Bearer {token}"}
    _, peer = await _signed_in(server)
    async with httpx.AsyncClient(base_url=server.url, timeout=10, headers=headers) as client:

        async def created(path: str, body: dict[str, Any]) -> str:
            response = await client.post(path, json=body)
            assert response.status_code == 201, response.text
            return str(response.json()["id"])

        async def created_grant(client: httpx.AsyncClient) -> dict[str, Any]:
            response = await client.post("/media", json={"kind": "image", "content_type": "image/jpeg", "size": 10})
            assert response.status_code == 201, response.text
            return dict(response.json())

        post_id = await created("/posts", {"content": "a post to fuzz #nubo"})
        conversation_id = await created("/conversations", {"type": "group", "user_ids": [str(peer.id)], "title": "g"})
        return {
            "user_id": str(peer.id),
            "post_id": post_id,
            "comment_id": await created(f"/posts/{post_id}/comments", {"content": "a comment"}),
            "media_id": (await created_grant(client))["media"]["id"],
            "conversation_id": conversation_id,
            "message_id": await created(f"/conversations/{conversation_id}/messages", {"content": "hi"}),
            "report_id": await created("/reports", {"target_type": "post", "target_id": post_id, "reason": "spam"}),
        }


def _config(path: Path, rows: dict[str, str]) -> Path:
    """A schemathesis.toml drawing each path parameter from its existing row half of the time."""
    lines = [f'[dictionaries.{name}]\nvalues = ["{value}"]\n' for name, value in rows.items()]
    lines.append("[parameters]")
    lines += [f'"path.{name}" = {{ dictionary = "{name}", probability = 0.5 }}' for name in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


async def _signed_in(server: ServerProcess) -> tuple[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        body = signup_body()
        assert (await client.post("/signup", json=body)).status_code == 201
        account = await login(client, body["username"])
    return account.access_token, account


def _run(server: ServerProcess, token: str, report: Path, config: Path, *filters: str) -> dict[str, Any]:
    """One schemathesis run; its JSON report."""
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
        "--config-file",
        str(config),
        "run",
        f"{server.url}/schema/openapi.json",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        MAX_EXAMPLES,
        "--seed",
        "14",
        "--no-shrink",
        "--workers",
        "2",
        "--request-timeout",
        "30",  # generous: CI machines are shared, and a timeout is reported as an error
        "--header",
        f"Authorization: Bearer {token}",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--suppress-health-check",
        "all",
        *filters,
    ]
    started = time.monotonic()
    # In the test's own directory: schemathesis keeps a cache where it runs.
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False, cwd=report.parent)
    summary: dict[str, Any] = json.loads(report.read_text())
    summary["_seconds"] = round(time.monotonic() - started, 1)
    summary["_output"] = done.stdout + done.stderr
    return summary


def _failure_pairs(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Each (failure code, operation, title) of a run's JSON report."""
    return [
        (str(failure.get("code")), str(operation), str(failure.get("title")))
        for failure in summary.get("failures") or []
        for operation in failure.get("operations") or ["?"]
    ]


def _failures(summary: dict[str, Any]) -> list[str]:
    """The failures of a run that :data:`ACCEPTED` does not list."""
    return [f"{op}: {code} {title}" for code, op, title in _failure_pairs(summary) if (code, op) not in ACCEPTED]


async def test_schemathesis_finds_nothing(
    server: ServerProcess, db: Stores, settings: Settings, tmp_path: Path, record_property: Any
) -> None:
    user_token, _ = await _signed_in(server)
    moderator_token, moderator = await _signed_in(server)
    await set_user_fields(db, moderator.id, grade=settings.moderator_grade)
    throwaway_token, _ = await _signed_in(server)
    config = _config(tmp_path / "schemathesis.toml", await _existing_rows(server, user_token))
    plans = {
        "user": (user_token, ("--exclude-name-regex", SELF_ENDING)),
        "moderator": (moderator_token, ("--include-tag", "moderation")),
        "self-ending": (throwaway_token, ("--include-name-regex", SELF_ENDING)),
    }
    runs = {
        name: await asyncio.to_thread(_run, server, token, tmp_path / f"{name}.json", config, *filters)
        for name, (token, filters) in plans.items()
    }
    summary = {
        name: {
            "operations": run["operations"]["tested"],
            "cases": run["test_cases"]["generated"],
            "failures": run["test_cases"]["unique_failures"],
            "accepted": len(_failure_pairs(run)) - len(_failures(run)),
            "only_404": len((run.get("warnings") or {}).get("missing_test_data") or []),
            "seconds": run["_seconds"],
        }
        for name, run in runs.items()
    }
    record_property("schemathesis", summary)
    print(f"schemathesis: {summary}")
    for name, run in runs.items():
        errors_at = max(run["_output"].find("ERRORS"), 0)
        assert run["complete"] and not run["errors"], (name, run["_output"][errors_at : errors_at + 6000])
        assert run["operations"]["tested"] > 0, name
    found = {name: _failures(run) for name, run in runs.items()}
    assert not any(found.values()), (
        "\n".join(f"{name}: {failure}" for name, failures in found.items() for failure in failures)
        + "\n\n"
        + "\n".join(run["_output"][-8000:] for run in runs.values() if _failures(run))
    )
