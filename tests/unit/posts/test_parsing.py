"""Client input of posts (nubo.posts.parsing): mentions and hashtags of the content, text limits, visibility."""

from __future__ import annotations

import pytest

from nubo.errors import ValidationFailed
from nubo.model import Visibility
from nubo.posts.parsing import MAX_HASHTAGS, checked_text, parse_meta, parse_visibility


def test_mentions_and_hashtags_are_lower_cased_distinct_and_in_order() -> None:
    meta = parse_meta("Hi @Ada and @bob.smith. #Python #python #日本 @ada")
    assert meta == {"mentions": ["ada", "bob.smith"], "hashtags": ["python", "日本"]}


def test_emails_entities_and_short_names_are_not_mentions_or_tags() -> None:
    assert parse_meta("write to ada@example.com &#39; a#b @ab") == {"mentions": [], "hashtags": []}
    assert parse_meta(None) == {"mentions": [], "hashtags": []}


def test_hashtags_are_capped() -> None:
    content = " ".join(f"#t{i}" for i in range(MAX_HASHTAGS + 10))
    assert len(parse_meta(content)["hashtags"]) == MAX_HASHTAGS


def test_checked_text_keeps_good_text_and_optional_absence() -> None:
    assert checked_text("hello", "content", 10, required=True) == "hello"
    assert checked_text(None, "location", 10, required=False) is None


@pytest.mark.parametrize(
    ("value", "required", "code", "problem"),
    [
        (None, True, "validation_error", "required"),
        (5, False, "validation_error", "not a string"),
        ("a\x00b", False, "validation_error", "contains NUL"),
        ("x" * 11, False, "too_long", "max 10 characters"),
        ("   ", True, "validation_error", "empty"),
    ],
)
def test_checked_text_refuses_naming_the_field(value: object, required: bool, code: str, problem: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        checked_text(value, "content", 10, required=required)
    assert caught.value.code == code and caught.value.fields == {"content": problem}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("public", Visibility.PUBLIC),
        ("followers", Visibility.FOLLOWERS),
        (0, Visibility.PUBLIC),
        (1, Visibility.FOLLOWERS),
    ],
)
def test_visibility_by_name_or_stored_number(value: object, expected: Visibility) -> None:
    assert parse_visibility(value) is expected


@pytest.mark.parametrize("value", ["Public", "friends", 2, True, None, 1.0])
def test_other_visibilities_are_422(value: object) -> None:
    with pytest.raises(ValidationFailed) as caught:
        parse_visibility(value)
    assert caught.value.fields == {"visibility": "public|followers"}
