"""Bad input on every content route answers a 4xx JSON error with a `code`, never a 500."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.helpers.social import Client, Member, new_member

NOT_UUID = "not-a-uuid"
MISSING = str(uuid.uuid4())


@pytest.fixture(scope="module")
async def member(client: Client) -> Member:
    return await new_member(client)


@pytest.fixture(scope="module")
async def post_id(client: Client, member: Member) -> str:
    response = await client.post("/posts", json={"content": "target"}, headers=member.headers)
    assert response.status_code == 201
    return str(response.json()["id"])


def cases(post: str) -> list[tuple[str, str, dict[str, Any], int | tuple[int, ...]]]:
    """(method, path, request kwargs, expected status or statuses)."""
    long_text = "x" * 5001
    validation = (400, 422)
    return [
        ("POST", "/posts", {"json": {}}, 422),
        ("POST", "/posts", {"json": {"content": "   "}}, 422),
        ("POST", "/posts", {"json": {"content": long_text}}, validation),
        ("POST", "/posts", {"json": {"content": 12}}, validation),
        ("POST", "/posts", {"json": {"content": "a\u0000b"}}, 422),
        ("POST", "/posts", {"json": {"content": "x", "visibility": "secret"}}, validation),
        ("POST", "/posts", {"json": {"content": "x", "visibility": 7}}, validation),
        ("POST", "/posts", {"json": {"content": "x", "media_ids": ["nope"]}}, validation),
        ("POST", "/posts", {"json": {"content": "x", "media_ids": [MISSING] * 11}}, validation),
        ("POST", "/posts", {"json": {"content": "x", "surprise": 1}}, validation),
        ("POST", "/posts", {"json": ["content"]}, validation),
        ("POST", "/posts", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
        ("POST", "/posts", {"json": {"content": "x", "location": "l" * 201}}, validation),
        ("GET", "/posts", {"params": {"limit": "0"}}, validation),
        ("GET", "/posts", {"params": {"limit": "101"}}, validation),
        ("GET", "/posts", {"params": {"limit": "many"}}, validation),
        ("GET", "/posts", {"params": {"before": NOT_UUID}}, validation),
        ("GET", "/posts", {"params": {"user": NOT_UUID}}, 422),
        ("GET", "/posts", {"params": {"user": MISSING}}, 404),
        ("GET", f"/posts/{NOT_UUID}", {}, 422),
        ("GET", f"/posts/{MISSING}", {}, 404),
        ("PATCH", f"/posts/{NOT_UUID}", {"json": {"content": "x"}}, 422),
        ("PATCH", f"/posts/{MISSING}", {"json": {"content": "x"}}, 404),
        ("PATCH", f"/posts/{post}", {"json": {"content": 5}}, validation),
        ("PATCH", f"/posts/{post}", {"json": {"content": ""}}, 409),  # it would leave the post empty
        ("PATCH", f"/posts/{post}", {"json": {"visibility": "nobody"}}, validation),
        ("PATCH", f"/posts/{post}", {"json": {"user_id": MISSING}}, validation),
        ("DELETE", f"/posts/{NOT_UUID}", {}, 422),
        ("DELETE", f"/posts/{MISSING}", {}, 404),
        ("GET", f"/posts/{NOT_UUID}/comments", {}, 422),
        ("GET", f"/posts/{post}/comments", {"params": {"limit": "-1"}}, validation),
        ("GET", f"/posts/{MISSING}/comments", {}, 404),
        ("POST", f"/posts/{post}/comments", {"json": {"content": ""}}, validation),
        ("POST", f"/posts/{post}/comments", {"json": {"content": "   "}}, 422),
        ("POST", f"/posts/{post}/comments", {"json": {"content": "c" * 2001}}, validation),
        ("POST", f"/posts/{post}/comments", {"json": {}}, validation),
        ("POST", f"/posts/{MISSING}/comments", {"json": {"content": "x"}}, 404),
        ("DELETE", f"/comments/{NOT_UUID}", {}, 422),
        ("DELETE", f"/comments/{MISSING}", {}, 404),
        ("POST", f"/posts/{NOT_UUID}/like", {}, 422),
        ("POST", f"/posts/{MISSING}/like", {}, 404),
        ("DELETE", f"/posts/{MISSING}/like", {}, 404),
        ("POST", f"/comments/{NOT_UUID}/like", {}, 422),
        ("POST", f"/comments/{MISSING}/like", {}, 404),
        ("DELETE", f"/comments/{MISSING}/like", {}, 404),
        ("GET", f"/posts/{NOT_UUID}/likes", {}, 422),
        ("GET", f"/posts/{MISSING}/likes", {}, 404),
        ("GET", f"/posts/{post}/likes", {"params": {"before": "x"}}, validation),
        ("POST", "/media", {"json": {}}, validation),
        ("POST", "/media", {"json": {"kind": "image", "content_type": "image", "size": 1}}, 422),
        ("POST", "/media", {"json": {"kind": "image", "content_type": "image/png", "size": -1}}, validation),
        ("POST", "/media", {"json": {"kind": "photo", "content_type": "image/png", "size": 1}}, validation),
        ("POST", "/media", {"json": {"kind": "image", "content_type": "image/png", "size": "big"}}, validation),
        ("POST", "/media", {"json": {"storage_path": "a", "mime": "image/png", "size": 1}}, validation),
        ("POST", f"/media/{NOT_UUID}/complete", {}, 422),
        ("POST", f"/media/{MISSING}/complete", {}, 404),
        ("GET", f"/media/{NOT_UUID}", {}, 422),
        ("GET", f"/media/{MISSING}", {}, 404),
        ("GET", "/feed", {"params": {"limit": "1000"}}, validation),
        ("GET", "/feed", {"params": {"before": NOT_UUID}}, validation),
    ]


async def test_bad_input_gets_a_coded_4xx(client: Client, member: Member, post_id: str) -> None:
    failures = []
    for method, path, kwargs, expected in cases(post_id):
        headers = {**member.headers, **kwargs.pop("headers", {})}
        response = await client.request(method, path, headers=headers, **kwargs)
        statuses = expected if isinstance(expected, tuple) else (expected,)
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code not in statuses or not isinstance(body.get("code"), str):
            failures.append((method, path, kwargs, response.status_code, response.text[:200]))
    assert failures == []


async def test_every_content_route_needs_a_token(client: Client, post_id: str) -> None:
    routes = [
        ("POST", "/posts"),
        ("GET", "/posts"),
        ("GET", f"/posts/{post_id}"),
        ("PATCH", f"/posts/{post_id}"),
        ("DELETE", f"/posts/{post_id}"),
        ("GET", f"/posts/{post_id}/comments"),
        ("POST", f"/posts/{post_id}/comments"),
        ("DELETE", f"/comments/{MISSING}"),
        ("POST", f"/posts/{post_id}/like"),
        ("DELETE", f"/posts/{post_id}/like"),
        ("POST", f"/comments/{MISSING}/like"),
        ("GET", f"/posts/{post_id}/likes"),
        ("POST", "/media"),
        ("POST", f"/media/{MISSING}/complete"),
        ("GET", f"/media/{MISSING}"),
        ("GET", "/feed"),
    ]
    for method, path in routes:
        response = await client.request(method, path, json={} if method in ("POST", "PATCH") else None)
        assert response.status_code == 401, (method, path, response.text)
        assert response.json()["code"] == "missing_token"
