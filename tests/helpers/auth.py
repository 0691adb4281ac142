"""Helpers shared by the account tests (`tests/integration/accounts`, ...): users made through the real HTTP
API, crafted JWTs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from litestar.testing import AsyncTestClient

from nubo.server.app import create_app
from nubo.settings import Settings

Client = AsyncTestClient[Any]
PASSWORD = "Tr0ub4dor&3-horse-battery"


def unique(prefix: str = "a") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


@dataclass
class Account:
    """A signed-up user and the tokens of its last login/refresh."""

    username: str
    email: str
    id: uuid.UUID
    access_token: str
    refresh_token: str
    session_id: uuid.UUID

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@asynccontextmanager
async def auth_client(settings: Settings) -> AsyncIterator[Client]:
    """The real app in-process; its lifespan opens its own connections to the run's stores."""
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


def signup_body(username: str | None = None, **extra: Any) -> dict[str, Any]:
    username = username or unique()
    return {
        "username": username,
        "email": f"{username}@example.com",
        "password": PASSWORD,
        "first_name": "Ada",
        "last_name": "Lovelace",
        **extra,
    }


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


async def new_account(
    client: Client | httpx.AsyncClient, username: str | None = None, headers: dict[str, str] | None = None
) -> Account:
    """Sign up and log in through the HTTP API."""
    body = signup_body(username)
    response = await client.post("/signup", json=body, headers=headers)
    assert response.status_code == 201, response.text
    return await login(client, body["username"], headers=headers)


async def login(
    client: Client | httpx.AsyncClient,
    username: str,
    password: str = PASSWORD,
    headers: dict[str, str] | None = None,
) -> Account:
    response = await client.post("/login", json={"username": username, "password": password}, headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()
    return Account(
        username=username,
        email=body["user"]["email"],
        id=uuid.UUID(body["user"]["id"]),
        access_token=body["access_token"],
        refresh_token=body["refresh_token"],
        session_id=uuid.UUID(claims_of(body["access_token"])["sid"]),
    )


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is our error shape with `status` (and `code` when given)."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("code"), str), body
    if code is not None:
        assert body["code"] == code, body
    return body


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft_jwt(header: dict[str, Any], claims: dict[str, Any], secret: str | None, digest: Any = hashlib.sha256) -> str:
    """A JWT built by hand, so tests can forge what PyJWT would refuse to produce (alg none, mismatches)."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if secret is None:
        return signing_input + "."
    signature = hmac.new(secret.encode(), signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(signature)}"


def good_claims(settings: Settings, account: Account, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": str(account.id),
        "sid": str(account.session_id),
        "iat": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
    }
    for key, value in changes.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims
