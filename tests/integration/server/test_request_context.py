"""Request ids (in responses, log lines and WebSocket error events) and who may read `/metrics`."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from nubo.server.app import create_app
from nubo.settings import Settings
from nubo.stores import Stores
from tests.helpers.harness import ServerProcess
from tests.helpers.messaging import WsClient, make_user

GENERATED = re.compile(r"[0-9a-f]{32}")
TOKEN = "metrics-token-for-tests-0123456789"


def _log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    lines = []
    for line in server.logs().splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            continue
    return lines


async def test_request_id_is_kept_when_safe_else_generated(client: AsyncTestClient[Any]) -> None:
    kept = await client.get("/ping", headers={"X-Request-ID": "edge-7f3a:42"})
    assert kept.headers["x-request-id"] == "edge-7f3a:42"
    for unsafe in ("has space", "x" * 129, "semi;colon", "<script>"):
        replaced = await client.get("/ping", headers={"X-Request-ID": unsafe})
        assert GENERATED.fullmatch(replaced.headers["x-request-id"]), unsafe
    first, second = (
        (await client.get("/ping")).headers["x-request-id"],
        (await client.get("/ping")).headers["x-request-id"],
    )
    assert GENERATED.fullmatch(first) and first != second
    # Errors carry it too: the auth middleware's 401 and a route that does not exist.
    assert (await client.get("/me", headers={"X-Request-ID": "r-401"})).headers["x-request-id"] == "r-401"
    assert (await client.get("/no/such/route", headers={"X-Request-ID": "r-404"})).headers["x-request-id"] == "r-404"


async def test_request_id_in_log_lines_and_websocket_errors(
    db: Stores, start_server: Callable[..., ServerProcess]
) -> None:
    server = start_server()
    async with httpx.AsyncClient(base_url=server.url) as http:
        refused = await http.post(
            "/login",
            json={"username": "nobody-here", "password": "wrong password 123"},
            headers={"X-Request-ID": "login-trace-1"},
        )
    assert refused.status_code == 401 and refused.headers["x-request-id"] == "login-trace-1"
    failed = [line for line in _log_lines(server) if line.get("event") == "login_failed"]
    assert failed and failed[-1]["request_id"] == "login-trace-1"

    user = await make_user(db, "rid")
    socket = await WsClient.connect(server.ws_url, user.token, headers={"X-Request-ID": "ws-trace-1"})
    try:
        await socket.hello()
        await socket.send("{not json")
        await socket.send({"type": "no.such.type"})
        await socket.wait_for(lambda c: len(c.events("error")) == 2)
        assert [e["request_id"] for e in socket.events("error")] == ["ws-trace-1", "ws-trace-1"]
        assert [e["code"] for e in socket.events("error")] == ["invalid_json", "unknown_type"]
    finally:
        await socket.close()


async def test_metrics_open_in_test_env_and_counted_by_route_template(client: AsyncTestClient[Any]) -> None:
    await client.get("/posts/0190d4b8-0000-7000-8000-000000000000")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    routes = {s.labels["route"] for s in families["nubo_http_requests"].samples if "route" in s.labels}
    assert "/posts/{post_id}" in routes  # the template, never the id
    assert not any("0190d4b8" in route for route in routes)
    assert {s.labels["store"]: s.value for s in families["nubo_store_up"].samples} == {
        "postgres": 1.0,
        "mongo": 1.0,
        "redis": 1.0,
    }


async def test_metrics_token_prod_and_off(db: Stores, settings: Settings) -> None:
    with_token = dataclasses.replace(settings, metrics_token=TOKEN)
    async with AsyncTestClient(create_app(with_token)) as client:
        assert (await client.get("/metrics")).json()["code"] == "invalid_metrics_token"
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer " + TOKEN[:-1] + "x"})
        assert wrong.status_code == 401
        assert (await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})).status_code == 200
    prod = dataclasses.replace(settings, env="prod")
    async with AsyncTestClient(create_app(prod)) as client:
        refused = await client.get("/metrics")
        assert refused.status_code == 403 and refused.json()["code"] == "metrics_token_unset"
    off = dataclasses.replace(settings, metrics=False)
    async with AsyncTestClient(create_app(off)) as client:
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/ping")).headers["x-request-id"]  # request ids do not depend on metrics
