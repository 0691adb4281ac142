"""Bad uploads: each is a clear 4xx and leaves no object behind (real S3 server of `scripts/services`)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from nubo.server.app import create_app
from nubo.settings import load_settings
from nubo.stores import Stores
from tests.helpers.media import complete, grant, jpeg_with_exif, media_prefix, png, put
from tests.helpers.social import Client, Member, assert_error, new_member, pg_one


async def assert_nothing_left(db: Stores, owner: Member, media_id: str) -> None:
    assert await db.objects.list_keys(media_prefix(owner.id, media_id)) == []


async def refused_at_complete(
    client: Client, db: Stores, owner: Member, data: bytes, content_type: str, code: str
) -> dict[str, Any]:
    granted = await grant(client, owner, "image", content_type, len(data))
    assert (await put(granted["upload"], data)).status_code == 200
    media_id = granted["media"]["id"]
    body = assert_error(await complete(client, owner, media_id), 422, code)
    await assert_nothing_left(db, owner, media_id)
    assert await pg_one(db, "SELECT id FROM content.media WHERE id = %s", media_id) is None
    assert_error(await client.get(f"/media/{media_id}", headers=owner.headers), 404)
    return body


async def test_a_non_image_declared_as_an_image(client: Client, db: Stores) -> None:
    alice = await new_member(client)
    await refused_at_complete(client, db, alice, b"#!/bin/sh\necho not a picture\n" * 10, "image/png", "not_an_image")
    # magic bytes rule, not the declared type: a PNG declared as a JPEG is refused too
    await refused_at_complete(client, db, alice, png(8, 8), "image/jpeg", "not_an_image")


async def test_a_decompression_bomb(client: Client, db: Stores) -> None:
    alice = await new_member(client)
    bomb = png(9000, 9000, mode="1")  # 81 megapixels in a few kilobytes
    assert len(bomb) < 100_000
    await refused_at_complete(client, db, alice, bomb, "image/png", "image_too_large")


async def test_a_truncated_file(client: Client, db: Stores) -> None:
    alice = await new_member(client)
    whole = jpeg_with_exif(400, 300)
    await refused_at_complete(client, db, alice, whole[: len(whole) // 2], "image/jpeg", "image_unreadable")


async def test_an_upload_over_its_declared_size(client: Client, db: Stores) -> None:
    alice = await new_member(client)
    data = jpeg_with_exif(200, 100)
    granted = await grant(client, alice, "image", "image/jpeg", len(data) - 100)
    sent = await put(granted["upload"], data)  # the signed length differs: the store refuses it
    assert sent.status_code == 403, sent.text
    assert_error(await complete(client, alice, granted["media"]["id"]), 409, "upload_missing")
    await assert_nothing_left(db, alice, granted["media"]["id"])


async def test_complete_without_an_upload(client: Client, db: Stores) -> None:
    alice = await new_member(client)
    granted = await grant(client, alice, "image", "image/jpeg", 1000)
    assert_error(await complete(client, alice, granted["media"]["id"]), 409, "upload_missing")
    await assert_nothing_left(db, alice, granted["media"]["id"])


async def test_another_users_media(client: Client, db: Stores) -> None:
    alice, bob = await new_member(client), await new_member(client)
    data = jpeg_with_exif(64, 48)
    granted = await grant(client, alice, "image", "image/jpeg", len(data))
    media_id = granted["media"]["id"]
    assert_error(await complete(client, bob, media_id), 404, "media_not_found")
    assert_error(await client.get(f"/media/{media_id}", headers=bob.headers), 404, "media_not_found")
    assert (await put(granted["upload"], data)).status_code == 200
    assert (await complete(client, alice, media_id)).status_code == 200
    for response in (
        await client.post("/posts", json={"media_ids": [media_id]}, headers=bob.headers),
        await client.patch("/me", json={"profile_picture_id": media_id}, headers=bob.headers),
    ):
        assert_error(response, 422, "media_not_owned")
    assert_error(await client.get(f"/media/{media_id}", headers=bob.headers), 404)  # not in use anywhere yet


async def test_a_put_to_a_key_not_granted(client: Client, db: Stores) -> None:
    alice = await new_member(client)
    data = jpeg_with_exif(64, 48)
    granted = await grant(client, alice, "image", "image/jpeg", len(data))
    url = granted["upload"]["url"]
    assert "/upload?" in url
    for other in (url.replace("/upload?", "/1080?"), url.replace(str(alice.id), "someone-else")):
        refused = await put(granted["upload"], data, url=other)
        assert refused.status_code == 403, refused.text
    await assert_nothing_left(db, alice, granted["media"]["id"])
    assert await db.objects.list_keys("media/someone-else/") == []


async def test_declared_kind_type_and_size_are_checked(client: Client) -> None:
    alice = await new_member(client)
    for body, status, code in (
        ({"kind": "image", "content_type": "application/pdf", "size": 10}, 422, "unsupported_media_type"),
        ({"kind": "video", "content_type": "image/jpeg", "size": 10}, 422, "unsupported_media_type"),
        ({"kind": "audio", "content_type": "audio/mpeg", "size": 10}, 422, None),
        ({"kind": "image", "content_type": "image/jpeg", "size": 0}, 422, None),
        ({"kind": "image", "content_type": "image/jpeg", "size": 10**12}, 413, "media_too_large"),
        ({"kind": "image", "content_type": "image/jpeg", "size": 10, "path": "x"}, 422, None),
    ):
        assert_error(await client.post("/media", json=body, headers=alice.headers), status, code)


@pytest.fixture(scope="module")
async def strict_client(db: Stores, settings_env: dict[str, str]) -> AsyncIterator[Client]:
    """The app with uploads valid one second and a 100 kB daily quota."""
    env = {**settings_env, "NUBO_S3_UPLOAD_EXPIRY": "1", "NUBO_MEDIA_DAILY_QUOTA": "100kb"}
    async with AsyncTestClient(create_app(load_settings(env, env_file=None))) as test_client:
        yield test_client


async def test_an_expired_url(strict_client: Client, db: Stores) -> None:
    alice = await new_member(strict_client)
    data = jpeg_with_exif(64, 48)
    granted = await grant(strict_client, alice, "image", "image/jpeg", len(data))
    await asyncio.sleep(2.2)
    refused = await put(granted["upload"], data)
    assert refused.status_code == 403, refused.text
    assert_error(await complete(strict_client, alice, granted["media"]["id"]), 409, "upload_missing")
    await assert_nothing_left(db, alice, granted["media"]["id"])


async def test_the_daily_quota(strict_client: Client) -> None:
    alice = await new_member(strict_client)
    await grant(strict_client, alice, "image", "image/jpeg", 60_000)
    response = await strict_client.post(
        "/media", json={"kind": "image", "content_type": "image/jpeg", "size": 60_000}, headers=alice.headers
    )
    assert_error(response, 429, "media_quota_exceeded")
    assert int(response.headers["Retry-After"]) > 3600


async def test_s3_down_is_a_503_naming_the_store(
    db: Stores, settings_env: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**settings_env, "NUBO_S3_ENDPOINT": f"http://127.0.0.1:{port}"}
    async with AsyncTestClient(create_app(load_settings(env, env_file=None))) as down:
        alice = await new_member(down)
        responses = [
            await down.post(
                "/media", json={"kind": "image", "content_type": "image/jpeg", "size": 10}, headers=alice.headers
            )
            for _ in range(2)
        ]
    for response in responses:
        assert assert_error(response, 503, "store_unavailable")["store"] == "s3"
    assert [r.getMessage() for r in caplog.records].count("s3_unreachable") == 1  # per state change, not request
