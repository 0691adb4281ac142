"""Media where it is used: a post, a profile picture and a message attachment, each shown with its URLs; the
attachment refused to a non-member; deleting what holds a media deletes it and its objects."""

from __future__ import annotations

import uuid
from typing import Any

from nubo import media
from nubo.stores import Stores
from tests.helpers.media import download, jpeg_with_exif, media_prefix, upload_media
from tests.helpers.social import Client, Member, assert_error, new_member, pg_one


def urls_of(media: dict[str, Any]) -> list[str]:
    return [variant["url"] for variant in media["variants"].values()]


async def assert_downloads(media: dict[str, Any]) -> None:
    for variant in media["variants"].values():
        assert len(await download(variant["url"])) == variant["size"]


async def test_a_post_shows_its_media_in_order(client: Client, db: Stores) -> None:
    alice, bob = await new_member(client), await new_member(client)
    first = await upload_media(client, alice, jpeg_with_exif(80, 60, color=(255, 0, 0)))
    second = await upload_media(client, alice, jpeg_with_exif(60, 80, color=(0, 255, 0)))
    created = await client.post(
        "/posts", json={"content": "two", "media_ids": [second["id"], first["id"]]}, headers=alice.headers
    )
    assert created.status_code == 201, created.text
    assert [m["id"] for m in created.json()["media"]] == [second["id"], first["id"]]
    seen = (await client.get(f"/posts/{created.json()['id']}", headers=bob.headers)).json()
    assert [m["id"] for m in seen["media"]] == [second["id"], first["id"]]
    await assert_downloads(seen["media"][0])
    listed = (await client.get("/posts", params={"user": str(alice.id)}, headers=bob.headers)).json()["items"]
    assert [m["id"] for m in listed[0]["media"]] == [second["id"], first["id"]]
    assert (await client.get(f"/media/{first['id']}", headers=bob.headers)).status_code == 200  # in a visible post
    pending = (
        await client.post(
            "/media", json={"kind": "image", "content_type": "image/png", "size": 9}, headers=alice.headers
        )
    ).json()["media"]
    assert_error(
        await client.post("/posts", json={"media_ids": [pending["id"]]}, headers=alice.headers), 422, "media_not_owned"
    )


async def test_deleting_a_post_deletes_its_media(client: Client, db: Stores) -> None:
    alice = await new_member(client)
    photo = await upload_media(client, alice, jpeg_with_exif(80, 60))
    kept = await upload_media(client, alice, jpeg_with_exif(80, 60))
    post = (await client.post("/posts", json={"media_ids": [photo["id"], kept["id"]]}, headers=alice.headers)).json()
    assert (
        await client.patch("/me", json={"profile_picture_id": kept["id"]}, headers=alice.headers)
    ).status_code == 200
    assert (await client.delete(f"/posts/{post['id']}", headers=alice.headers)).status_code == 204
    assert await pg_one(db, "SELECT id FROM content.media WHERE id = %s", photo["id"]) is None
    assert await db.objects.list_keys(media_prefix(alice.id, photo["id"])) == []
    assert await pg_one(db, "SELECT id FROM content.media WHERE id = %s", kept["id"]) is not None  # still a picture
    assert len(await db.objects.list_keys(media_prefix(alice.id, kept["id"]))) == 2


