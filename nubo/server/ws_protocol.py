"""The WebSocket protocol `nubo serve` gives uvicorn: its `websockets-sansio` one, with a refused handshake
counted as complete.

nubo refuses an upgrade with an HTTP response (the ASGI denial extension: 401/403/422 and the JSON error body,
see :func:`nubo.server.auth.deny_websocket`). uvicorn's `websockets-sansio` protocol sends that response but
never marks the handshake complete, so every refusal also logged the ERROR "ASGI callable returned without
completing handshake" (uvicorn's `wsproto` protocol marks it; Kludex/uvicorn pull request 3138 fixes it
upstream). This subclass marks it once the last byte of the denial is sent; drop it when uvicorn ships the fix.
"""

from __future__ import annotations

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol


class DenialCompletesHandshake(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol; a sent denial response completes the handshake."""

    async def send(self, message: ASGISendEvent) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True
