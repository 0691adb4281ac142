"""`nubo users grant|revoke|ban|unban`: operator changes that a running app sees at its next request (its
cached user rows, near copies and session mirrors follow), with an audit row each."""

from __future__ import annotations

import json
from typing import Any

from nubo.stores import Stores, session_mirrors
from tests.helpers.auth import PASSWORD, Client, assert_error, new_account
from tests.helpers.harness import run_nubo


def users(env: dict[str, str], *args: str, expect: int = 0) -> dict[str, Any]:
    result = run_nubo(["users", *args, "--json"], env, timeout=60)
    assert result.returncode == expect, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout) if expect == 0 else {"stderr": result.stderr}


async def test_grant_and_revoke_apply_at_the_next_request(
    client: Client, db: Stores, process_env: dict[str, str]
) -> None:
    account = await new_account(client)
    assert_error(await client.get("/admin/reports", headers=account.headers), 403, "forbidden")

    granted = users(process_env, "grant", account.username, "--role", "moderator")
    assert (granted["role"], granted["grade"], granted["state"]) == ("moderator", 5, "active")
    # Same token, no new login: the cached row and the session mirror already say moderator.
    assert (await client.get("/admin/reports", headers=account.headers)).status_code == 200
    assert (await client.get("/me", headers=account.headers)).json()["grade"] == 5
    mirror = session_mirrors.decode(await session_mirrors.read(db, account.session_id) or b"{}")
    assert mirror is not None and mirror.grade == 5

    assert users(process_env, "grant", str(account.id), "--role", "admin")["role"] == "admin"
    assert users(process_env, "revoke", account.username)["role"] == "user"
    assert_error(await client.get("/admin/reports", headers=account.headers), 403, "forbidden")

    async with db.pg.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT action, data FROM moderation.audit_logs WHERE entity_id = %s ORDER BY id", (account.id,)
            )
        ).fetchall()
    assert [(r["action"], r["data"]["role"]) for r in rows] == [
        ("operator.role", "moderator"),
        ("operator.role", "admin"),
        ("operator.role", "user"),
    ]


async def test_ban_ends_sessions_at_once_and_unban_lets_the_user_back(
    client: Client, process_env: dict[str, str]
) -> None:
    account, viewer = await new_account(client), await new_account(client)
    assert (await client.get(f"/users/{account.id}", headers=viewer.headers)).status_code == 200

    banned = users(process_env, "ban", account.username)
    assert banned["state"] == "banned" and banned["revoked_sessions"] == 1
    assert_error(await client.get("/me", headers=account.headers), 401)
    assert_error(await client.get(f"/users/{account.id}", headers=viewer.headers), 404, "user_not_found")
    login = {"username": account.username, "password": PASSWORD}
    assert_error(await client.post("/login", json=login), 401, "invalid_credentials")

    assert users(process_env, "unban", account.username)["state"] == "active"
    assert (await client.post("/login", json=login)).status_code == 200
    assert (await client.get(f"/users/{account.id}", headers=viewer.headers)).status_code == 200


def test_unknown_user_and_bad_role(db: Stores, process_env: dict[str, str]) -> None:
    missing = users(process_env, "ban", "nobody_here_x", expect=1)
    assert "No user" in missing["stderr"]
    bad = run_nubo(["users", "grant", "someone", "--role", "god"], process_env, timeout=60)
    assert bad.returncode == 2 and "--role" in bad.stderr
