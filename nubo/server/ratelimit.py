"""HTTP side of rate limiting: the client address (trusted proxies aware) and `X-RateLimit-*` headers.

The limiter itself is :mod:`nubo.stores.ratelimit` (atomic, in Redis, shared by every instance).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from functools import cache
from typing import Any

from litestar.types import Message, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@cache
def _networks(trusted: tuple[str, ...]) -> tuple[Network, ...]:
    networks: list[Network] = []
    for entry in trusted:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:  # a bad entry trusts nothing rather than failing every request
            continue
    return tuple(networks)


def _is_trusted(address: str, networks: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_ip(scope: Scope | Mapping[str, Any], trusted_proxies: tuple[str, ...]) -> str | None:
    """The caller's address: the socket peer, unless that peer is a trusted proxy; then the right-most
    `X-Forwarded-For` entry that is not itself a trusted proxy (entries further left are client-supplied
    and could be forged)."""
    client = scope.get("client")
    peer = client[0] if client else None
    networks = _networks(trusted_proxies)
    if not peer or not networks or not _is_trusted(peer, networks):
        return peer
    forwarded = [
        value.decode("latin-1") for name, value in scope.get("headers", []) if name.lower() == b"x-forwarded-for"
    ]
    hops = [hop.strip() for header in forwarded for hop in header.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, networks):
            return hop if _valid_ip(hop) else peer
    return hops[0] if hops else peer


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def with_headers(send: Send, headers: Mapping[str, str]) -> Send:
    """Wrap an ASGI `send` so the response start carries `headers` too (e.g. `X-RateLimit-*`)."""
    raw = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]
    return with_raw_headers(send, raw)


def with_raw_headers(send: Send, raw: list[tuple[bytes, bytes]]) -> Send:
    """Like :func:`with_headers`, with headers already as ASGI (lower-case name, value) byte pairs."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *raw]}
        await send(message)

    return wrapped