async def test_a_profile_picture_is_ones_own_ready_image(client: Client, db: Stores) -> None:
    alice, bob = await new_member(client), await new_member(client)
    picture = await upload_media(client, alice, jpeg_with_exif(120, 90))
    theirs = await upload_media(client, bob, jpeg_with_exif(120, 90))
    video = await upload_media(
        client, alice, b"\x00\x00\x00\x18ftypmp42" + bytes(64), kind="video", content_type="video/mp4"
    )
    for bad in (theirs["id"], str(uuid.uuid4()), video["id"]):
        assert_error(
            await client.patch("/me", json={"profile_picture_id": bad}, headers=alice.headers), 422, "media_not_owned"
        )
    me = await client.patch("/me", json={"profile_picture_id": picture["id"]}, headers=alice.headers)
    assert me.status_code == 200, me.text
    assert me.json()["profile_picture"]["id"] == picture["id"]
    await assert_downloads(me.json()["profile_picture"])
    assert (await client.get("/me", headers=alice.headers)).json()["profile_picture"]["id"] == picture["id"]
    profile = (await client.get(f"/users/{alice.id}", headers=bob.headers)).json()
    assert profile["profile_picture_id"] == picture["id"] and set(profile["profile_picture"]["variants"]) == {
        "320",
        "1080",
    }
    assert (await client.get(f"/media/{picture['id']}", headers=bob.headers)).status_code == 200
    newer = await upload_media(client, alice, jpeg_with_exif(120, 90))
    assert (
        await client.patch("/me", json={"profile_picture_id": newer["id"]}, headers=alice.headers)
    ).status_code == 200
    assert await pg_one(db, "SELECT id FROM content.media WHERE id = %s", picture["id"]) is None  # replaced: deleted
    assert await db.objects.list_keys(media_prefix(alice.id, picture["id"])) == []
    assert (await client.patch("/me", json={"profile_picture_id": None}, headers=alice.headers)).status_code == 200


async def conversation(client: Client, alice: Member, bob: Member) -> str:
    response = await client.post(
        "/conversations", json={"type": "direct", "user_ids": [str(bob.id)]}, headers=alice.headers
    )
    assert response.status_code in (200, 201), response.text
    conversation_id: str = response.json()["id"]
    return conversation_id


async def test_a_message_attachment_is_for_members_only(client: Client, db: Stores) -> None:
    alice, bob, carol = await new_member(client), await new_member(client), await new_member(client)
    conv = await conversation(client, alice, bob)
    photo = await upload_media(client, alice, jpeg_with_exif(90, 90))
    sent = await client.post(
        f"/conversations/{conv}/messages", json={"media_ids": [photo["id"]]}, headers=alice.headers
    )
    assert sent.status_code == 201, sent.text
    assert [a["id"] for a in sent.json()["attachments"]] == [photo["id"]]
    page = (await client.get(f"/conversations/{conv}/messages", headers=bob.headers)).json()
    attachment = page["items"][0]["attachments"][0]
    assert attachment["id"] == photo["id"]
    await assert_downloads(attachment)
    assert (await client.get(f"/media/{photo['id']}", headers=bob.headers)).status_code == 200
    assert_error(await client.get(f"/media/{photo['id']}", headers=carol.headers), 404, "media_not_found")
    assert_error(await client.get(f"/conversations/{conv}/messages", headers=carol.headers), 404)
    theirs = await upload_media(client, carol, jpeg_with_exif(30, 30))
    assert_error(
        await client.post(f"/conversations/{conv}/messages", json={"media_ids": [theirs["id"]]}, headers=alice.headers),
        422,
        "media_not_owned",
    )
    message_id = sent.json()["id"]
    assert (await client.delete(f"/messages/{message_id}", headers=alice.headers)).status_code in (200, 204)
    assert await pg_one(db, "SELECT id FROM content.media WHERE id = %s", photo["id"]) is None
    assert await db.objects.list_keys(media_prefix(alice.id, photo["id"])) == []
    assert (await client.get(f"/conversations/{conv}/messages", headers=bob.headers)).json()["items"][0][
        "attachments"
    ] == []


async def test_a_deleted_accounts_media_objects_are_purged(client: Client, db: Stores) -> None:
    dora = await new_member(client)
    photo = await upload_media(client, dora, jpeg_with_exif(40, 30))
    async with db.pg.connection() as conn:  # an account deleted for good: its media rows go by cascade
        await conn.execute("DELETE FROM auth.users WHERE id = %s", (dora.id,))
    assert len(await db.objects.list_keys(media_prefix(dora.id, photo["id"]))) == 2
    assert (await media.purge_media(db))["objects"] >= 2
    assert await db.objects.list_keys(media_prefix(dora.id, photo["id"])) == []


async def test_the_api_schema_documents_the_media_routes(client: Client) -> None:
    schema = (await client.get("/schema/openapi.json")).json()
    assert {"/media", "/media/{media_id}/complete", "/media/{media_id}"} <= set(schema["paths"])
