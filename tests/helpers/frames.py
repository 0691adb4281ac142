"""Every frame a test receives from nubo is checked against the AsyncAPI document (`/schema/asyncapi.json`,
built by :func:`nubo.server.asyncapi.document`): the document and the server cannot drift apart unnoticed.

:class:`tests.helpers.messaging.WsClient` calls :func:`frame_problem` on each frame it receives; any other
place that reads frames from a real socket should too.
"""

from __future__ import annotations

import json
import re
import uuid
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import best_match

from nubo.server.asyncapi import server_frame_schema

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")
FORMATS = FormatChecker(formats=())


@FORMATS.checks("date-time")
def _is_timestamp(value: object) -> bool:
    return not isinstance(value, str) or bool(RFC3339_UTC.match(value))


@FORMATS.checks("uuid", raises=ValueError)
def _is_uuid(value: object) -> bool:
    return not isinstance(value, str) or bool(uuid.UUID(value))


@cache
def validator() -> Draft202012Validator:
    return Draft202012Validator(server_frame_schema(), format_checker=FORMATS)


def frame_problem(raw: str | bytes) -> str | None:
    """Why a frame as received does not fit the document (None when it does). A text frame that is not a JSON
    object is lobby text and is checked as a string."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    if not isinstance(value, dict):
        value = text
    error = best_match(validator().iter_errors(value))
    return None if error is None else f"{error.message} at {list(error.absolute_path)} in {text[:300]}"


@cache
def documented_types() -> frozenset[str]:
    """The `type` of every JSON frame nubo sends, as the document lists them."""
    schema = server_frame_schema()
    components = schema["components"]["schemas"]
    refs = [branch["$ref"].rsplit("/", 1)[1] for branch in schema["oneOf"] if "$ref" in branch]
    return frozenset(value for ref in refs for value in components[ref]["properties"]["type"]["enum"])


def known_frame_problem(raw: str) -> str | None:
    """:func:`frame_problem` for frames whose `type` is documented; None for anything else (the tests of the
    hub push made-up events through it, which are not nubo's frames)."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict) or value.get("type") not in documented_types():
        return None
    return frame_problem(raw)
