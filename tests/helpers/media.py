"""Helpers of the media tests (no tests here): images made on the spot, and the upload flow over real HTTP.

The client PUTs to the presigned URL with httpx, as a phone would: straight to the S3 server of
`scripts/services`, never through nubo.
"""

from __future__ import annotations

import io
import uuid
from typing import Any

import httpx
from PIL import Image

from tests.helpers.social import Client, Member

GPS_IFD = 0x8825
ORIENTATION = 0x0112


def jpeg_with_exif(
    width: int, height: int, *, orientation: int = 6, color: tuple[int, int, int] = (200, 40, 40)
) -> bytes:
    """A JPEG carrying an orientation, a camera model and a GPS position in its EXIF."""
    image = Image.new("RGB", (width, height), color)
    image.paste((20, 20, 220), (0, 0, width // 2, height // 2))  # a corner to see the orientation by
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[0x0110] = "Test Camera"  # Model
    exif[GPS_IFD] = {1: "N", 2: (48.0, 51.0, 24.0), 3: "E", 4: (2.0, 21.0, 3.0)}
    out = io.BytesIO()
    image.save(out, "JPEG", exif=exif, quality=85)
    return out.getvalue()


def png(width: int, height: int, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (width, height)).save(out, "PNG")
    return out.getvalue()


async def grant(client: Client, owner: Member, kind: str, content_type: str, size: int) -> dict[str, Any]:
    response = await client.post(
        "/media", json={"kind": kind, "content_type": content_type, "size": size}, headers=owner.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def put(upload: dict[str, Any], data: bytes, *, url: str | None = None) -> httpx.Response:
    """PUT `data` to the granted URL (or `url`) with the granted headers, as a client would."""
    headers = {**upload["headers"], "Content-Length": str(len(data))}
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.put(url or upload["url"], content=data, headers=headers)


async def complete(client: Client, owner: Member, media_id: str) -> httpx.Response:
    response: httpx.Response = await client.post(f"/media/{media_id}/complete", headers=owner.headers)
    return response


async def upload_media(
    client: Client, owner: Member, data: bytes, *, kind: str = "image", content_type: str = "image/jpeg"
) -> dict[str, Any]:
    """The whole flow: grant, PUT, complete; the ready media."""
    granted = await grant(client, owner, kind, content_type, len(data))
    sent = await put(granted["upload"], data)
    assert sent.status_code == 200, sent.text
    done = await complete(client, owner, granted["media"]["id"])
    assert done.status_code == 200, done.text
    body: dict[str, Any] = done.json()
    assert body["state"] == "ready"
    return body


async def download(url: str) -> bytes:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(url)
    assert response.status_code == 200, (url, response.status_code, response.text[:200])
    return response.content


def media_prefix(owner: uuid.UUID | str, media_id: uuid.UUID | str) -> str:
    return f"media/{owner}/{media_id}/"
