"""The upload flow against the S3 server of `scripts/services`: a real PUT to the presigned URL, `complete`,
the variants in the bucket (sizes, no EXIF) and every URL downloading the right bytes."""

from __future__ import annotations

import io
from datetime import timedelta

from PIL import Image

from nubo import media
from nubo.stores import Stores
from tests.helpers.media import (
    GPS_IFD,
    complete,
    download,
    grant,
    jpeg_with_exif,
    media_prefix,
    put,
    upload_media,
)
from tests.helpers.social import Client, assert_error, new_member, pg_one


async def test_image_upload_is_oriented_stripped_and_resized(client: Client, db: Stores) -> None:
    alice = await new_member(client)
    data = jpeg_with_exif(1600, 1200, orientation=6)  # "turn a quarter right": shown as 1200 x 1600
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(GPS_IFD)  # the upload carries a GPS position
    granted = await grant(client, alice, "image", "image/jpeg", len(data))
    upload = granted["upload"]
    assert upload["method"] == "PUT" and upload["headers"]["Content-Type"] == "image/jpeg"
    assert granted["media"]["state"] == "pending" and granted["media"]["variants"] == {}
    assert (await put(upload, data)).status_code == 200
    done = await complete(client, alice, granted["media"]["id"])
    assert done.status_code == 200, done.text
    ready = done.json()
    assert ready["state"] == "ready" and (ready["width"], ready["height"]) == (1200, 1600)
    assert ready["placeholder"] and len(ready["placeholder"]) >= 6
    assert set(ready["variants"]) == {"320", "1080"}
    for name, width in (("320", 320), ("1080", 1080)):
        variant = ready["variants"][name]
        assert (variant["width"], variant["height"], variant["mime"]) == (width, round(width * 4 / 3), "image/webp")
        body = await download(variant["url"])
        assert len(body) == variant["size"]
        image = Image.open(io.BytesIO(body))
        assert image.format == "WEBP" and image.size == (variant["width"], variant["height"])
        assert "exif" not in image.info and not image.getexif()
        image = image.convert("RGB")
        # the blue corner was top-left; turned a quarter right it is top-right
        assert image.getpixel((image.width - 5, 5))[2] > 150 and image.getpixel((5, 5))[0] > 150
    keys = await db.objects.list_keys(media_prefix(alice.id, ready["id"]))
    assert sorted(keys) == sorted(media_prefix(alice.id, ready["id"]) + v for v in ("320", "1080"))  # upload gone
    again = await complete(client, alice, ready["id"])  # idempotent once ready
    assert again.status_code == 200 and again.json()["variants"].keys() == ready["variants"].keys()


async def test_video_is_stored_as_uploaded(client: Client) -> None:
    alice = await new_member(client)
    data = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(range(256)) * 8
    ready = await upload_media(client, alice, data, kind="video", content_type="video/mp4")
    assert ready["kind"] == "video" and set(ready["variants"]) == {"original"}
    assert await download(ready["variants"]["original"]["url"]) == data


async def test_read_urls_are_public_when_a_public_base_is_set(db: Stores) -> None:
    from dataclasses import replace

    from nubo.stores.objects import ObjectStore

    public = ObjectStore(replace(db.settings, s3_public_base_url="https://cdn.example.org/media-bucket/"))
    assert public.read_url("media/a/b/320") == "https://cdn.example.org/media-bucket/media/a/b/320"
    signed = db.objects.read_url("media/a/b/320")
    assert "X-Amz-Signature=" in signed and "X-Amz-Expires=" in signed


async def test_purge_deletes_orphans_and_the_objects_of_deleted_media(client: Client, db: Stores) -> None:
    alice = await new_member(client)
    never_sent = (await grant(client, alice, "image", "image/jpeg", 100))["media"]
    sent_not_completed = await grant(client, alice, "image", "image/jpeg", 3)
    assert (await put(sent_not_completed["upload"], b"abc")).status_code == 200
    unattached = await upload_media(client, alice, jpeg_with_exif(64, 48))
    attached = await upload_media(client, alice, jpeg_with_exif(64, 48))
    assert (await client.post("/posts", json={"media_ids": [attached["id"]]}, headers=alice.headers)).status_code == 201
    ids = [never_sent["id"], sent_not_completed["media"]["id"], unattached["id"], attached["id"]]
    async with db.pg.connection() as conn:
        await conn.execute(
            "UPDATE content.media SET created_at = now() - interval '2 days' WHERE id = ANY(%s::uuid[])", (ids,)
        )
    dry = await media.purge_media(db, dry_run=True)
    assert dry["pending"] >= 2 and dry["unattached"] >= 1
    counts = await media.purge_media(db)
    assert counts["pending"] >= 2 and counts["unattached"] >= 1 and counts["objects"] >= 3
    for gone in ids[:3]:
        assert await pg_one(db, "SELECT id FROM content.media WHERE id = %s", gone) is None
        assert await db.objects.list_keys(media_prefix(alice.id, gone)) == []
    assert await pg_one(db, "SELECT id FROM content.media WHERE id = %s", attached["id"]) is not None
    assert len(await db.objects.list_keys(media_prefix(alice.id, attached["id"]))) == 2
    assert await media.purge_media(db, older_than=timedelta(days=1)) == {"pending": 0, "unattached": 0, "objects": 0}
    assert_error(await client.get(f"/media/{unattached['id']}", headers=alice.headers), 404, "media_not_found")
