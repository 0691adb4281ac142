"""The public lobby: what a plain-text `/ws` frame may carry before it is broadcast to every connected user.

The lobby is the seed's broadcast, public by design, so its text is held to the rules of a direct message: not
blank, at most :data:`MAX_LOBBY_CHARS` characters (a message's limit, 4,000). A bare JSON value (``42``,
``null``, ``"x"``, ``true``) is refused too: it is a malformed envelope, not chat text, and clients that parse
every frame as JSON could not tell it from an event.
"""

from __future__ import annotations

import json

from nubo.errors import ValidationFailed

MAX_LOBBY_CHARS = 4000  # as a direct message (nubo.messaging.shared.MAX_CONTENT)


def checked_lobby_text(text: str) -> str:
    """`text` when the lobby may carry it; a :class:`ValidationFailed` with a stable code otherwise."""
    if not text.strip():
        raise ValidationFailed("Lobby text must not be blank", code="empty_lobby_text", fields={"text": "empty"})
    if len(text) > MAX_LOBBY_CHARS:
        raise ValidationFailed(
            f"Lobby text is limited to {MAX_LOBBY_CHARS} characters",
            code="too_long",
            fields={"text": f"max {MAX_LOBBY_CHARS} characters"},
        )
    try:
        json.loads(text)
    except ValueError:
        return text
    raise ValidationFailed(
        'A JSON frame must be an object with a string "type"; lobby text must not be a bare JSON value',
        code="invalid_envelope",
    )
