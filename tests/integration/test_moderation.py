"""Reports and moderation: `POST /reports`, `GET /admin/reports`, `POST /admin/reports/{id}/resolve`."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from nubo.ids import new_id
from nubo.model import Visibility
from nubo.server.app import create_app
from nubo.settings import RateLimit, Settings
from nubo.stores import Stores
from tests.helpers.social import (
    Client,
    Member,
    assert_error,
    hash_holds,
    mongo_doc,
    new_member,
    pg_all,
    pg_one,
    redis_hash,
    set_user_fields,
)

Trio = tuple[Member, Member, Member]


@pytest.fixture
async def trio(client: Client) -> tuple[Member, Member, Member]:
    return await new_member(client), await new_member(client), await new_member(client)


@pytest.fixture
async def moderator(client: Client, db: Stores, settings: Settings) -> Member:
    member = await new_member(client)
    await set_user_fields(db, member.id, grade=settings.moderator_grade)
    return member


async def make_post(db: Stores, author: uuid.UUID, visibility: int = Visibility.PUBLIC) -> uuid.UUID:
    """A post row through the tiered path (the posts routes belong to another module)."""
    async with db.transaction() as tx:
        row = await tx.insert(
            "posts", {"id": new_id(), "user_id": author, "content": "hello", "visibility": visibility}
        )
    post_id: uuid.UUID = row["id"]
    return post_id


async def report(client: Client, member: Member, target_type: str, target_id: uuid.UUID, reason: str = "spam") -> Any:
    return await client.post(
        "/reports",
        json={"target_type": target_type, "target_id": str(target_id), "reason": reason},
        headers=member.headers,
    )


async def test_report_a_user_once(client: Client, trio: Trio, db: Stores) -> None:
    alice, bob, _ = trio
    response = await report(client, alice, "user", bob.id, "  insults me  ")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["target_type"] == "user" and body["target_id"] == str(bob.id)
    assert body["state"] == "pending" and body["reason"] == "insults me"
    row = await pg_one(db, "SELECT * FROM moderation.reports WHERE id = %s", uuid.UUID(body["id"]))
    assert row is not None and row["actor_id"] == alice.id and row["target_type"] == 0
    assert_error(await report(client, alice, "user", bob.id), 409, "already_reported")


async def test_reports_on_what_the_reporter_cannot_see_are_404(client: Client, trio: Trio, db: Stores) -> None:
    alice, bob, carol = trio
    assert_error(await report(client, alice, "user", uuid.uuid4()), 404, "user_not_found")
    assert_error(await report(client, alice, "user", alice.id), 403, "cannot_report_self")
    assert_error(await report(client, alice, "post", uuid.uuid4()), 404, "post_not_found")
    assert_error(await report(client, alice, "comment", uuid.uuid4()), 404, "comment_not_found")
    assert_error(await report(client, alice, "message", uuid.uuid4()), 404, "message_not_found")

    private = await make_post(db, bob.id, Visibility.FOLLOWERS)
    assert_error(await report(client, alice, "post", private), 404, "post_not_found")
    assert (await client.post(f"/users/{bob.id}/follow", headers=alice.headers)).status_code == 200
    assert (await report(client, alice, "post", private)).status_code == 201

    # Carol blocks Alice: Alice can no longer see (so report) Carol or her posts;
    # Carol can still report Alice (block-and-report).
    public = await make_post(db, carol.id)
    assert (await client.post(f"/users/{alice.id}/block", headers=carol.headers)).status_code == 200
    assert_error(await report(client, alice, "user", carol.id), 404, "user_not_found")
    assert_error(await report(client, alice, "post", public), 404, "post_not_found")
    assert (await report(client, carol, "user", alice.id)).status_code == 201


async def test_admin_routes_are_for_moderators_only(client: Client, trio: Trio) -> None:
    alice, bob, _ = trio
    filed = (await report(client, alice, "user", bob.id)).json()
    assert_error(await client.get("/admin/reports", headers=alice.headers), 403, "forbidden")
    response = await client.post(
        f"/admin/reports/{filed['id']}/resolve", headers=alice.headers, json={"action": "dismiss", "resolution": "fine"}
    )
    assert_error(response, 403, "forbidden")
    assert_error(await client.get("/admin/reports"), 401)


async def test_moderator_lists_and_resolves_writing_the_trail(
    client: Client, trio: Trio, moderator: Member, db: Stores
) -> None:
    alice, bob, _ = trio
    filed = (await report(client, alice, "user", bob.id, "harassment")).json()
    listed = await client.get("/admin/reports", params={"state": "pending", "limit": "100"}, headers=moderator.headers)
    assert listed.status_code == 200, listed.text
    mine = [item for item in listed.json()["items"] if item["id"] == filed["id"]]
    assert mine and mine[0]["actor_id"] == str(alice.id) and mine[0]["resolution"] is None

    response = await client.post(
        f"/admin/reports/{filed['id']}/resolve",
        headers=moderator.headers,
        json={"action": "dismiss", "resolution": "not harassment"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "resolved" and body["resolved_by"] == str(moderator.id)
    assert body["resolution"] == "not harassment"

    report_id = uuid.UUID(filed["id"])
    actions = await pg_all(db, "SELECT * FROM moderation.admin_actions WHERE report_id = %s", report_id)
    assert len(actions) == 1 and actions[0]["admin_id"] == moderator.id and actions[0]["action"] == "dismiss"
    assert actions[0]["target_id"] == bob.id and actions[0]["target_type"] == 0
    audits = await pg_all(
        db, "SELECT * FROM moderation.audit_logs WHERE entity = 'report' AND entity_id = %s", report_id
    )
    assert len(audits) == 1 and audits[0]["actor_id"] == moderator.id
    assert audits[0]["action"] == "report.resolve"
    assert audits[0]["data"]["resolution"] == "not harassment"

    again = await client.post(
        f"/admin/reports/{filed['id']}/resolve",
        headers=moderator.headers,
        json={"action": "dismiss", "resolution": "twice"},
    )
    assert_error(again, 409, "already_resolved")
    actions = await pg_all(db, "SELECT id FROM moderation.admin_actions WHERE report_id = %s", report_id)
    assert len(actions) == 1
    resolved = await client.get(
        "/admin/reports", params={"state": "resolved", "limit": "100"}, headers=moderator.headers
    )
    assert filed["id"] in [item["id"] for item in resolved.json()["items"]]
    pending = await client.get("/admin/reports", params={"state": "pending", "limit": "100"}, headers=moderator.headers)
    assert filed["id"] not in [item["id"] for item in pending.json()["items"]]


async def test_ban_reaches_every_tier_and_hides_the_user(
    client: Client, trio: Trio, moderator: Member, db: Stores
) -> None:
    alice, bob, carol = trio
    post_id = await make_post(db, bob.id)
    filed = (await report(client, alice, "post", post_id, "scam")).json()
    response = await client.post(
        f"/admin/reports/{filed['id']}/resolve",
        headers=moderator.headers,
        json={"action": "ban_user", "resolution": "scammer"},
    )
    assert response.status_code == 200, response.text
    assert (await pg_one(db, "SELECT state FROM auth.users WHERE id = %s", bob.id)) == {"state": 2}
    doc = await mongo_doc(db, "users_recent", bob.id)
    assert doc is not None and doc["state"] == 2
    cached = await redis_hash(db, "users", bob.id)
    assert not cached or hash_holds(cached, 2)
    assert_error(await client.get(f"/users/{bob.id}", headers=carol.headers), 404, "user_not_found")
    action = await pg_one(
        db, "SELECT details FROM moderation.admin_actions WHERE report_id = %s", uuid.UUID(filed["id"])
    )
    assert action is not None and action["details"]["banned"] == str(bob.id)


async def test_remove_content_deletes_the_post(client: Client, trio: Trio, moderator: Member, db: Stores) -> None:
    alice, bob, _ = trio
    post_id = await make_post(db, bob.id)
    filed = (await report(client, alice, "post", post_id)).json()
    response = await client.post(
        f"/admin/reports/{filed['id']}/resolve",
        headers=moderator.headers,
        json={"action": "remove_content", "resolution": "spam removed"},
    )
    assert response.status_code == 200, response.text
    assert await pg_one(db, "SELECT id FROM content.posts WHERE id = %s", post_id) is None
    assert await mongo_doc(db, "posts_recent", post_id) is None
    assert await redis_hash(db, "posts", post_id) == {}


async def test_a_failed_action_leaves_no_trail_and_the_report_pending(
    client: Client, trio: Trio, moderator: Member, db: Stores
) -> None:
    """Report update, action and trail share one transaction: an action refused midway undoes them all."""
    alice, bob, _ = trio
    filed = (await report(client, alice, "user", bob.id)).json()
    response = await client.post(
        f"/admin/reports/{filed['id']}/resolve",
        headers=moderator.headers,
        json={"action": "remove_content", "resolution": "nothing to remove"},
    )
    assert_error(response, 422, "invalid_action")
    report_id = uuid.UUID(filed["id"])
    assert (await pg_one(db, "SELECT state FROM moderation.reports WHERE id = %s", report_id)) == {"state": 0}
    assert await pg_all(db, "SELECT id FROM moderation.admin_actions WHERE report_id = %s", report_id) == []
    assert await pg_all(db, "SELECT id FROM moderation.audit_logs WHERE entity_id = %s", report_id) == []


async def test_admin_reports_page_with_a_cursor(client: Client, moderator: Member) -> None:
    reporter = await new_member(client)
    targets = [await new_member(client) for _ in range(5)]
    filed = [(await report(client, reporter, "user", t.id)).json()["id"] for t in targets]
    seen: list[str] = []
    cursor: str | None = None
    while True:
        params = {"state": "pending", "limit": "2", **({"before": cursor} if cursor else {})}
        page = (await client.get("/admin/reports", params=params, headers=moderator.headers)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    ours = [report_id for report_id in seen if report_id in filed]
    assert ours == list(reversed(filed)) and len(seen) == len(set(seen))


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b"[]", 422),
        (b'{"target_type": "user", "target_id": "%s"}', 422),  # reason missing
        (b'{"target_type": "user", "target_id": "%s", "reason": "x", "extra": 1}', 422),
        (b'{"target_type": "planet", "target_id": "%s", "reason": "x"}', 422),
        (b'{"target_type": "user", "target_id": "nope", "reason": "x"}', 422),
        (b'{"target_type": "user", "target_id": "%s", "reason": ""}', 422),
        (b'{"target_type": "user", "target_id": "%s", "reason": "   "}', 422),
        (b'{"target_type": "user", "target_id": "%s", "reason": "' + b"x" * 1001 + b'"}', 422),
        (b'{"target_type": "user", "target_id": "%s", "reason": 5}', 422),
    ],
)
async def test_report_rejects_bad_bodies(client: Client, trio: Trio, body: bytes, status: int) -> None:
    alice, bob, _ = trio
    content = body.replace(b"%s", str(bob.id).encode())
    response = await client.post(
        "/reports", content=content, headers={**alice.headers, "Content-Type": "application/json"}
    )
    assert_error(response, status)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/reports/nope/resolve", {"action": "dismiss", "resolution": "x"}),
        ("/admin/reports/{id}/resolve", {"action": "explode", "resolution": "x"}),
        ("/admin/reports/{id}/resolve", {"action": "dismiss"}),
        ("/admin/reports/{id}/resolve", {"action": "dismiss", "resolution": "x" * 1001}),
        ("/admin/reports/{id}/resolve", {"action": "dismiss", "resolution": "x", "also": True}),
    ],
)
async def test_resolve_rejects_bad_input(client: Client, moderator: Member, path: str, body: dict[str, Any]) -> None:
    response = await client.post(path.format(id=uuid.uuid4()), json=body, headers=moderator.headers)
    assert_error(response, 422)


async def test_resolve_unknown_report_is_404(client: Client, moderator: Member) -> None:
    response = await client.post(
        f"/admin/reports/{uuid.uuid4()}/resolve",
        headers=moderator.headers,
        json={"action": "dismiss", "resolution": "x"},
    )
    assert_error(response, 404, "report_not_found")


@pytest.mark.parametrize("query", ["state=open", "limit=0", "limit=500", "before=x"])
async def test_admin_list_rejects_bad_queries(client: Client, moderator: Member, query: str) -> None:
    assert_error(await client.get(f"/admin/reports?{query}", headers=moderator.headers), 422)


async def test_demoted_moderator_loses_access_at_once(client: Client, moderator: Member, db: Stores) -> None:
    assert (await client.get("/admin/reports", headers=moderator.headers)).status_code == 200
    await set_user_fields(db, moderator.id, grade=1)
    assert_error(await client.get("/admin/reports", headers=moderator.headers), 403, "forbidden")


async def test_the_report_limit_is_a_setting(db: Stores, settings: Settings) -> None:
    """NUBO_RATE_REPORTS (it was 30 an hour, hard-coded)."""
    limited = dataclasses.replace(settings, rate_reports=RateLimit(2, 3600))
    async with AsyncTestClient(create_app(limited)) as small:
        reporter, author = await new_member(small), await new_member(small)
        posts = [await make_post(db, author.id) for _ in range(3)]
        for post_id in posts[:2]:
            assert (await report(small, reporter, "post", post_id)).status_code == 201
        assert_error(await report(small, reporter, "post", posts[2]), 429, "rate_limited")
