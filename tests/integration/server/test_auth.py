"""Auth across real `nubo serve` processes sharing PostgreSQL and Redis: the whole flow split over two
instances, rate limits shared by both, real 2 MiB bodies, the WebSocket handshake guard and the log files.

The servers trust 127.0.0.1 as a proxy, so each test picks its own client address with `X-Forwarded-For`
(documentation ranges: header values only, no traffic goes there). Rates are the defaults, set explicitly.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from nubo.settings import Settings
from nubo.stores import Stores
from tests.helpers.auth import (
    PASSWORD,
    Account,
    assert_error,
    claims_of,
    login,
    new_account,
    signup_body,
)
from tests.helpers.harness import ServerProcess

pytestmark = pytest.mark.e2e

DEFAULT_RATES = {"NUBO_RATE_LOGIN": "10/300s", "NUBO_RATE_SIGNUP": "5/1800s", "NUBO_RATE_DEFAULT": "600/60s"}
PROXY_ENV = {**DEFAULT_RATES, "NUBO_TRUSTED_PROXIES": "127.0.0.1"}


def new_ip() -> str:
    return (
        f"198.51.{random.randint(0, 255)}.{random.randint(1, 254)}"
        if random.random() < 0.5
        else f"2001:db8::{random.randint(1, 0xFFFF):x}:{random.randint(1, 0xFFFF):x}"
    )


@pytest.fixture(scope="module")
def pair(db: Stores, start_server: Callable[..., ServerProcess]) -> tuple[ServerProcess, ServerProcess]:
    return start_server(PROXY_ENV), start_server(PROXY_ENV)


@pytest.fixture
async def clients(pair: tuple[ServerProcess, ServerProcess]) -> AsyncIterator[tuple[httpx.AsyncClient, ...]]:
    ip = new_ip()  # one client address per test, seen by both servers
    async with (
        httpx.AsyncClient(base_url=pair[0].url, headers={"X-Forwarded-For": ip}, timeout=30) as a,
        httpx.AsyncClient(base_url=pair[1].url, headers={"X-Forwarded-For": ip}, timeout=30) as b,
    ):
        yield a, b


async def test_flow_across_two_servers_and_nothing_secret_leaks(
    pair: tuple[ServerProcess, ServerProcess], clients: tuple[httpx.AsyncClient, ...], db: Stores
) -> None:
    a, b = clients
    responses: list[httpx.Response] = []
    body = signup_body()
    responses.append(await a.post("/signup", json=body))
    assert responses[-1].status_code == 201, responses[-1].text
    first = await login(b, body["username"])
    responses.append(await a.get("/me", headers=first.headers))
    assert responses[-1].status_code == 200
    rotated = await b.post("/token/refresh", json={"refresh_token": first.refresh_token})
    assert rotated.status_code == 200, rotated.text
    second = rotated.json()
    responses.append(await a.post("/token/refresh", json={"refresh_token": first.refresh_token}))
    assert_error(responses[-1], 401, "refresh_token_reused")
    for client in (a, b):  # refused at once on both instances
        for token in (first.access_token, second["access_token"]):
            responses.append(await client.get("/me", headers={"Authorization": f"Bearer {token}"}))
            assert_error(responses[-1], 401, "invalid_token")
    again = await login(a, body["username"])
    responses.append(await b.get("/sessions", headers=again.headers))
    assert responses[-1].status_code == 200 and len(responses[-1].json()["items"]) == 1
    responses.append(await b.post("/login", json={"username": body["username"], "password": "wrong-password"}))

    async with db.pg.connection() as conn:
        row = await (
            await conn.execute("SELECT password_hash FROM auth.users WHERE username = %s", (body["username"],))
        ).fetchone()
    assert row is not None and row["password_hash"].startswith("$argon2id$")
    secrets = [
        PASSWORD,
        row["password_hash"],
        row["password_hash"].split("$")[-1],
        first.refresh_token,
        second["refresh_token"],
        again.refresh_token,
    ]
    for response in responses:  # login/refresh answers carry their own refresh token; nothing else does
        for secret in secrets:
            assert secret not in response.text, (response.request.url, secret[:6])
    logs = pair[0].logs() + pair[1].logs()
    assert "login_succeeded" in logs and "refresh_token_reused" in logs  # the logs were captured
    for secret in [*secrets, first.access_token, second["access_token"]]:
        assert secret not in logs, secret[:6]


async def test_eleventh_failed_login_from_one_ip_across_two_servers_is_429(
    clients: tuple[httpx.AsyncClient, ...], pair: tuple[ServerProcess, ServerProcess]
) -> None:
    a, b = clients
    for attempt in range(10):  # alternate instances; each attempt names another (unknown) account
        client = (a, b)[attempt % 2]
        response = await client.post(
            "/login", json={"username": f"nobody{uuid.uuid4().hex[:8]}", "password": "wrong-password"}
        )
        assert_error(response, 401, "invalid_credentials")
    for client in (a, b):
        refused = await client.post("/login", json={"username": "whoever", "password": "wrong-password"})
        assert_error(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 300
        assert refused.headers["x-ratelimit-limit"] == "10" and refused.headers["x-ratelimit-remaining"] == "0"
        assert 1 <= int(refused.headers["x-ratelimit-reset"]) <= 300
    # Another client address is not affected.
    async with httpx.AsyncClient(base_url=pair[1].url, headers={"X-Forwarded-For": new_ip()}) as other:
        response = await other.post("/login", json={"username": "whoever", "password": "wrong-password"})
        assert_error(response, 401, "invalid_credentials")


async def test_eleventh_failed_login_on_one_account_from_many_ips_is_429(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    body = signup_body()
    async with httpx.AsyncClient(base_url=pair[0].url, headers={"X-Forwarded-For": new_ip()}) as setup:
        assert (await setup.post("/signup", json=body)).status_code == 201
        holder = await login(setup, body["username"])  # an existing session (this attempt counts too)
    for attempt in range(9):
        async with httpx.AsyncClient(base_url=pair[attempt % 2].url, headers={"X-Forwarded-For": new_ip()}) as client:
            wrong = {"username": body["username"], "password": "nope-nope"}
            assert_error(await client.post("/login", json=wrong), 401, "invalid_credentials")
    async with httpx.AsyncClient(base_url=pair[1].url, headers={"X-Forwarded-For": new_ip()}) as client:
        locked = await client.post("/login", json={"email": body["email"], "password": PASSWORD})
        assert_error(locked, 429, "rate_limited")  # the 11th attempt, right password, by email, new address
        # The existing session is untouched: only new logins wait.
        assert (await client.get("/me", headers=holder.headers)).status_code == 200


async def test_sixth_signup_from_one_ip_is_429(clients: tuple[httpx.AsyncClient, ...]) -> None:
    a, b = clients
    for attempt in range(5):
        response = await (a, b)[attempt % 2].post("/signup", json=signup_body())
        assert response.status_code == 201, response.text
    refused = await b.post("/signup", json=signup_body())
    assert_error(refused, 429, "rate_limited")
    assert refused.headers["x-ratelimit-limit"] == "5" and int(refused.headers["retry-after"]) > 60


async def test_per_user_default_limit(db: Stores, start_server: Callable[..., ServerProcess]) -> None:
    server = start_server({**DEFAULT_RATES, "NUBO_RATE_DEFAULT": "5/minute"})
    async with httpx.AsyncClient(base_url=server.url) as client:
        alice, bob = await new_account(client), await new_account(client)
        remaining = []
        for _ in range(5):
            response = await client.get("/me", headers=alice.headers)
            assert response.status_code == 200 and response.headers["x-ratelimit-limit"] == "5"
            remaining.append(int(response.headers["x-ratelimit-remaining"]))
        assert remaining == [4, 3, 2, 1, 0]
        refused = await client.get("/me/settings", headers=alice.headers)
        assert_error(refused, 429, "rate_limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert (await client.get("/me", headers=bob.headers)).status_code == 200
        assert (await client.get("/ping")).status_code == 200  # public routes are not counted per user


async def test_two_mib_bodies_on_a_real_server(
    pair: tuple[ServerProcess, ServerProcess], clients: tuple[httpx.AsyncClient, ...]
) -> None:
    a, _ = clients
    account = await new_account(a)
    big = json.dumps({"padding": "x" * (2 * 1024 * 1024)}).encode()
    for method, path, headers in (
        ("POST", "/signup", {}),
        ("POST", "/login", {}),
        ("POST", "/token/refresh", {}),
        ("PATCH", "/me", account.headers),
        ("PUT", "/me/settings", account.headers),
    ):
        response = await a.request(method, path, content=big, headers={**headers, "content-type": "application/json"})
        assert_error(response, 413, "payload_too_large")
    # Without a token the guard answers first, before any body is read.
    assert_error(
        await a.request("PATCH", "/me", content=big, headers={"content-type": "application/json"}),
        401,
        "missing_token",
    )


async def _ws_refusal(url: str, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as caught:
        async with websockets.connect(url, open_timeout=10, **kwargs):
            pass
    response = caught.value.response
    return response.status_code, json.loads(response.body or b"{}")


async def test_websocket_handshake_is_guarded(
    pair: tuple[ServerProcess, ServerProcess], clients: tuple[httpx.AsyncClient, ...], settings: Settings
) -> None:
    a, _ = clients
    server = pair[1]
    account = await new_account(a)
    status, body = await _ws_refusal(server.ws_url)
    assert (status, body.get("code")) == (401, "missing_token")
    status, body = await _ws_refusal(server.ws_url + "?token=not.a.jwt")
    assert (status, body.get("code")) == (401, "invalid_token")
    status, body = await _ws_refusal(
        server.ws_url, additional_headers={"Authorization": "Bearer " + account.access_token[:-3]}
    )
    assert (status, body.get("code")) == (401, "invalid_token")
    for connect_kwargs in ({"additional_headers": account.headers}, {}):
        url = server.ws_url if connect_kwargs else f"{server.ws_url}?token={account.access_token}"
        async with websockets.connect(url, open_timeout=10, **connect_kwargs) as socket:
            assert socket.protocol.state.name == "OPEN"
    assert (await a.delete(f"/sessions/{account.session_id}", headers=account.headers)).status_code == 204
    status, body = await _ws_refusal(f"{server.ws_url}?token={account.access_token}")
    assert (status, body.get("code")) == (401, "invalid_token")
    assert account.access_token not in server.logs()  # the ?token= query string is never logged
    assert claims_of(account.access_token)["sub"] == str(account.id)


async def test_concurrent_refreshes_on_two_servers(
    pair: tuple[ServerProcess, ServerProcess], clients: tuple[httpx.AsyncClient, ...]
) -> None:
    a, b = clients
    account: Account = await new_account(a)
    for _ in range(3):
        results = await asyncio.gather(
            *(client.post("/token/refresh", json={"refresh_token": account.refresh_token}) for client in (a, b, a, b))
        )
        assert [r.status_code for r in results].count(200) <= 1, [r.text for r in results]
        account = await login(b, account.username)
