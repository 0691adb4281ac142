"""The media shapes: URLs only once ready, kinds and states by name (no service needed)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from nubo.media import media_view
from nubo.settings import Settings
from nubo.stores.objects import ObjectStore, media_key

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def test_a_pending_media_has_no_variants() -> None:
    row = {"id": uuid.uuid4(), "owner_id": uuid.uuid4(), "mime": "image/jpeg", "size": 3, "created_at": NOW}
    pending = {**row, "processing_state": 0, "variants": {"320": {"key": "k", "size": 1, "mime": "x"}}}
    view = media_view(pending, ObjectStore(Settings()))
    assert (view.state, view.kind, view.variants, view.width) == ("pending", "image", {}, None)


def test_a_ready_media_has_a_url_per_variant() -> None:
    owner, media_id = uuid.uuid4(), uuid.uuid4()
    objects = ObjectStore(Settings(s3_public_base_url="https://cdn.example.org"))
    key = media_key(owner, media_id, "320")
    row = {
        "id": media_id,
        "owner_id": owner,
        "mime": "video/mp4",
        "size": 3,
        "kind": 1,
        "processing_state": 1,
        "variants": {"320": {"key": key, "width": 320, "height": 240, "size": 99, "mime": "image/webp"}},
        "created_at": NOW,
    }
    view = media_view(row, objects)
    assert view.kind == "video" and view.state == "ready"
    assert view.variants["320"].url == f"https://cdn.example.org/media/{owner}/{media_id}/320"
