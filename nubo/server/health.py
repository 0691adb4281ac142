"""Liveness and readiness: `/ping` (the seed's), `/healthz`, `/readyz` (each store's status)."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency

from nubo.stores import Stores


@get("/ping", summary="Seed ping", tags=["health"])
async def ping() -> dict[str, str]:
    return {"message": "pong"}


@get("/healthz", summary="Process is alive", tags=["health"])
async def healthz() -> dict[str, str]:
    return {"status": "alive"}


@get("/readyz", summary="Every store answers", tags=["health"])
async def readyz(stores: NamedDependency[Stores]) -> Response[dict[str, Any]]:
    checks = await stores.check()
    down = [name for name, state in checks.items() if state["status"] != "up"]
    if down:
        body = {
            "status": "unavailable",
            "error": f"store down: {', '.join(down)}",
            "code": "store_unavailable",
            "down": down,
            "stores": checks,
        }
        return Response(body, status_code=503)
    return Response({"status": "ready", "stores": checks, "near_cache": stores.near.status()}, status_code=200)


ROUTES = [ping, healthz, readyz]
