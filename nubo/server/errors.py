"""Maps every exception to the one JSON error shape: :class:`ErrorBody`, `{"error", "code"[, "fields"]}`."""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.utils.scope.state import ScopeState

from nubo.errors import NuboError, StoreName, StoreUnavailable
from nubo.logs import get_logger
from nubo.stores.breaker import store_of

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
    stable snake_case `code` for programs, `fields` (each bad field and its problem) only when there are
    some, and `store` only on a 503 `store_unavailable` (a connection to that store failed)."""

    error: str
    code: str
    fields: dict[str, str] | None = None
    store: StoreName | None = None  # only with 503 `store_unavailable`

    @classmethod
    def of(cls, exc: NuboError) -> ErrorBody:
        return cls(exc.message, exc.code, exc.fields or None, _store_of(exc))


def _store_of(exc: NuboError) -> StoreName | None:
    return exc.store if isinstance(exc, StoreUnavailable) else None


def error_response(
    status: int, message: str, code: str, *, fields: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> Response[ErrorBody]:
    body = ErrorBody(message, code, fields or None)
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def handle_nubo_error(_: Request[Any, Any, Any], exc: NuboError) -> Response[ErrorBody]:
    body = ErrorBody.of(exc)
    return Response(body, status_code=exc.status, headers=exc.headers or None, media_type="application/json")


def handle_validation_error(request: Request[Any, Any, Any] | None, exc: ValidationException) -> Response[ErrorBody]:
    detail = str(exc.detail or "")
    if any(marker in detail for marker in _JSON_ERRORS):
        return error_response(400, "The request body is not valid JSON", "invalid_json")
    items = [item for item in (exc.extra if isinstance(exc.extra, list) else []) if isinstance(item, dict)]
    body_failed = any(item.get("source") == "body" or item.get("key") == "data" for item in items)
    if body_failed and (response := _body_error(request)) is not None:
        return response
    aliases = _parameter_aliases(request) if request is not None else {}
    fields: dict[str, str] = {}
    for item in items:
        message = str(item.get("message", "invalid"))
        key = str(item.get("key") or "body")
        fields[aliases.get(key, _field_key(key, message))] = message
    return error_response(422, detail or "Validation failed", "validation_error", fields=fields or None)


def _body_error(request: Request[Any, Any, Any] | None) -> Response[ErrorBody] | None:
    """A body that did not decode into the route's Struct: a 422 naming every bad field (msgspec stops at the
    first), or the body itself when it is missing or not an object; None when the request tells nothing."""
    if request is None:
        return None
    raw = ScopeState.from_scope(request.scope).body
    if not isinstance(raw, bytes) or not raw.strip():
        return error_response(422, "A JSON object body is required", "validation_error", fields=_MISSING_BODY)
    struct = request_struct(request.route_handler)
    fields = every_bad_field(struct, raw) if struct is not None else {}
    if not fields:
        return None
    return error_response(422, f"Invalid body: {', '.join(fields)}", "validation_error", fields=fields)


_MISSING_BODY = {"body": "required: a JSON object"}


def every_bad_field(struct: type[msgspec.Struct], raw: bytes) -> dict[str, str]:
    """Each field of `raw` (a JSON body) that does not fit `struct`, with its problem: missing, unknown or of
    the wrong type or size. ``{"body": ...}`` when the body is not a JSON object."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return {"body": "not valid JSON"}
    if not isinstance(value, dict):
        return {"body": "expected a JSON object"}
    hints = typing.get_type_hints(struct, include_extras=True)
    info: Any = msgspec.inspect.type_info(struct)
    fields: dict[str, str] = {}
    for field in info.fields:
        if field.encode_name not in value:
            if field.required:
                fields[field.encode_name] = f"Object missing required field `{field.encode_name}`"
            continue
        try:
            msgspec.convert(value[field.encode_name], type=hints[field.name])
        except msgspec.ValidationError as exc:
            fields[field.encode_name] = str(exc)
    if info.forbid_unknown_fields:
        known = {field.encode_name for field in info.fields}
        unknown = [str(key)[:64] for key in value if key not in known]
        fields.update({key: f"Object contains unknown field `{key}`" for key in unknown})
    return fields


def request_struct(handler: Any) -> type[msgspec.Struct] | None:
    """The Struct a route handler's `data` is decoded into (through `Annotated`, `JSONBody` and `| None`)."""
    fn = getattr(handler, "fn", None)
    if fn is None or "data" not in inspect.signature(fn).parameters:
        return None
    hint: Any = typing.get_type_hints(fn, include_extras=True).get("data")
    while True:
        if typing.get_origin(hint) is typing.Annotated:
            hint = typing.get_args(hint)[0]
            continue
        arguments = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(arguments) == 1 and typing.get_origin(hint) is not list:
            hint = arguments[0]
            continue
        break
    return hint if isinstance(hint, type) and issubclass(hint, msgspec.Struct) else None


def _parameter_aliases(request: Request[Any, Any, Any]) -> dict[str, str]:
    """Parameter names as clients write them (`?state=`), by the handler's argument name (`report_state`)."""
    aliases: dict[str, str] = {}
    signature = getattr(request.route_handler, "parsed_fn_signature", None)
    for name, parameter in (signature.parameters if signature else {}).items():
        definition = getattr(parameter, "kwarg_definition", None)
        alias = getattr(definition, "query", None) or getattr(definition, "name", None)
        if isinstance(alias, str) and alias != name:
            aliases[name] = alias
    return aliases


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


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    if (
        store := store_of(exc)
    ) is not None:  # an outage: the breaker logs it once (nubo.stores.breaker), no traceback per request
        log.info("store_unavailable", extra={"store": store})  # the request id names the request
        return handle_nubo_error(request, StoreUnavailable(store))
    log.exception("unhandled_error", extra={"path": request.url.path, "method": request.method})
    return error_response(500, "Internal server error", "internal_error")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    NuboError: handle_nubo_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
