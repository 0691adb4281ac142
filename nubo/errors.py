"""Domain errors with a stable machine `code`; the server maps each to its HTTP status and JSON body
(:class:`nubo.server.errors.ErrorBody`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Literal


class NuboError(Exception):
    """Base of every error nubo reports to a client. `code` is stable snake_case, `message` is for humans."""

    status: ClassVar[int] = 400
    default_code: ClassVar[str] = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        fields: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.fields = dict(fields or {})
        self.headers = dict(headers or {})


class BadRequest(NuboError):
    """The request cannot be understood (malformed JSON, bad cursor...)."""


class ValidationFailed(NuboError):
    """One or more fields are invalid; `fields` maps each to its problem."""

    status = 422
    default_code = "validation_error"


class Unauthorized(NuboError):
    """Missing, invalid or expired credentials."""

    status = 401
    default_code = "invalid_token"


class Forbidden(NuboError):
    """Authenticated, but not allowed to do this."""

    status = 403
    default_code = "forbidden"


class NotFound(NuboError):
    """Absent, or not visible to the caller (never reveal which)."""

    status = 404
    default_code = "not_found"


class Conflict(NuboError):
    """The request clashes with existing state (duplicate username, ...)."""

    status = 409
    default_code = "conflict"


class PayloadTooLarge(NuboError):
    """The body or frame exceeds its size limit."""

    status = 413
    default_code = "payload_too_large"


class RateLimited(NuboError):
    """Too many requests in the window; `retry_after` seconds until the next one is allowed."""

    status = 429
    default_code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, headers: Mapping[str, str] | None = None) -> None:
        merged = {"Retry-After": str(max(1, retry_after)), **(headers or {})}
        super().__init__(message, headers=merged)
        self.retry_after = retry_after


class Unavailable(NuboError):
    """A store the operation needs is down."""

    status = 503
    default_code = "unavailable"


StoreName = Literal["postgres", "redis", "mongo", "s3"]


class StoreUnavailable(Unavailable):
    """A named store is unreachable: 503 `{"error", "code": "store_unavailable", "store": <name>}`."""

    default_code = "store_unavailable"

    def __init__(self, store: StoreName, message: str | None = None) -> None:
        super().__init__(message or f"The {store} store is unavailable; retry shortly", headers={"Retry-After": "1"})
        self.store = store
