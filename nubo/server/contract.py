"""The published HTTP contract (docs/api.md): every error status of every route, with the one error shape, and
request bodies documented by msgspec itself.

Litestar documents a handler's success response from its return type, but its errors as
`{status_code, detail, extra}` (nubo answers :class:`~nubo.server.errors.ErrorBody`), and a request Struct with
its own generator, which drops what msgspec enforces (unknown fields refused, patterns). Hence, in
:func:`nubo.server.app.create_app`:

- :func:`document_errors` gives every route the error statuses it can return: the standard ones, derived from
  its signature (below), plus those it declares with ``responses=errors(403, 404)``;
- :func:`finish_openapi` replaces the schema of each request body by msgspec's JSON schema of its Struct (the
  very definition that validates it), with the extra rules a Struct declares in ``json_schema_extra``.

Standard statuses: an authenticated route can answer 401 (no, bad or expired token) and 429 (per-user rate
limit); a route with a body 400 (not JSON), 413 (too large) and 422; a route with parameters 400 (a request
it cannot read, such as a bad cursor) and 422; a route with
a path parameter 404 (absent or not visible); a route that reads the stores 503 (a store is down).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.routes import HTTPRoute

from nubo.server.errors import ErrorBody, request_struct

DESCRIPTIONS = {
    400: ("The body is not valid JSON", "invalid_json", None),
    401: ("No, an invalid or an expired access token", "invalid_token", None),
    403: ("Not allowed to do this", "forbidden", None),
    404: ("Absent, or not visible to the caller", "not_found", None),
    409: ("Conflicts with the current state", "conflict", None),
    413: ("The body is too large", "payload_too_large", None),
    422: ("Invalid input: `fields` names every bad field", "validation_error", {"content": "at most 4000 characters"}),
    429: ("Rate limited: retry after `Retry-After` seconds", "rate_limited", None),
    503: ("A store is down (`store` names it)", "store_unavailable", None),
}
NO_NUL = r"^[^\x00]*$"
"""Text without NUL characters (PostgreSQL cannot store them)."""
NOT_BLANK = r"^[^\x00]*[^\x00\s\x1c-\x1f\x85][^\x00]*$"
"""Text without NUL holding one non-blank character; blank is spelled out so that Python's `str.strip` (the
server) and ECMA-262's `\\s` (JSON Schema) agree on it."""
ROUTE_PARAMETERS = frozenset({"request", "stores", "settings", "hub", "socket", "data", "state"})
REQUEST_BODY_REF = re.compile(r"^#/components/schemas/(.+)$")


def errors(*statuses: int) -> dict[int, ResponseSpec]:
    """The OpenAPI responses of these error statuses, each with the :class:`ErrorBody` schema and an example;
    pass as a route's ``responses=`` for the statuses its signature does not imply (403, 404, 409...)."""
    specs: dict[int, ResponseSpec] = {}
    for status in statuses:
        description, code, fields = DESCRIPTIONS[status]
        example = ErrorBody(description, code, fields, store="postgres" if status == 503 else None)
        specs[status] = ResponseSpec(
            data_container=ErrorBody,
            generate_examples=False,
            description=description,
            examples=[Example(summary=code, value=msgspec.to_builtins(example))],
        )
    return specs


def _signature(handler: HTTPRouteHandler) -> Mapping[str, inspect.Parameter]:
    return inspect.signature(handler.fn).parameters


def standard_statuses(handler: HTTPRouteHandler, public: bool) -> list[int]:
    """The error statuses a handler's signature implies (this module's docstring)."""
    parameters = _signature(handler)
    statuses: list[int] = []
    if not public:
        statuses += [401, 429]
    if "data" in parameters:
        statuses += [400, 413, 422]
    if any(name not in ROUTE_PARAMETERS for name in parameters):
        statuses += [400, 422]
    if any("{" in path for path in handler.paths):
        statuses.append(404)
    if "stores" in parameters:
        statuses.append(503)
    return sorted(set(statuses))


def document_errors(handlers: Iterable[Any], public_paths: Iterable[str]) -> None:
    """Give each HTTP handler the standard error responses it lacks (its own declarations win)."""
    patterns = [re.compile(pattern) for pattern in public_paths]
    for handler in handlers:
        if not isinstance(handler, HTTPRouteHandler):
            continue
        public = all(any(p.match(path) for p in patterns) for path in handler.paths)
        declared = dict(handler.responses or {})
        for status, spec in errors(*standard_statuses(handler, public)).items():
            declared.setdefault(status, spec)
        handler.responses = dict(sorted(declared.items()))


def _request_schemas(structs: Iterable[type[msgspec.Struct]]) -> dict[str, dict[str, Any]]:
    """msgspec's JSON schema of each Struct (and of the Structs it holds), keyed by Struct name."""
    unique = list(dict.fromkeys(structs))
    _, components = msgspec.json.schema_components(unique, ref_template="#/components/schemas/{name}")
    for struct in unique:
        extra = getattr(struct, "json_schema_extra", None)
        if extra:
            components[struct.__name__].update(extra)
    return components


def finish_openapi(app: Litestar, handlers: Iterable[Any]) -> None:
    """Build the app's OpenAPI document now, with msgspec's schemas for the request bodies (module docstring).
    Call once the app is built: no route is added afterwards."""
    structs = [s for h in handlers if isinstance(h, HTTPRouteHandler) and (s := request_struct(h)) is not None]
    plugin = app.plugins.get(OpenAPIPlugin)
    document = plugin.provide_openapi().to_schema()
    document.setdefault("components", {}).setdefault("schemas", {}).update(_request_schemas(structs))
    plugin._openapi_schema = document  # what /schema/openapi.json and the renderers serve


def fix_options_allow(app: Litestar) -> None:
    """Make every path's OPTIONS answer list all its methods. Litestar builds the OPTIONS handler with the
    path's first handler and keeps it when more handlers join the path, so its `Allow` named only the first
    method: its function is rebuilt here on the finished route."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.http_methods == {"OPTIONS"} and handler.handler_name == "options_handler":
                handler._fn = route.create_options_handler(route.path).fn
