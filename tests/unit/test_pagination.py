"""The list shape of the API (nubo.pagination): `?limit=` and `?before=` parsing and the page cut."""

from __future__ import annotations

import pytest

from nubo.errors import ValidationFailed
from nubo.ids import new_id
from nubo.pagination import DEFAULT_LIMIT, MAX_LIMIT, Page, make_page, parse_before, parse_limit


@pytest.mark.parametrize(("raw", "expected"), [(None, DEFAULT_LIMIT), ("", DEFAULT_LIMIT), ("1", 1), (100, 100)])
def test_limit_defaults_and_bounds(raw: object, expected: int) -> None:
    assert parse_limit(raw) == expected


@pytest.mark.parametrize("raw", ["0", "101", "-1", "ten", "1.5", True, 0, MAX_LIMIT + 1])
def test_bad_limits_are_422_on_limit(raw: object) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_limit(raw)
    assert caught.value.fields == {"limit": f"1..{MAX_LIMIT}"}


def test_limit_takes_its_own_default_and_maximum() -> None:
    assert parse_limit(None, default=50, maximum=200) == 50
    assert parse_limit("200", maximum=200) == 200
    with pytest.raises(ValidationFailed):
        parse_limit("201", maximum=200)


def test_before_is_an_id_or_absent() -> None:
    cursor = new_id()
    assert parse_before(None) is None and parse_before("") is None
    assert parse_before(str(cursor)) == cursor
    with pytest.raises(ValidationFailed) as caught:
        parse_before("yesterday")
    assert set(caught.value.fields) == {"before"}


def test_a_page_has_a_cursor_only_when_a_further_row_exists() -> None:
    rows = [{"id": new_id()} for _ in range(4)]
    page = make_page(rows, 3)
    assert page.items == rows[:3] and page.next == rows[2]["id"]
    assert make_page(rows[:3], 3) == Page(items=rows[:3], next=None)  # the last page says next: null
    assert make_page([], 3) == Page()


def test_a_page_takes_its_cursor_from_a_key() -> None:
    rows = [("a", new_id()), ("b", new_id()), ("c", new_id())]
    page = make_page(rows, 2, key=lambda row: row[1])
    assert page.items == rows[:2] and page.next == rows[1][1]
