"""Bad input on every auth route answers 4xx with a stable `code`, never a 500: missing fields, wrong types,
overlong strings, bad emails, non-JSON bodies and 2 MiB bodies (plus a hypothesis fuzz of JSON values)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.helpers.auth import (
    Account,
    Client,
    assert_error,
    new_account,
    signup_body,
    unique,
)

TWO_MIB = 2 * 1024 * 1024


@dataclass
class Route:
    method: str
    path: str
    valid: dict[str, Any] = field(default_factory=dict)  # a body this route would accept
    auth: bool = True


def routes() -> list[Route]:
    return [
        Route("POST", "/signup", signup_body("placeholder"), auth=False),
        Route("POST", "/login", {"username": "someone", "password": "whatever-1"}, auth=False),
        Route("POST", "/token/refresh", {"refresh_token": "r" * 43}, auth=False),
        Route("PATCH", "/me", {"bio": "hello", "first_name": "Ada"}),
        Route("PUT", "/me/settings", {"privacy": {}, "notifications": {}, "language": "en", "theme": 0}),
    ]


BODY_ROUTES = {f"{r.method} {r.path}": r for r in routes()}


@pytest.fixture(scope="module")
async def account(client: Client) -> Account:
    return await new_account(client)


async def send(
    client: Client,
    route: Route,
    account: Account,
    *,
    body: Any = None,
    content: bytes | None = None,
    content_type: str = "application/json",
) -> Any:
    headers = {**(account.headers if route.auth else {}), "content-type": content_type}
    if content is None:
        content = json.dumps(body).encode()
    return await client.request(route.method, route.path, content=content, headers=headers)


def check_4xx(response: Any, allowed: tuple[int, ...] = (400, 401, 404, 409, 413, 415, 422, 429)) -> str:
    assert response.status_code in allowed, (response.status_code, response.text[:500])
    body = response.json()
    assert isinstance(body.get("code"), str) and body["code"], body
    return str(body["code"])


@pytest.mark.parametrize("key", list(BODY_ROUTES))
async def test_missing_fields(client: Client, account: Account, key: str) -> None:
    route = BODY_ROUTES[key]
    response = await send(client, route, account, body={})
    body = assert_error(response, 422, "validation_error")
    assert body.get("fields"), body
    if key == "PATCH /me":  # every PATCH field is optional
        return
    for name in route.valid:
        partial = {k: v for k, v in route.valid.items() if k != name}
        check_4xx(await send(client, route, account, body=partial))


@pytest.mark.parametrize("key", list(BODY_ROUTES))
@pytest.mark.parametrize("wrong", [12345, 1.5, True, None, ["a"], {"a": 1}], ids=lambda v: type(v).__name__)
async def test_wrong_types(client: Client, account: Account, key: str, wrong: Any) -> None:
    route = BODY_ROUTES[key]
    for name, value in route.valid.items():
        if wrong is None and name in ("bio",):  # null legitimately clears an optional profile field
            continue
        if isinstance(value, dict) and isinstance(wrong, dict):
            continue
        code = check_4xx(await send(client, route, account, body={**route.valid, name: wrong}))
        assert code in (
            "validation_error",
            "invalid_credentials",
            "invalid_token",
            "username_taken",
            "email_taken",
        ), (name, code)


@pytest.mark.parametrize("key", list(BODY_ROUTES))
async def test_overlong_strings(client: Client, account: Account, key: str) -> None:
    route = BODY_ROUTES[key]
    for name, value in route.valid.items():
        if isinstance(value, str):
            response = await send(client, route, account, body={**route.valid, name: "x" * 5000})
            body = assert_error(response, 422, "validation_error")
            assert name in body.get("fields", {}), body
            assert "x" * 100 not in response.text  # the value is not echoed back


@pytest.mark.parametrize("key", list(BODY_ROUTES))
async def test_top_level_not_an_object(client: Client, account: Account, key: str) -> None:
    for body in ([], "text", 42, None, [{"username": "a"}]):
        check_4xx(await send(client, BODY_ROUTES[key], account, body=body))


@pytest.mark.parametrize("key", list(BODY_ROUTES))
@pytest.mark.parametrize(
    "content",
    [b"not json", b"{", b'{"username": }', b"\xff\xfe\x00", b"", b"null garbage"],
    ids=["text", "open-brace", "bad-value", "binary", "empty", "trailing"],
)
async def test_non_json(client: Client, account: Account, key: str, content: bytes) -> None:
    code = check_4xx(await send(client, BODY_ROUTES[key], account, content=content))
    if content not in (b"",):
        assert code == "invalid_json", code


@pytest.mark.parametrize("key", list(BODY_ROUTES))
async def test_form_encoded_body(client: Client, account: Account, key: str) -> None:
    check_4xx(
        await send(
            client,
            BODY_ROUTES[key],
            account,
            content=b"username=a&password=b",
            content_type="application/x-www-form-urlencoded",
        )
    )


@pytest.mark.parametrize("key", list(BODY_ROUTES))
async def test_two_mib_body(client: Client, account: Account, key: str) -> None:
    padding = "x" * TWO_MIB
    body = json.dumps({**BODY_ROUTES[key].valid, "padding": padding}).encode()
    response = await send(client, BODY_ROUTES[key], account, content=body)
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize(
    "email",
    [
        "plainaddress",
        "@example.com",
        "a@",
        "a@b",
        "a b@example.com",
        "a@exa mple.com",
        "a@@example.com",
        "a@-example.com",
        "x" * 250 + "@e.com",
    ],
)
async def test_bad_emails(client: Client, account: Account, email: str) -> None:
    body = {**signup_body(unique()), "email": email}
    response = await send(client, BODY_ROUTES["POST /signup"], account, body=body)
    assert "email" in assert_error(response, 422, "validation_error").get("fields", {})


@pytest.mark.parametrize("username", ["ab", "a" * 31, "has space", "semi;colon", "ünïcode", "a-b", ""])
async def test_bad_usernames(client: Client, account: Account, username: str) -> None:
    body = {**signup_body(unique()), "username": username}
    response = await send(client, BODY_ROUTES["POST /signup"], account, body=body)
    assert "username" in assert_error(response, 422, "validation_error").get("fields", {})


@pytest.mark.parametrize("password", ["short", "x" * 129])
async def test_bad_passwords(client: Client, account: Account, password: str) -> None:
    body = {**signup_body(unique()), "password": password}
    response = await send(client, BODY_ROUTES["POST /signup"], account, body=body)
    assert "password" in assert_error(response, 422, "validation_error").get("fields", {})
    assert password not in response.text


async def test_unknown_fields_are_refused(client: Client, account: Account) -> None:
    body = {**signup_body(unique()), "grade": 9}
    fields = assert_error(await send(client, BODY_ROUTES["POST /signup"], account, body=body), 422).get("fields")
    assert fields == {"grade": "Object contains unknown field `grade`"}, fields


async def test_bad_path_and_query_parameters(client: Client, account: Account) -> None:
    for path in ("/sessions/not-a-uuid", "/sessions/" + "9" * 300):
        assert_error(await client.delete(path, headers=account.headers), 422, "validation_error")
    for query in ("limit=abc", "limit=1000", "limit=-1", "before=nope"):
        check_4xx(await client.get(f"/sessions?{query}", headers=account.headers))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_fuzzed_bodies_never_500(client: Client, account: Account, data: st.DataObject) -> None:
    route = data.draw(st.sampled_from(routes()))
    keys = st.sampled_from([*route.valid, "extra"]) | st.text(max_size=8)
    body = data.draw(st.one_of(JSON_VALUES, st.dictionaries(keys, JSON_VALUES, max_size=6)))
    response = await send(client, route, account, body=body)
    assert response.status_code < 500, (route.path, body, response.text)
    if response.status_code >= 400:
        assert isinstance(response.json().get("code"), str)
