"""The error envelope (nubo.errors, nubo.server.errors): every failure answers `{"error", "code"[, "fields"]}`
with its status, and a stable `code` per kind of failure."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from litestar.exceptions import HTTPException, NotFoundException, ValidationException

from nubo.errors import Conflict, NotFound, RateLimited, ValidationFailed
from nubo.server.errors import (
    ErrorBody,
    handle_http_exception,
    handle_nubo_error,
    handle_unexpected,
    handle_validation_error,
)

NO_REQUEST: Any = None  # the handlers do not read the request


def wire(content: object) -> Any:
    """A response body as the client receives it (JSON decoded)."""
    return msgspec.json.decode(msgspec.json.encode(content))


def test_domain_errors_carry_status_code_fields_and_headers() -> None:
    failed = ValidationFailed("bad", fields={"email": "not an email"})
    assert (failed.status, failed.code) == (422, "validation_error")
    assert wire(ErrorBody.of(failed)) == {
        "error": "bad",
        "code": "validation_error",
        "fields": {"email": "not an email"},
    }
    assert wire(ErrorBody.of(NotFound("gone"))) == {"error": "gone", "code": "not_found"}  # no empty `fields`
    assert Conflict("taken", code="username_taken").code == "username_taken"
    limited = RateLimited("slow down", retry_after=0, headers={"X-RateLimit-Remaining": "0"})
    assert limited.status == 429 and limited.headers == {"Retry-After": "1", "X-RateLimit-Remaining": "0"}


def test_a_domain_error_becomes_its_envelope() -> None:
    response = handle_nubo_error(NO_REQUEST, RateLimited("slow down", retry_after=7))
    assert response.status_code == 429 and response.headers["Retry-After"] == "7"
    assert wire(response.content) == {"error": "slow down", "code": "rate_limited"}


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (NotFoundException(), 404, "not_found"),
        (HTTPException(status_code=405), 405, "method_not_allowed"),
        (HTTPException(status_code=413), 413, "payload_too_large"),
        (HTTPException(status_code=418), 418, "error"),
        (HTTPException(status_code=502), 502, "internal_error"),
        (HTTPException(status_code=400, detail="JSON is malformed: invalid character"), 400, "invalid_json"),
    ],
)
def test_framework_errors_get_a_code_from_their_status(exc: HTTPException, status: int, code: str) -> None:
    response = handle_http_exception(NO_REQUEST, exc)
    assert response.status_code == status and wire(response.content)["code"] == code
    assert set(wire(response.content)) == {"error", "code"}


def test_validation_errors_name_each_field() -> None:
    exc = ValidationException(
        detail="Validation failed for POST /signup",
        extra=[
            {"message": "Object missing required field `email`", "key": "data"},
            {"message": "Expected `str`, got `int`", "key": "username"},
        ],
    )
    response = handle_validation_error(NO_REQUEST, exc)
    assert response.status_code == 422 and wire(response.content)["code"] == "validation_error"
    assert wire(response.content)["fields"] == {
        "email": "Object missing required field `email`",
        "username": "Expected `str`, got `int`",
    }


def test_a_store_that_is_down_is_a_503_naming_it() -> None:
    import psycopg
    import redis.exceptions

    response = handle_unexpected(NO_REQUEST, psycopg.OperationalError("connection refused"))
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert wire(response.content) == {
        "error": "The postgres store is unavailable; retry shortly",
        "code": "store_unavailable",
        "store": "postgres",
    }
    try:
        try:
            raise redis.exceptions.ConnectionError("down")
        except redis.exceptions.ConnectionError as exc:
            raise RuntimeError("while reading") from exc
    except RuntimeError as wrapped:
        assert wire(handle_unexpected(NO_REQUEST, wrapped).content)["store"] == "redis"
