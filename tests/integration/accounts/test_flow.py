"""Accounts end to end on the real app (in-process) and the real stores: signup, login, refresh rotation and
reuse detection, sessions, profile, settings, deactivation, the stored hash and the session mirror."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from litestar import Litestar
from litestar.datastructures import State
from litestar.testing import AsyncTestClient

from nubo import accounts
from nubo.accounts import mirrors, security
from nubo.errors import Unauthorized
from nubo.root import open_root
from nubo.server import auth as auth_routes
from nubo.server.deps import dependencies
from nubo.server.errors import EXCEPTION_HANDLERS
from nubo.settings import Settings
from nubo.stores import Stores
from nubo.stores.redis import Keys
from tests.helpers.auth import (
    PASSWORD,
    Account,
    Client,
    assert_error,
    auth_client,
    claims_of,
    login,
    new_account,
    signup_body,
    unique,
)
from tests.helpers.harness import free_port


@pytest.fixture
async def account(client: Client) -> Account:
    return await new_account(client)


async def test_signup_login_me_refresh_reuse_revokes_then_login_again(client: Client) -> None:
    body = signup_body()
    signup = await client.post("/signup", json=body)
    assert signup.status_code == 201, signup.text
    user = signup.json()
    assert user["username"] == body["username"] and user["email"] == body["email"]
    assert "password_hash" not in user and "password" not in user and PASSWORD not in signup.text

    first = await login(client, body["username"])
    me = await client.get("/me", headers=first.headers)
    assert me.status_code == 200 and me.json()["id"] == str(first.id)

    rotated = await client.post("/token/refresh", json={"refresh_token": first.refresh_token})
    assert rotated.status_code == 200, rotated.text
    new_tokens = rotated.json()
    assert new_tokens["refresh_token"] != first.refresh_token and new_tokens["token_type"] == "bearer"
    assert claims_of(new_tokens["access_token"])["sid"] == str(first.session_id)  # same session, new tokens
    assert (
        await client.get("/me", headers={"Authorization": f"Bearer {new_tokens['access_token']}"})
    ).status_code == 200

    reuse = await client.post("/token/refresh", json={"refresh_token": first.refresh_token})
    assert_error(reuse, 401, "refresh_token_reused")
    for token in (first.access_token, new_tokens["access_token"]):  # the whole session is gone
        assert_error(await client.get("/me", headers={"Authorization": f"Bearer {token}"}), 401, "invalid_token")
    assert_error(
        await client.post("/token/refresh", json={"refresh_token": new_tokens["refresh_token"]}),
        401,
        "invalid_token",
    )

    again = await login(client, body["username"])
    assert again.session_id != first.session_id
    assert (await client.get("/me", headers=again.headers)).status_code == 200


async def test_login_with_a_username_and_another_users_email_is_refused(client: Client, account: Account) -> None:
    other = await new_account(client)
    mixed = {"username": account.username, "email": other.email, "password": PASSWORD}
    assert_error(await client.post("/login", json=mixed), 401, "invalid_credentials")
    same = {"username": account.username, "email": account.email.upper(), "password": PASSWORD}
    response = await client.post("/login", json=same)
    assert response.status_code == 200, response.text
    assert claims_of(response.json()["access_token"])["sub"] == str(account.id)


async def test_login_by_email_any_case(client: Client, account: Account) -> None:
    response = await client.post("/login", json={"email": account.email.upper(), "password": PASSWORD})
    assert response.status_code == 200, response.text
    response = await client.post("/login", json={"username": account.username.upper(), "password": PASSWORD})
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["expires_in"] == 900 and body["token_type"] == "bearer"
    claims = claims_of(body["access_token"])
    assert set(claims) == {"sub", "sid", "iat", "exp", "jti", "iss", "aud"}
    assert claims["exp"] - claims["iat"] == 900


async def test_duplicates_are_409_naming_the_field(client: Client, account: Account) -> None:
    same_name = signup_body(account.username.upper())
    same_name["email"] = f"{unique()}@example.com"
    body = assert_error(await client.post("/signup", json=same_name), 409, "username_taken")
    assert body["fields"] == {"username": "already taken"}
    same_email = signup_body()
    same_email["email"] = account.email.upper()
    body = assert_error(await client.post("/signup", json=same_email), 409, "email_taken")
    assert body["fields"] == {"email": "already taken"}


async def test_signup_creates_default_settings(client: Client, account: Account, db: Stores) -> None:
    async with db.pg.connection() as conn:
        row = await (
            await conn.execute("SELECT * FROM auth.user_settings WHERE user_id = %s", (account.id,))
        ).fetchone()
    assert row is not None and row["language"] == "en" and row["theme"] == 0
    response = await client.get("/me/settings", headers=account.headers)
    assert response.status_code == 200
    assert response.json() == {"privacy": {}, "notifications": {}, "language": "en", "theme": 0}


async def test_stored_password_is_argon2id_with_owasp_parameters(account: Account, db: Stores) -> None:
    async with db.pg.connection() as conn:
        row = await (await conn.execute("SELECT password_hash FROM auth.users WHERE id = %s", (account.id,))).fetchone()
    assert row is not None
    stored = row["password_hash"]
    params = security.argon2_parameters(stored)
    assert stored.startswith("$argon2id$") and params["type"] == "argon2id"
    assert params["m"] >= 19456 and params["t"] >= 2 and params["p"] >= 1, params
    assert PASSWORD not in stored and security.verify_password_sync(stored, PASSWORD)
    assert not security.verify_password_sync(stored, PASSWORD + "x")


async def test_unknown_user_and_wrong_password_look_the_same(client: Client, account: Account) -> None:
    async def attempt(username: str) -> tuple[float, dict[str, object]]:
        start = time.perf_counter()
        response = await client.post("/login", json={"username": username, "password": "wrong-password-1"})
        elapsed = time.perf_counter() - start
        return elapsed, assert_error(response, 401, "invalid_credentials")

    wrong = [await attempt(account.username) for _ in range(3)]
    unknown = [await attempt(unique("ghost")) for _ in range(3)]
    assert wrong[0][1] == unknown[0][1]  # same status, same body
    wrong_median = sorted(t for t, _ in wrong)[1]
    unknown_median = sorted(t for t, _ in unknown)[1]
    # Both run one argon2 verification (a dummy hash for the unknown user): no fast path to time.
    assert unknown_median > 0.4 * wrong_median, (unknown_median, wrong_median)
    assert unknown_median > 0.005


async def test_two_concurrent_refreshes_with_one_token_cannot_both_succeed(client: Client, account: Account) -> None:
    responses = await asyncio.gather(
        *(client.post("/token/refresh", json={"refresh_token": account.refresh_token}) for _ in range(4))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) <= 1, [r.text for r in responses]
    assert all(s in (200, 401) for s in statuses)
    for response in responses:
        if response.status_code == 401:
            assert response.json()["code"] in ("refresh_token_reused", "invalid_token")


async def test_rotation_is_one_row_and_records_the_old_hash(client: Client, account: Account, db: Stores) -> None:
    response = await client.post("/token/refresh", json={"refresh_token": account.refresh_token})
    assert response.status_code == 200
    new_refresh = response.json()["refresh_token"]
    async with db.pg.connection() as conn:
        session = await (
            await conn.execute("SELECT * FROM auth.sessions WHERE id = %s", (account.session_id,))
        ).fetchone()
        used = await (
            await conn.execute("SELECT * FROM auth.used_refresh_tokens WHERE session_id = %s", (account.session_id,))
        ).fetchall()
    assert session is not None and not session["revoked"]
    assert session["refresh_token_hash"] == security.hash_refresh_token(new_refresh)
    assert [u["token_hash"] for u in used] == [security.hash_refresh_token(account.refresh_token)]
    # Only hashes are stored: neither token appears in the row.
    assert account.refresh_token not in json.dumps(session, default=str)


async def test_unknown_refresh_token_is_401(client: Client) -> None:
    assert_error(await client.post("/token/refresh", json={"refresh_token": "x" * 43}), 401, "invalid_token")


async def test_sessions_list_logout_and_delete_own_only(client: Client, account: Account) -> None:
    second = await login(client, account.username)
    listing = await client.get("/sessions", headers=account.headers)
    assert listing.status_code == 200, listing.text
    items = listing.json()["items"]
    assert [item["id"] for item in items] == [str(second.session_id), str(account.session_id)]
    assert [item["current"] for item in items] == [False, True]
    assert listing.json()["next"] is None
    assert "refresh_token_hash" not in listing.text

    stranger = await new_account(client)
    assert_error(
        await client.delete(f"/sessions/{second.session_id}", headers=stranger.headers),
        404,
        "session_not_found",
    )
    assert_error(await client.delete("/sessions/not-a-uuid", headers=stranger.headers), 422, "validation_error")
    assert (await client.get("/me", headers=second.headers)).status_code == 200

    assert (await client.delete(f"/sessions/{second.session_id}", headers=account.headers)).status_code == 204
    assert_error(await client.get("/me", headers=second.headers), 401, "invalid_token")
    assert_error(
        await client.post("/token/refresh", json={"refresh_token": second.refresh_token}),
        401,
        "invalid_token",
    )

    assert (await client.post("/logout", headers=account.headers)).status_code == 204
    assert_error(await client.get("/me", headers=account.headers), 401, "invalid_token")
    assert (await client.get("/me", headers=stranger.headers)).status_code == 200


async def test_sessions_pagination(client: Client, account: Account) -> None:
    for _ in range(2):
        await login(client, account.username)
    first = await client.get("/sessions?limit=2", headers=account.headers)
    assert first.status_code == 200 and len(first.json()["items"]) == 2 and first.json()["next"]
    rest = await client.get(f"/sessions?limit=2&before={first.json()['next']}", headers=account.headers)
    assert [i["id"] for i in rest.json()["items"]] == [str(account.session_id)]
    assert rest.json()["next"] is None
    assert_error(await client.get("/sessions?limit=0", headers=account.headers), 422, "validation_error")


async def test_patch_me_changes_profile_fields_only(client: Client, account: Account, db: Stores) -> None:
    response = await client.patch(
        "/me",
        headers=account.headers,
        json={"bio": "Analytical engine", "birthdate": "1815-12-10", "sex": 2, "location": "London"},
    )
    assert_error(response, 422, "validation_error")  # 1815 is before 1900
    response = await client.patch(
        "/me",
        headers=account.headers,
        json={
            "bio": "Analytical engine",
            "birthdate": "1990-12-10",
            "sex": 2,
            "location": "London",
            "first_name": "  Augusta ",
        },
    )
    assert response.status_code == 200, response.text
    me = response.json()
    assert (me["bio"], me["birthdate"], me["sex"], me["location"], me["first_name"]) == (
        "Analytical engine",
        "1990-12-10",
        2,
        "London",
        "Augusta",
    )
    cleared = await client.patch("/me", headers=account.headers, json={"bio": None})
    assert cleared.json()["bio"] is None and cleared.json()["location"] == "London"
    for forbidden in ({"grade": 9}, {"email": "x@example.com"}, {"username": "newname"}, {"state": 1}):
        assert_error(await client.patch("/me", headers=account.headers, json=forbidden), 422, "validation_error")
    assert_error(await client.patch("/me", headers=account.headers, json={}), 422, "validation_error")
    async with db.pg.connection() as conn:
        row = await (await conn.execute("SELECT grade, bio FROM auth.users WHERE id = %s", (account.id,))).fetchone()
    assert row is not None and row["grade"] == 1 and row["bio"] is None
    # The cached copy (Redis tier) follows the write: GET /me answers the new values.
    assert (await client.get("/me", headers=account.headers)).json()["location"] == "London"


async def test_settings_put_and_get(client: Client, account: Account) -> None:
    wanted = {
        "privacy": {"posts": "followers", "messages": "friends"},
        "notifications": {"likes": False, "comments": True},
        "language": "fr-FR",
        "theme": 1,
    }
    response = await client.put("/me/settings", headers=account.headers, json=wanted)
    assert response.status_code == 200, response.text
    assert response.json() == wanted
    assert (await client.get("/me/settings", headers=account.headers)).json() == wanted
    partial = {"language": "de"}
    assert_error(await client.put("/me/settings", headers=account.headers, json=partial), 422, "validation_error")
    bad = {**wanted, "language": "not a language!"}
    assert_error(await client.put("/me/settings", headers=account.headers, json=bad), 422, "validation_error")
    too_many = {**wanted, "privacy": {f"k{i}": True for i in range(65)}}
    assert_error(await client.put("/me/settings", headers=account.headers, json=too_many), 422, "validation_error")


async def test_delete_me_deactivates(client: Client, account: Account, db: Stores) -> None:
    other_device = await login(client, account.username)
    assert (await client.delete("/me", headers=account.headers)).status_code == 204
    for token_holder in (account, other_device):
        assert_error(await client.get("/me", headers=token_holder.headers), 401, "invalid_token")
        assert_error(
            await client.post("/token/refresh", json={"refresh_token": token_holder.refresh_token}),
            401,
            "invalid_token",
        )
    refused = await client.post("/login", json={"username": account.username, "password": PASSWORD})
    wrong = await client.post("/login", json={"username": account.username, "password": "not-the-password"})
    assert refused.status_code == wrong.status_code == 401 and refused.json() == wrong.json()
    async with db.pg.connection() as conn:
        user = await (await conn.execute("SELECT state FROM auth.users WHERE id = %s", (account.id,))).fetchone()
        live = await (
            await conn.execute(
                "SELECT count(*) AS n FROM auth.sessions WHERE user_id = %s AND NOT revoked", (account.id,)
            )
        ).fetchone()
    assert user is not None and user["state"] == 0
    assert live is not None and live["n"] == 0


async def test_session_check_falls_back_to_postgres_and_remirrors(client: Client, account: Account, db: Stores) -> None:
    key = db.keys("session", account.session_id)
    assert await db.redis.get(key) is not None  # mirrored at login
    await db.redis.delete(key)
    assert (await client.get("/me", headers=account.headers)).status_code == 200
    mirrored = await db.redis.get(key)
    assert mirrored is not None and json.loads(mirrored)["uid"] == str(account.id)
    # Revoked in PostgreSQL only (another writer) and the mirror lost: PostgreSQL's answer wins.
    async with db.pg.connection() as conn:
        await conn.execute("UPDATE auth.sessions SET revoked = TRUE WHERE id = %s", (account.session_id,))
    await db.redis.delete(key)
    assert_error(await client.get("/me", headers=account.headers), 401, "invalid_token")
    assert json.loads(await db.redis.get(key) or "{}").get("revoked") is True  # marked for every instance


async def test_mark_revoked_beats_a_late_live_mirror(account: Account, db: Stores) -> None:
    await accounts.mark_revoked(db, [account.session_id])
    row = {"id": account.id, "username": account.username, "grade": 1}
    await mirrors.mirror_live(db, account.session_id, row, 600)  # a slow request re-mirroring afterwards
    with pytest.raises(Unauthorized):
        await accounts.authenticate_session(db, account.id, account.session_id)


async def test_an_active_sessions_mirror_is_checked_again_in_the_background_before_it_lapses(
    client: Client, account: Account, db: Stores
) -> None:
    """A mirror close to its end (< MIRROR_REFRESH_BELOW s) is re-checked against PostgreSQL off the request
    path: a live session gets a new lifetime, one revoked in PostgreSQL only (its marker lost) gets the
    marker, so the safety net holds without ever letting the mirror lapse under an active session."""
    key = db.keys("session", account.session_id)
    assert (await client.get("/me", headers=account.headers)).status_code == 200
    await db.redis.expire(key, 5)
    for _ in range(100):  # requests pay hits from leases, so only some of them read the mirror's TTL
        assert (await client.get("/me", headers=account.headers)).status_code == 200
        await asyncio.sleep(0.005)
        if await db.redis.pttl(key) > accounts.MIRROR_REFRESH_BELOW * 1000:
            break
    assert await db.redis.pttl(key) > accounts.MIRROR_REFRESH_BELOW * 1000
    assert json.loads(await db.redis.get(key) or "{}")["uid"] == str(account.id)

    async with db.pg.connection() as conn:  # revoked by a writer whose Redis marker never landed
        await conn.execute("UPDATE auth.sessions SET revoked = TRUE WHERE id = %s", (account.session_id,))
    await db.redis.expire(key, 5)
    statuses = []
    for _ in range(100):
        statuses.append((await client.get("/me", headers=account.headers)).status_code)
        if statuses[-1] == 401:
            break
        await asyncio.sleep(0.005)
    assert statuses[-1] == 401 and set(statuses[:-1]) <= {200}
    assert json.loads(await db.redis.get(key) or "{}").get("revoked") is True


async def test_session_of_another_user_is_refused(account: Account, client: Client, db: Stores) -> None:
    other = await new_account(client)
    with pytest.raises(Unauthorized):
        await accounts.authenticate_session(db, other.id, account.session_id)


@asynccontextmanager
async def auth_only_client(settings: Settings) -> AsyncIterator[Client]:
    """Only the auth routes and guard, over stores opened from `settings` (the full app's realtime hub
    refuses to start without Redis, so a Redis outage is exercised on this smaller app)."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.root = await open_root(settings)
        try:
            yield
        finally:
            await app.state.root.close()

    state = State({"root": None})
    app = Litestar(
        route_handlers=auth_routes.ROUTES,
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        state=state,
        dependencies=dependencies(state),
        on_app_init=[auth_routes.jwt_auth(settings).on_app_init],
    )
    async with AsyncTestClient(app) as client:
        yield client


