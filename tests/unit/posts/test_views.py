"""The content shapes (nubo.posts.views) encode to the JSON clients have always received (no service needed)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from litestar.serialization import encode_json

from nubo.model import Visibility
from nubo.posts import post_summary, post_view

NOW = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)


def as_json(value: object) -> Any:
    return json.loads(encode_json(value))


def test_post_view_keys_and_defaults() -> None:
    row = {"id": uuid.uuid4(), "user_id": uuid.uuid4(), "created_at": NOW, "meta": None}
    body = as_json(post_view(row, like_count=2, liked=True))
    assert list(body) == [
        "id",
        "user_id",
        "content",
        "media_ids",
        "meta",
        "visibility",
        "location",
        "created_at",
        "updated_at",
        "like_count",
        "liked",
        "comment_count",
        "view_count",
        "media",
    ]
    assert body["meta"] == {"mentions": [], "hashtags": []}
    assert (body["content"], body["media_ids"], body["visibility"], body["location"]) == (None, [], "public", None)
    assert body["created_at"] == body["updated_at"] == "2024-05-06T07:08:09.123000Z"
    assert (body["like_count"], body["liked"], body["comment_count"]) == (2, True, 0)


def test_post_view_meta_keeps_mentions() -> None:
    mentioned = str(uuid.uuid4())
    row = {
        "id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "created_at": NOW,
        "visibility": Visibility.FOLLOWERS,
        "meta": {"mentions": [{"user_id": mentioned, "username": "bob"}], "hashtags": ["x"]},
    }
    body = as_json(post_view(row))
    assert body["meta"] == {"mentions": [{"user_id": mentioned, "username": "bob"}], "hashtags": ["x"]}
    assert body["visibility"] == "followers"


def test_post_summary_leaves_absent_fields_out() -> None:
    author = uuid.uuid4()
    body = as_json(post_summary({"user_id": author, "content": "hi", "visibility": 0, "like_count": 3}))
    assert body == {"user_id": str(author), "content": "hi", "visibility": "public"}
