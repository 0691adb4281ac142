"""Shared helpers for the social and moderation tests: in-process app client, users created through the auth
routes, and checks on each tier. (No tests here: the module is imported by integration/test_social_*,
test_moderation and others.)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from litestar.testing import AsyncTestClient

from nubo.stores import Stores
from tests.helpers.auth import login, signup_body

Client = AsyncTestClient[Any]


@dataclass
class Member:
    """A signed-up, logged-in user and the headers that authenticate them."""

    id: uuid.UUID
    username: str
    headers: dict[str, str]


def unique(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def new_member(
    client: Client, *, username: str | None = None, first_name: str = "Ada", last_name: str = "Lovelace"
) -> Member:
    """Sign up and log in through `POST /signup` and `POST /login` (the auth tests' helpers)."""
    body = signup_body(username or unique(), first_name=first_name, last_name=last_name)
    signup = await client.post("/signup", json=body)
    assert signup.status_code == 201, signup.text
    account = await login(client, body["username"])
    return Member(id=account.id, username=account.username, headers=account.headers)


async def set_user_fields(stores: Stores, user_id: uuid.UUID, **changes: Any) -> None:
    """Change a user row through the tiered path (PostgreSQL, then Mongo and Redis copies)."""
    async with stores.transaction() as tx:
        assert await tx.update("users", user_id, changes) is not None


async def redis_hash(stores: Stores, collection: str, entity_id: uuid.UUID) -> dict[str, str]:
    """The raw Redis hash of a cached row (docs/architecture.md §7 key `{p}cache:{collection}:{id}`), {} when absent."""
    key = stores.keys("cache", collection, str(entity_id))
    if await stores.redis.type(key) not in ("hash", b"hash"):
        return {}
    data: dict[str, str] = await stores.redis.hgetall(key)
    return data


def hash_holds(cached: dict[str, str], value: object) -> bool:
    """True when some field of a cached hash holds `value` (the cache encodes values as `=<payload>`)."""
    return any(stored in (str(value), f"={value}") for stored in cached.values())


async def mongo_doc(stores: Stores, collection: str, entity_id: uuid.UUID) -> dict[str, Any] | None:
    doc: dict[str, Any] | None = await stores.mongo[collection].find_one({"_id": entity_id})
    return doc


async def pg_one(stores: Stores, query: str, *params: Any) -> dict[str, Any] | None:
    async with stores.pg.connection() as conn:
        row = await (await conn.execute(query, params)).fetchone()
    return dict(row) if row is not None else None


async def pg_all(stores: Stores, query: str, *params: Any) -> list[dict[str, Any]]:
    async with stores.pg.connection() as conn:
        rows = await (await conn.execute(query, params)).fetchall()
    return [dict(row) for row in rows]


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    """A JSON error of docs/architecture.md §9 with `status` (and `code` when given)."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("code"), str) and body["code"], body
    assert isinstance(body.get("error"), str), body
    if code is not None:
        assert body["code"] == code, body
    return body


def is_recent(value: Any) -> bool:
    return isinstance(value, datetime)
