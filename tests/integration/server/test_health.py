"""`nubo serve` health endpoints on a real server process: /ping, /healthz, /readyz, OpenAPI, SIGTERM."""

from __future__ import annotations

import dataclasses
import gc
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from nubo.server.app import create_app
from nubo.settings import Settings
from nubo.stores import open_stores
from tests.helpers.harness import ServerProcess, free_port


@pytest.fixture(scope="module")
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server()


def test_ping_body_is_exactly_the_seed_pong(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/ping")
    assert response.status_code == 200
    assert response.content == b'{"message":"pong"}'
    assert response.headers["content-type"].startswith("application/json")


def test_healthz_says_alive(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


def test_readyz_is_200_with_every_store_up(server: ServerProcess, record_property: Any) -> None:
    response = httpx.get(server.url + "/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert {name: state["status"] for name, state in body["stores"].items()} == {
        "postgres": "up",
        "mongo": "up",
        "redis": "up",
    }
    record_property("mongo_server", body["stores"]["mongo"].get("server"))


def test_readyz_is_503_naming_redis_when_redis_is_down(start_server: Callable[..., ServerProcess]) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    broken = start_server({"NUBO_REDIS_URL": closed}, wait_ready=False)
    started = time.monotonic()
    response = httpx.get(broken.url + "/readyz", timeout=10)
    assert time.monotonic() - started < 5  # a down store must not hang the probe
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["down"] == ["redis"]
    assert body["code"] == "store_unavailable" and "redis" in body["error"]
    assert body["stores"]["redis"]["status"] == "down"
    assert body["stores"]["postgres"]["status"] == "up" and body["stores"]["mongo"]["status"] == "up"
    # Liveness does not depend on the stores.
    assert httpx.get(broken.url + "/healthz").status_code == 200


def test_openapi_document_is_served(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/schema/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    for path in ("/ping", "/healthz", "/readyz"):
        assert path in document["paths"]


def test_unknown_path_is_a_json_404(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/no-such-path")
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


def test_sigterm_drains_and_exits_0(start_server: Callable[..., ServerProcess]) -> None:
    own = start_server()
    assert httpx.get(own.url + "/ping").status_code == 200
    assert own.stop() == 0
    logs = own.logs()
    assert "stores_closed" in logs, logs[-2000:]  # the lifespan closed the pools on the way out
    with pytest.raises(httpx.ConnectError):
        httpx.get(own.url + "/ping", timeout=2)


async def test_startup_heap_is_frozen_while_the_app_runs(db: object, settings: Settings) -> None:
    """What startup allocated is out of the collector's reach while the app serves (a full collection would
    walk all of it and pause the loop), and handed back at shutdown."""
    gc.unfreeze()
    async with create_app(settings).lifespan():
        assert gc.get_freeze_count() > 10_000
    assert gc.get_freeze_count() == 0


async def test_readyz_names_a_store_that_does_not_answer(settings: Settings) -> None:
    """A store that accepts connections but never answers: the reason is said (it was `"TimeoutError: "`)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"mongodb://127.0.0.1:{silent.getsockname()[1]}/"
        stores = await open_stores(dataclasses.replace(settings, mongo_url=url))
        try:
            checks = await stores.check(timeout=0.5)
        finally:
            await stores.close()
    assert checks["mongo"] == {"status": "down", "error": "mongo did not answer within 0.5 s"}
    assert checks["postgres"]["status"] == "up"
