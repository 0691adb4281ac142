"""The HTTP side of rate limiting (nubo.server.ratelimit): which address a request comes from, behind
trusted proxies or not."""

from __future__ import annotations

import pytest

from nubo.server.ratelimit import client_ip


def _scope(peer: str, forwarded: str | None = None) -> dict[str, object]:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return {"client": (peer, 1234), "headers": headers}


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("203.0.113.9", "1.2.3.4", (), "203.0.113.9"),  # no proxy trusted: the socket
        ("203.0.113.9", "1.2.3.4", ("127.0.0.1",), "203.0.113.9"),  # untrusted peer: header ignored
        ("127.0.0.1", "1.2.3.4", ("127.0.0.1",), "1.2.3.4"),
        ("10.0.0.2", "6.6.6.6, 1.2.3.4, 10.0.0.1", ("10.0.0.0/8",), "1.2.3.4"),  # forged left part skipped
        ("127.0.0.1", None, ("127.0.0.1",), "127.0.0.1"),
        ("127.0.0.1", "not-an-ip", ("127.0.0.1",), "127.0.0.1"),
        ("::1", "2001:db8::1", ("::1",), "2001:db8::1"),
    ],
)
def test_client_ip(peer: str, forwarded: str | None, trusted: tuple[str, ...], expected: str) -> None:
    assert client_ip(_scope(peer, forwarded), trusted) == expected
