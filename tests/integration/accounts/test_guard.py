"""The guard refuses every forged, expired or revoked access token with the right 401 code (RFC 8725)."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

import pytest

from nubo.settings import Settings
from tests.helpers.auth import (
    Account,
    Client,
    assert_error,
    craft_jwt,
    good_claims,
    login,
    new_account,
)

HS256 = {"alg": "HS256", "typ": "JWT"}


@pytest.fixture(scope="module")
async def account(client: Client) -> Account:
    return await new_account(client)


async def me_with(client: Client, token: str) -> Any:
    return await client.get("/me", headers={"Authorization": f"Bearer {token}"})


async def test_a_well_formed_token_is_accepted(client: Client, account: Account, settings: Settings) -> None:
    token = craft_jwt(HS256, good_claims(settings, account), settings.jwt_secret)
    response = await me_with(client, token)
    assert response.status_code == 200, response.text  # the forgeries below differ from this in one thing


@pytest.mark.parametrize("headers", [{}, {"Authorization": ""}], ids=["no-header", "empty-header"])
async def test_missing_token(client: Client, headers: dict[str, str]) -> None:
    for path in ("/me", "/sessions", "/me/settings"):
        assert_error(await client.get(path, headers=headers), 401, "missing_token")
    assert_error(await client.post("/logout", headers=headers), 401, "missing_token")


@pytest.mark.parametrize(
    "value",
    ["Basic dXNlcjpwYXNz", "Bearer", "Bearer not.a.jwt", "Token abc", "Bearer a.b", "Bearer " + "x" * 5000],
)
async def test_malformed_authorization_header(client: Client, value: str) -> None:
    assert_error(await client.get("/me", headers={"Authorization": value}), 401, "invalid_token")


def forgeries(settings: Settings, account: Account) -> dict[str, str]:
    """Each token differs from an accepted one in exactly one way."""
    secret, claims = settings.jwt_secret, good_claims(settings, account)
    valid = craft_jwt(HS256, claims, secret)
    head, _, signature = valid.split(".")
    tampered_claims = {**claims, "sub": str(uuid.uuid4())}
    tampered_payload = craft_jwt(HS256, tampered_claims, None).split(".")[1]
    return {
        "alg_none": craft_jwt({"alg": "none", "typ": "JWT"}, claims, None),
        "alg_none_keeping_signature": craft_jwt({"alg": "none"}, claims, None) + signature,
        "hs512_same_secret": craft_jwt({"alg": "HS512", "typ": "JWT"}, claims, secret, hashlib.sha512),
        "rs256_header_hmac_signed": craft_jwt({"alg": "RS256", "typ": "JWT"}, claims, secret),
        "wrong_secret": craft_jwt(HS256, claims, secret + "x"),
        "tampered_payload": f"{head}.{tampered_payload}.{signature}",
        "missing_sub": craft_jwt(HS256, good_claims(settings, account, sub=None), secret),
        "missing_sid": craft_jwt(HS256, good_claims(settings, account, sid=None), secret),
        "missing_exp": craft_jwt(HS256, good_claims(settings, account, exp=None), secret),
        "missing_jti": craft_jwt(HS256, good_claims(settings, account, jti=None), secret),
        "wrong_aud": craft_jwt(HS256, good_claims(settings, account, aud="another-api"), secret),
        "aud_list": craft_jwt(HS256, good_claims(settings, account, aud=[settings.jwt_audience, "x"]), secret),
        "wrong_iss": craft_jwt(HS256, good_claims(settings, account, iss="someone-else"), secret),
        "sub_not_uuid": craft_jwt(HS256, good_claims(settings, account, sub="admin"), secret),
        "unknown_session": craft_jwt(HS256, good_claims(settings, account, sid=str(uuid.uuid4())), secret),
        "other_users_sub": craft_jwt(HS256, good_claims(settings, account, sub=str(uuid.uuid4())), secret),
        "not_yet_valid": craft_jwt(HS256, good_claims(settings, account, nbf=int(time.time()) + 600), secret),
        "expired_and_wrong_secret": craft_jwt(
            HS256, good_claims(settings, account, exp=int(time.time()) - 60), "another-secret"
        ),
    }


FORGERY_NAMES = list(forgeries(Settings(), Account("u", "e", uuid.uuid4(), "", "", uuid.uuid4())))


@pytest.mark.parametrize("name", FORGERY_NAMES)
async def test_forged_tokens_are_invalid(client: Client, account: Account, settings: Settings, name: str) -> None:
    token = forgeries(settings, account)[name]
    body = assert_error(await me_with(client, token), 401, "invalid_token")
    assert token not in body["error"]


async def test_expired_token(client: Client, account: Account, settings: Settings) -> None:
    now = int(time.time())
    token = craft_jwt(HS256, good_claims(settings, account, iat=now - 1000, exp=now - 100), settings.jwt_secret)
    assert_error(await me_with(client, token), 401, "expired_token")


async def test_token_of_a_session_revoked_by_another_request(client: Client, settings: Settings) -> None:
    phone = await new_account(client)
    laptop = await login(client, phone.username)
    assert (await me_with(client, phone.access_token)).status_code == 200
    assert (await client.delete(f"/sessions/{phone.session_id}", headers=laptop.headers)).status_code == 204
    assert_error(await me_with(client, phone.access_token), 401, "invalid_token")
    assert (await me_with(client, laptop.access_token)).status_code == 200
