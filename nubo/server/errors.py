"""Maps every exception to the one JSON error shape: :class:`ErrorBody`, `{"error", "code"[, "fields"]}`."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from nubo.errors import NuboError
from nubo.logs import get_logger
from nubo.stores.breaker import StoreUnavailable, store_of

log = get_logger(__name__)

_CODES_BY_STATUS = {
    400: "bad_request",
    401: "invalid_token",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    503: "unavailable",
}


class ErrorBody(msgspec.Struct, omit_defaults=True):
    """Every error a client receives (HTTP responses and refused WebSocket upgrades): a message for humans, a
    stable snake_case `code` for programs, and `fields` (each bad field and its problem) only when there are
    some."""

    error: str
    code: str
    fields: dict[str, str] | None = None

    @classmethod
    def of(cls, exc: NuboError) -> ErrorBody:
        return cls(exc.message, exc.code, exc.fields or None)


def error_response(
    status: int, message: str, code: str, *, fields: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    body = ErrorBody(message, code, fields or None)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def handle_nubo_error(_: Request[Any, Any, Any], exc: NuboError) -> Response[ErrorBody]:
    return error_response(exc.status, exc.message, exc.code, fields=exc.fields, headers=exc.headers)


def handle_validation_error(_: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorBody]:
    detail = str(exc.detail or "")
    if any(marker in detail for marker in _JSON_ERRORS):
        return error_response(400, "The request body is not valid JSON", "invalid_json")
    fields: dict[str, str] = {}
    for item in exc.extra if isinstance(exc.extra, list) else []:
        if isinstance(item, dict):
            message = str(item.get("message", "invalid"))
            fields[_field_key(str(item.get("key") or "body"), message)] = message
    return error_response(422, detail or "Validation failed", "validation_error", fields=fields or None)


# msgspec names the offending field in the message for these; Litestar then reports the key as "data".
_NAMED_FIELD = re.compile(r"(?:missing required field|unknown field) `([^`]{1,64})`")


def _field_key(key: str, message: str) -> str:
    """The field a message is about: msgspec's "missing required field `x`" names it, the key does not."""
    if key in ("data", "body") and (match := _NAMED_FIELD.search(message)):
        return match.group(1)
    return key


# msgspec's decode errors for a body that is not JSON at all (Litestar raises them as a plain 400).
_JSON_ERRORS = ("JSON is malformed", "Input data was truncated", "Expected JSON")


def handle_http_exception(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    if status >= 500:
        log.error("http_error", extra={"status": status, "detail": exc.detail})
    if status == 400 and str(exc.detail or "").startswith(_JSON_ERRORS):
        return error_response(400, "The request body is not valid JSON", "invalid_json")
    code = _CODES_BY_STATUS.get(status, "error" if status < 500 else "internal_error")
    headers = dict(exc.headers or {})
    return error_response(status, str(exc.detail or code.replace("_", " ")), code, headers=headers or None)


class StoreErrorBody(msgspec.Struct):
    """503 for a store that is down: the error shape plus which store (`postgres`, `redis`, `mongo`, `s3`)."""

    error: str
    code: str
    store: str


def store_unavailable_response(store: str) -> Response[StoreErrorBody]:
    body = StoreErrorBody(f"The {store} store is unavailable; retry shortly", "store_unavailable", store)
    return Response(body, status_code=503, headers={"Retry-After": "1"}, media_type="application/json")


def handle_store_unavailable(_: Request[Any, Any, Any], exc: StoreUnavailable) -> Response[StoreErrorBody]:
    return store_unavailable_response(exc.store)


def handle_unexpected(
    request: Request[Any, Any, Any], exc: Exception
) -> Response[ErrorBody] | Response[StoreErrorBody]:
    store = store_of(exc)
    if store is not None:  # an outage: the breaker logs it once (nubo.stores.breaker), no traceback per request
        log.info("store_unavailable", extra={"store": store, "path": request.url.path})
        return store_unavailable_response(store)
    log.exception("unhandled_error", extra={"path": request.url.path, "method": request.method})
    return error_response(500, "Internal server error", "internal_error")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    StoreUnavailable: handle_store_unavailable,
    NuboError: handle_nubo_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
