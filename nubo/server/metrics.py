"""`GET /metrics`: the Prometheus text exposition of this deployment (docs/metrics.md).

Access: with `NUBO_METRICS_TOKEN` set, only ``Authorization: Bearer <token>`` (compared in constant time);
without it, open in dev and test and refused in prod, so that a production server never exposes its metrics
by accident. With `NUBO_METRICS=off` the route answers 404. Not part of the OpenAPI document.
"""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from litestar import Request, Response, get

from nubo.errors import Forbidden, NotFound, Unauthorized
from nubo.metrics import CONTENT_TYPE, render
from nubo.root import Root
from nubo.stores.observed import scrape_families


def _check_access(root: Root, authorization: str | None) -> None:
    settings = root.settings
    if not settings.metrics:
        raise NotFound("Metrics are off (NUBO_METRICS=off)", code="not_found")
    token = settings.metrics_token
    if not token:
        if settings.is_prod:
            raise Forbidden("Set NUBO_METRICS_TOKEN to read metrics in production", code="metrics_token_unset")
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("A valid metrics bearer token is required", code="invalid_metrics_token")


@get("/metrics", include_in_schema=False, opt={"exclude_from_auth": True})
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    root: Root = request.app.state.root
    _check_access(root, request.headers.get("authorization"))
    scraped = await scrape_families(root.stores)
    body = await asyncio.to_thread(render, root.metrics, scraped)
    return Response(body, media_type=CONTENT_TYPE)


ROUTES = [metrics_endpoint]