async def test_everything_works_with_redis_down(db: Stores, settings: Settings) -> None:
    """Redis unreachable: signup and login (limiter fails open), the guard (PostgreSQL answers), /me and
    logout still work."""
    down = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with auth_only_client(down) as client:
        body = signup_body()
        assert (await client.post("/signup", json=body)).status_code == 201
        account = await login(client, body["username"])
        me = await client.get("/me", headers=account.headers)
        assert me.status_code == 200, me.text
        assert "x-ratelimit-limit" not in me.headers  # limiter unavailable: failed open
        assert (await client.post("/logout", headers=account.headers)).status_code == 204
        assert_error(await client.get("/me", headers=account.headers), 401, "invalid_token")
    # With Redis back, the session revoked during the outage is still refused (no stale live mirror).
    async with auth_client(settings) as client:
        assert_error(await client.get("/me", headers=account.headers), 401, "invalid_token")


async def test_refresh_rotation_works_with_redis_down(db: Stores, settings: Settings) -> None:
    down = dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with auth_only_client(down) as client:
        body = signup_body()
        assert (await client.post("/signup", json=body)).status_code == 201
        account = await login(client, body["username"])
        rotated = await client.post("/token/refresh", json={"refresh_token": account.refresh_token})
        assert rotated.status_code == 200, rotated.text
        assert_error(
            await client.post("/token/refresh", json={"refresh_token": account.refresh_token}),
            401,
            "refresh_token_reused",
        )
        assert_error(await client.get("/me", headers=account.headers), 401, "invalid_token")


async def test_keys_stay_under_the_prefix(account: Account, db: Stores, settings: Settings) -> None:
    keys = [key async for key in db.redis.scan_iter(match=Keys(settings.redis_prefix).pattern, count=1000)]
    assert any(k.startswith(f"{settings.redis_prefix}session:") for k in keys)
    assert any(k.startswith(f"{settings.redis_prefix}ratelimit:") for k in keys)
    assert uuid.UUID(str(account.session_id))
