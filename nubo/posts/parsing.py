"""Client input of posts and comments: text fields, visibility, and the mentions and hashtags of `meta`.

Limits are enforced here, not only by the routes' schemas, so every caller of the domain gets the same 422s.
`meta` holds the mentions (`@username`, resolved to existing active users) and hashtags (`#tag`) of a post's
content, parsed once when it is written.
"""

from __future__ import annotations

import re
from typing import Any

from nubo.errors import ValidationFailed
from nubo.model import Visibility, active_user
from nubo.stores.transaction import Transaction

MAX_CONTENT_CHARS = 5000
MAX_COMMENT_CHARS = 2000
MAX_LOCATION_CHARS = 200
MAX_MENTIONS = 50
MAX_HASHTAGS = 50

VISIBILITIES = {"public": Visibility.PUBLIC, "followers": Visibility.FOLLOWERS}

# `@name` where name follows the username rule of auth.users; not preceded by a word char (e-mail addresses).
MENTION_RE = re.compile(r"(?<![\w@.])@([A-Za-z0-9_.]{3,30})")
# `#tag`: letters, digits, underscore (any script); not preceded by a word char or `&` (HTML entities).
HASHTAG_RE = re.compile(r"(?<![\w#&])#(\w{1,100})")


def parse_meta(content: str | None) -> dict[str, list[str]]:
    """Mentioned usernames (lower-cased) and hashtags (lower-cased), each distinct, in order of appearance."""
    text = content or ""
    mentions = [m.rstrip(".").lower() for m in MENTION_RE.findall(text)]
    hashtags = [h.lower() for h in HASHTAG_RE.findall(text)]
    return {
        "mentions": list(dict.fromkeys(m for m in mentions if len(m) >= 3))[:MAX_MENTIONS],
        "hashtags": list(dict.fromkeys(hashtags))[:MAX_HASHTAGS],
    }


async def build_meta(tx: Transaction, content: str | None) -> dict[str, Any]:
    """`meta` of a post: hashtags, and the mentions that name existing active users (with their ids)."""
    parsed = parse_meta(content)
    mentions: list[dict[str, str]] = []
    if parsed["mentions"]:
        rows = await (
            await tx.conn.execute(
                "SELECT id, lower(username) AS name FROM auth.users u "
                f"WHERE lower(username) = ANY(%s) AND {active_user('u')}",
                (parsed["mentions"],),
            )
        ).fetchall()
        ids = {row["name"]: row["id"] for row in rows}
        mentions = [{"username": name, "user_id": str(ids[name])} for name in parsed["mentions"] if name in ids]
    return {"mentions": mentions, "hashtags": parsed["hashtags"]}


def checked_text(value: object, field: str, maximum: int, *, required: bool) -> str | None:
    """`value` when it is a string of at most `maximum` characters without NUL (and not blank when
    `required`); None when absent and optional; a 422 naming `field` otherwise."""
    if value is None:
        if required:
            raise ValidationFailed(f"{field} is required", fields={field: "required"})
        return None
    if not isinstance(value, str):
        raise ValidationFailed(f"{field} must be a string", fields={field: "not a string"})
    if "\x00" in value:
        raise ValidationFailed(f"{field} must not contain NUL characters", fields={field: "contains NUL"})
    if len(value) > maximum:
        raise ValidationFailed(
            f"{field} must be at most {maximum} characters",
            code="too_long",
            fields={field: f"max {maximum} characters"},
        )
    if required and not value.strip():
        raise ValidationFailed(f"{field} must not be empty", fields={field: "empty"})
    return value


def parse_visibility(value: object) -> Visibility:
    """`public`/`followers` (or the stored 0/1) into the stored small int."""
    if isinstance(value, str) and value in VISIBILITIES:
        return VISIBILITIES[value]
    if isinstance(value, int) and not isinstance(value, bool) and value in VISIBILITIES.values():
        return Visibility(value)
    raise ValidationFailed("visibility must be 'public' or 'followers'", fields={"visibility": "public|followers"})
