"""schemathesis over every operation of the OpenAPI document, with every check, against a real `nubo serve`
(docs/api.md "Contract tests").

Bounded to fit CI: a few examples per operation, no shrinking, a fixed seed. Run as a signed-in user and as a
moderator (so the admin routes answer more than 403), with the rate limits raised. The operations that end
the caller's own session or account (`POST /logout`, `DELETE /me`, `DELETE /sessions/{id}`) get a run of
their own with a throwaway user, since the other runs need their token to stay valid. Any 5xx or any check
failure fails the test, except the accepted ones listed in :data:`ACCEPTED`.
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
}


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server(RAISED_LIMITS)


async def _signed_in(server: ServerProcess) -> tuple[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        body = signup_body()
        assert (await client.post("/signup", json=body)).status_code == 201
        account = await login(client, body["username"])
    return account.access_token, account


def _run(server: ServerProcess, token: str, report: Path, *filters: str) -> dict[str, Any]:
    """One schemathesis run; its JSON report."""
    command = [
        str(Path(sys.executable).parent / "schemathesis"),
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
        "10",
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


def _failures(summary: dict[str, Any]) -> list[str]:
    """Each (failure code, operation) of a run's JSON report that :data:`ACCEPTED` does not list."""
    found = []
    for failure in summary.get("failures") or []:
        for operation in failure.get("operations") or ["?"]:
            if (failure.get("code"), operation) not in ACCEPTED:
                found.append(f"{operation}: {failure.get('code')} {failure.get('title')}")
    return found


async def test_schemathesis_finds_nothing(
    server: ServerProcess, db: Stores, settings: Settings, tmp_path: Path, record_property: Any
) -> None:
    user_token, _ = await _signed_in(server)
    moderator_token, moderator = await _signed_in(server)
    await set_user_fields(db, moderator.id, grade=settings.moderator_grade)
    throwaway_token, _ = await _signed_in(server)
    plans = {
        "user": (user_token, ("--exclude-name-regex", SELF_ENDING)),
        "moderator": (moderator_token, ("--include-tag", "moderation")),
        "self-ending": (throwaway_token, ("--include-name-regex", SELF_ENDING)),
    }
    runs = {
        name: await asyncio.to_thread(_run, server, token, tmp_path / f"{name}.json", *filters)
        for name, (token, filters) in plans.items()
    }
    summary = {
        name: {
            "operations": run["operations"]["tested"],
            "cases": run["test_cases"]["generated"],
            "failures": run["test_cases"]["unique_failures"],
            "seconds": run["_seconds"],
        }
        for name, run in runs.items()
    }
    record_property("schemathesis", summary)
    print(f"schemathesis: {summary}")
    for name, run in runs.items():
        assert run["complete"] and not run["errors"], (name, run["errors"], run["_output"][-3000:])
        assert run["operations"]["tested"] > 0, name
    found = {name: _failures(run) for name, run in runs.items()}
    assert not any(found.values()), (
        "\n".join(f"{name}: {failure}" for name, failures in found.items() for failure in failures)
        + "\n\n"
        + "\n".join(run["_output"][-8000:] for run in runs.values() if _failures(run))
    )
