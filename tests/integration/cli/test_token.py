"""`nubo token`: a real access token (backed by a session) for an existing user; clear errors otherwise."""

from __future__ import annotations

import json
from urllib.parse import urlsplit, urlunsplit

import pytest

from nubo.stores import Stores
from tests.helpers.auth import Client, assert_error, claims_of, new_account
from tests.helpers.harness import run_nubo


async def test_token_by_username_and_by_id(client: Client, process_env: dict[str, str]) -> None:
    account = await new_account(client)
    for ref in (account.username.upper(), str(account.id)):
        result = run_nubo(["token", "--sub", ref, "--json"], process_env)
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert out["user_id"] == str(account.id) and out["token_type"] == "bearer" and out["expires_in"] == 3600
        claims = claims_of(out["access_token"])
        assert claims["exp"] - claims["iat"] == 3600 and claims["sid"] == out["session_id"]
        me = await client.get("/me", headers={"Authorization": f"Bearer {out['access_token']}"})
        assert me.status_code == 200 and me.json()["username"] == account.username


async def test_plain_output_and_ttl(client: Client, process_env: dict[str, str]) -> None:
    account = await new_account(client)
    result = run_nubo(["token", "--sub", account.username, "--ttl", "2h"], process_env)
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    claims = claims_of(token)
    assert claims["exp"] - claims["iat"] == 7200
    # The token's session is a real one: revoking it stops the token.
    sessions = await client.get("/sessions", headers={"Authorization": f"Bearer {token}"})
    current = [s for s in sessions.json()["items"] if s["current"]]
    assert current and current[0]["device_info"] == {"user_agent": "nubo token"}
    await client.delete(f"/sessions/{current[0]['id']}", headers={"Authorization": f"Bearer {token}"})
    assert_error(await client.get("/me", headers={"Authorization": f"Bearer {token}"}), 401, "invalid_token")


@pytest.mark.parametrize("ref", ["nobody_here_x", "00000000-0000-7000-8000-000000000000"])
def test_unknown_user_exits_1(db: Stores, process_env: dict[str, str], ref: str) -> None:
    result = run_nubo(["token", "--sub", ref], process_env)
    assert result.returncode == 1
    assert "No user" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("ttl", ["forever", "0", "-5m", "400d"])
def test_bad_ttl_exits_2(db: Stores, process_env: dict[str, str], ttl: str) -> None:
    result = run_nubo(["token", "--sub", "someone", "--ttl", ttl], process_env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "--ttl" in result.stderr or "ttl" in result.stderr.lower()


async def test_deactivated_user_exits_1(client: Client, process_env: dict[str, str]) -> None:
    account = await new_account(client)
    assert (await client.delete("/me", headers=account.headers)).status_code == 204
    result = run_nubo(["token", "--sub", account.username], process_env)
    assert result.returncode == 1 and "not active" in result.stderr


def test_wrong_postgres_password_is_one_line_naming_the_cause(process_env: dict[str, str]) -> None:
    url = urlsplit(process_env["NUBO_POSTGRES_URL"])
    netloc = f"{url.username}:not-the-password@{url.hostname}:{url.port}"
    env = {**process_env, "NUBO_POSTGRES_URL": urlunsplit(url._replace(netloc=netloc))}
    result = run_nubo(["token", "--sub", "someone"], env, timeout=60)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no pool warnings, no PoolTimeout
    assert "PostgreSQL" in lines[0] and "password authentication failed" in lines[0], lines
    assert "not-the-password" not in result.stderr
