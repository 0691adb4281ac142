"""The AsyncAPI 3 document of `GET /ws`, served at `/schema/asyncapi.json` (docs/api.md).

Generated from the frame Structs (:mod:`nubo.realtime.frames`) with ``msgspec.json.schema_components``, so
the document is the definition the server encodes with: a frame changes, the document changes with it. The
document describes nubo (the server application): its ``send`` operation is every frame it sends, its
``receive`` operation every frame it accepts. Durable events carry the recipient's ``event_id`` in front of
their fields (spliced in by :func:`nubo.stores.events.frame`); the document adds it to their schemas.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec
from litestar import get

from nubo import __version__
from nubo.messaging.views import MessageView
from nubo.notifications import Notification
from nubo.posts import PostSummary
from nubo.realtime import frames

SERVER_FRAMES: tuple[Any, ...] = (
    frames.HelloFrame,
    frames.AckFrame,
    frames.ErrorFrame,
    frames.PongFrame,
    frames.ResyncFrame,
    frames.TypingFrame,
    frames.PresenceFrame,
    frames.MessageNewFrame[MessageView],
    frames.MessageEditedFrame[MessageView],
    frames.MessageDeletedFrame,
    frames.ReadFrame,
    frames.NotificationFrame[Notification],
    frames.PostNewFrame[PostSummary],
)
DURABLE = frozenset({"message.new", "message.edited", "message.deleted", "read", "notification", "post.new"})
ERROR_CODES = {
    "invalid_json": "the frame is not valid JSON",
    "invalid_envelope": 'a JSON frame that is not an object with a string "type"',
    "unknown_type": "no such frame type",
    "binary_not_supported": "a binary frame",
    "payload_too_large": "a frame over NUBO_WS_MAX_FRAME bytes",
    "resume_too_late": "`resume` after the first frame",
    "validation_error": "a bad field (`fields` names each)",
    "not_found": "the conversation or message is absent or not visible",
    "forbidden": "not allowed (blocked, not a member any more...)",
    "rate_limited": "too many frames (message sends, lobby text)",
    "store_unavailable": "a store is down",
    "internal_error": "the server could not handle the frame",
}
CLOSE_CODES = {
    1009: "a frame over the size limit",
    4008: "the client reads too slowly (its send queue overflowed)",
    4401: "the session of the token was revoked",
}
HANDSHAKE = (
    "Authenticate at the handshake with `Authorization: Bearer <access token>` or, where headers cannot be set "
    "(browsers), `?token=<access token>` (redacted from logs). A refused upgrade gets an HTTP error before any "
    'frame, with the body `{"error", "code"}`: 401 `missing_token`/`invalid_token`/`expired_token`, 403 '
    "`origin_not_allowed` (`Origin` checked against NUBO_ALLOWED_ORIGINS), 422 `validation_error` (a bad "
    "`last_event_id`). `?last_event_id=N` resumes delivery after event N (as the `resume` frame). The server "
    "then sends `hello`, replays what was missed (or `resync`) and streams. Close codes: "
    + "; ".join(f"{code} {meaning}" for code, meaning in CLOSE_CODES.items())
    + "."
)


def _tag(frame: Any) -> str:
    return str(msgspec.inspect.type_info(frame).tag)  # type: ignore[attr-defined]


def _name(frame: Any) -> str:
    return _tag(frame).replace(".", "_")


def _message(frame: Any, ref: str) -> dict[str, Any]:
    doc = (getattr(frame, "__origin__", frame).__doc__ or "").strip()
    return {
        "name": _tag(frame),
        "title": _tag(frame),
        "summary": doc.splitlines()[0] if doc else _tag(frame),
        "contentType": "application/json",
        "payload": {"$ref": ref},
    }


def _mark_timestamps(types: list[Any], schemas: dict[str, Any]) -> None:
    """Give every datetime field `"format": "date-time"`: msgspec leaves it out (it also decodes naive
    datetimes), while nubo always sends RFC 3339 with `Z` (docs/api.md)."""
    seen: set[type] = set()
    pending = list(msgspec.inspect.multi_type_info(types))
    while pending:
        info = pending.pop()
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in seen:
                continue
            seen.add(info.cls)
            for field in info.fields:
                if _is_datetime(field.type) and info.cls.__name__ in schemas:
                    _add_format(schemas[info.cls.__name__]["properties"][field.encode_name])
                pending.append(field.type)
        for attribute in ("types", "item_type", "value_type"):
            value = getattr(info, attribute, None)
            if isinstance(value, tuple):
                pending.extend(value)
            elif value is not None:
                pending.append(value)


def _is_datetime(info: Any) -> bool:
    if isinstance(info, msgspec.inspect.UnionType):
        return any(isinstance(t, msgspec.inspect.DateTimeType) for t in info.types)
    return isinstance(info, msgspec.inspect.DateTimeType)


def _add_format(schema: dict[str, Any]) -> None:
    for branch in schema.get("anyOf", [schema]):
        if branch.get("type") == "string":
            branch["format"] = "date-time"


@cache
def document() -> dict[str, Any]:
    """The AsyncAPI 3.0 document (built once per process)."""
    everything = [*SERVER_FRAMES, *frames.ClientFrames]
    roots, schemas = msgspec.json.schema_components(everything, ref_template="#/components/schemas/{name}")
    _mark_timestamps(everything, schemas)
    messages: dict[str, Any] = {}
    for frame, root in zip(everything, roots, strict=True):
        name = root["$ref"].rsplit("/", 1)[1]
        if _tag(frame) in DURABLE:
            schema = schemas[name]
            schema["properties"] = {"event_id": {"type": "integer", "minimum": 1}, **schema["properties"]}
            schema["required"] = ["event_id", *schema.get("required", [])]
        key = ("client_" if frame in frames.ClientFrames else "") + _name(frame)
        messages[key] = _message(frame, root["$ref"])
    schemas["ErrorFrame"]["properties"]["code"]["description"] = "; ".join(
        f"`{c}`: {m}" for c, m in ERROR_CODES.items()
    )
    messages["lobby"] = {
        "name": "lobby",
        "title": "lobby text",
        "summary": "Plain text (not starting with `{` or `[`): the public lobby, relayed to every connected client",
        "contentType": "text/plain",
        "payload": {"type": "string"},
    }
    server = [k for k in messages if not k.startswith("client_")]
    client = [k for k in messages if k.startswith("client_") or k == "lobby"]
    channel_ref = {"$ref": "#/channels/ws"}
    return {
        "asyncapi": "3.0.0",
        "info": {"title": "nubo realtime", "version": __version__, "description": HANDSHAKE},
        "defaultContentType": "application/json",
        "servers": {
            "nubo": {
                "host": "localhost:8000",
                "protocol": "ws",
                "description": "wss behind TLS in production",
                "security": [
                    {"$ref": "#/components/securitySchemes/bearer"},
                    {"$ref": "#/components/securitySchemes/queryToken"},
                ],
            }
        },
        "channels": {
            "ws": {
                "address": "/ws",
                "messages": {key: {"$ref": f"#/components/messages/{key}"} for key in messages},
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "token": {"type": "string", "description": "the access token (browsers)"},
                                "last_event_id": {"type": "integer", "minimum": 0},
                            },
                        },
                        "headers": {
                            "type": "object",
                            "properties": {"Authorization": {"type": "string", "pattern": "^Bearer .+$"}},
                        },
                    }
                },
            }
        },
        "operations": {
            "sendFrames": {
                "action": "send",
                "channel": channel_ref,
                "summary": "Frames nubo sends",
                "messages": [{"$ref": f"#/channels/ws/messages/{key}"} for key in server],
            },
            "receiveFrames": {
                "action": "receive",
                "channel": channel_ref,
                "summary": "Frames nubo accepts (a bad one is answered by an `error` frame)",
                "messages": [{"$ref": f"#/channels/ws/messages/{key}"} for key in client],
            },
        },
        "components": {
            "messages": messages,
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "httpApiKey", "name": "Authorization", "in": "header"},
                "queryToken": {"type": "httpApiKey", "name": "token", "in": "query"},
            },
        },
    }


def server_frame_schema() -> dict[str, Any]:
    """One JSON schema that any frame nubo sends satisfies (a JSON frame or lobby text), with the document's
    components so that its `$ref`s resolve: what the tests validate every received frame against."""
    doc = document()
    payloads = [doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[1]]["payload"] for ref in _server_refs(doc)]
    return {"oneOf": payloads, "components": {"schemas": doc["components"]["schemas"]}}


def _server_refs(doc: dict[str, Any]) -> list[dict[str, str]]:
    refs: list[dict[str, str]] = doc["operations"]["sendFrames"]["messages"]
    return refs


@get("/schema/asyncapi.json", summary="The AsyncAPI 3 document of /ws", tags=["schema"], include_in_schema=False)
async def asyncapi_document() -> dict[str, Any]:
    return document()


ROUTES = [asyncapi_document]
