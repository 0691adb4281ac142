"""Structured JSON logging: one object per line with `event` plus context fields, never secrets.

The request id of the request being served (a context variable set by the server's request middleware, so
also inherited by the tasks a request starts) is added to every line as `request_id`.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:@+=/-]{1,128}")
request_id_var: ContextVar[str | None] = ContextVar("nubo_request_id", default=None)


def accept_request_id(raw: str | None) -> str:
    """The client's `X-Request-ID` when it is safe to log and echo (1-128 of ``A-Z a-z 0-9 . _ : @ + = / -``),
    else a new random one (32 hex digits)."""
    if raw is not None and _REQUEST_ID_PATTERN.fullmatch(raw):
        return raw
    return secrets.token_hex(16)


def current_request_id() -> str | None:
    """The id of the request this code runs for (None outside a request)."""
    return request_id_var.get()


class JsonFormatter(logging.Formatter):
    """Formats a record as JSON; keys passed through `extra=` become top-level fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info") -> None:
    """Send every log line to stderr as JSON (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # uvicorn's access log prints raw query strings (`?token=` on /ws) and costs ~40% of /ping's CPU: keep it
    # off. uvicorn decides per connection with hasHandlers(), so it must have none, even through propagation.
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(name)
