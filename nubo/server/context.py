"""The outermost layer of every request: its request id, and its HTTP metrics.

:class:`RequestContext` wraps the whole Litestar ASGI handler (routing and error mapping included), so every
answer passes through it, a 401 from the auth middleware and a 404 of no route as well:

- the request id is the client's `X-Request-ID` when it is safe (:func:`nubo.logs.accept_request_id`), else a
  new one; it is set in the logging context for the whole request (every log line of it, and of the tasks it
  starts, carries it), returned in the `X-Request-ID` response header and, for a WebSocket, put in its
  `error` events;
- HTTP requests are counted by route template (``/posts/{post_id}``, never the raw path: bounded labels;
  ``unmatched`` for no route), method and status, with their latency, when metrics are on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

from nubo.logs import REQUEST_ID_HEADER, accept_request_id, request_id_var
from nubo.metrics import Metrics

_HEADER = REQUEST_ID_HEADER.encode()
UNMATCHED = "unmatched"


class RequestContext:
    """ASGI middleware: request id in and out, and the HTTP metrics (see the module)."""

    def __init__(self, app: ASGIApp, metrics: Callable[[], Metrics | None]) -> None:
        self.app = app
        self.metrics = metrics  # the running root's, None while it starts or when metrics are off

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind: str = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = accept_request_id(_header(scope, _HEADER))
        token = request_id_var.set(request_id)
        try:
            if kind == "websocket":
                await self.app(scope, receive, send)
            else:
                await self._http(scope, receive, send, request_id.encode())
        finally:
            request_id_var.reset(token)

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: bytes) -> None:
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before its response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (_HEADER, request_id)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics = self.metrics()
            if metrics is not None:
                route = scope.get("path_template") or UNMATCHED
                method = cast("HTTPScope", scope)["method"]
                metrics.observe_request(route, method, status, time.perf_counter() - started)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None
