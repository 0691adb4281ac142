"""Ids (nubo.ids): UUIDv7 minted in the app, ordered by creation time, parsed from client input with a 422."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from nubo.errors import ValidationFailed
from nubo.ids import id_time, new_id, parse_id


def test_new_ids_are_version_7_and_grow_with_time() -> None:
    ids = [new_id() for _ in range(1000)]
    assert all(value.version == 7 for value in ids)
    assert len(set(ids)) == len(ids)
    assert [id_time(value) for value in ids] == sorted(id_time(value) for value in ids)


def test_id_time_is_the_creation_millisecond() -> None:
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    made = new_id()
    after = datetime.now(UTC) + timedelta(milliseconds=1)
    assert before <= id_time(made) <= after and id_time(made).tzinfo is UTC


def test_parse_id_takes_a_uuid_or_its_text() -> None:
    value = new_id()
    assert parse_id(value) is value
    assert parse_id(str(value)) == value == parse_id(str(value).upper())


@pytest.mark.parametrize("raw", ["", "nope", "1234", None, 12, ["x"]])
def test_parse_id_refuses_anything_else_naming_the_field(raw: object) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_id(raw, "post_id")
    assert caught.value.status == 422 and caught.value.fields == {"post_id": "not a UUID"}
    assert "post_id" in caught.value.message


def test_parse_id_accepts_a_uuid_of_any_version() -> None:
    v4 = uuid.uuid4()
    assert parse_id(str(v4)) == v4  # any UUID is an id; only the ones nubo mints are v7
