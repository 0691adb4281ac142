"""Liveness and readiness: `/ping` (the seed's), `/healthz`, `/readyz` (each store's status).

Each answer is a typed shape; a store's entry is whatever its probe reports (`status` plus details or the
error, see :meth:`nubo.stores.Stores.check`).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Response, get
from litestar.di import NamedDependency

from nubo.stores import Stores

PUBLIC: list[dict[str, list[str]]] = [{}]  # OpenAPI: no token needed


class Pong(msgspec.Struct):
    """The seed's ping answer, `{"message": "pong"}`."""

    message: str


class Alive(msgspec.Struct):
    """The process answers."""

    status: str


class Ready(msgspec.Struct):
    """Every store answers; `near_cache` is the in-process cache's state and counters."""

    status: str
    stores: dict[str, dict[str, Any]]
    near_cache: dict[str, Any]


class Unready(msgspec.Struct):
    """A store is down (503): the error shape plus the names of the stores down and every store's state."""

    status: str
    error: str
    code: str
    down: list[str]
    stores: dict[str, dict[str, Any]]


@get("/ping", summary="Seed ping", tags=["health"], security=PUBLIC)
async def ping() -> Pong:
    return Pong("pong")


@get("/healthz", summary="Process is alive", tags=["health"], security=PUBLIC)
async def healthz() -> Alive:
    return Alive("alive")


@get("/readyz", summary="Every store answers", tags=["health"], security=PUBLIC)
async def readyz(stores: NamedDependency[Stores]) -> Response[Ready | Unready]:
    checks = await stores.check()
    down = [name for name, state in checks.items() if state["status"] != "up"]
    if down:
        reasons = "; ".join(f"{name}: {checks[name].get('error', 'down')}" for name in down)
        body = Unready("unavailable", f"store down: {reasons}", "store_unavailable", down, checks)
        return Response(body, status_code=503)
    return Response(Ready("ready", checks, stores.near.status()), status_code=200)


ROUTES = [ping, healthz, readyz]
