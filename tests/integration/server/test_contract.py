"""The published contract (docs/api.md): the OpenAPI document says what the server does, errors have one shape,
timestamps one format, and each contract finding of issue 14 stays fixed (real stores, in-process app)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from nubo.settings import Settings
from nubo.stores import Stores
from nubo.stores import notifications as notification_store
from nubo.stores.entities import from_document, to_document
from tests.helpers.social import Client, Member, assert_error, new_member, pg_one, set_user_fields

RFC3339_MICROS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
ERROR_REF = "#/components/schemas/ErrorBody"


@pytest.fixture(scope="module")
async def openapi(client: Client) -> dict[str, Any]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


@pytest.fixture
async def member(client: Client) -> Member:
    return await new_member(client)


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in {"get", "post", "put", "patch", "delete"}
    ]


# ---- the OpenAPI document ----------------------------------------------------------------------------------


def test_every_error_status_is_documented_with_the_error_shape(openapi: dict[str, Any]) -> None:
    for path, method, operation in _operations(openapi):
        errors = {int(s): r for s, r in operation["responses"].items() if int(s) >= 400}
        public = operation.get("security") == [{}] or path in ("/ping", "/healthz", "/readyz")
        assert public or {401, 429} <= set(errors), (method, path)
        if "requestBody" in operation:
            assert {400, 413, 422} <= set(errors), (method, path)
        for status, response in errors.items():
            if path == "/readyz" and status == 503:
                continue  # its own shape: the error plus each store's state
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": ERROR_REF}, (method, path, status)
            assert response["content"]["application/json"]["examples"], (method, path, status)
    error_body = openapi["components"]["schemas"]["ErrorBody"]
    assert set(error_body["required"]) == {"error", "code"} and "fields" in error_body["properties"]


def test_request_bodies_carry_every_constraint_the_server_enforces(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    for name in ("SendMessageIn", "CreateConversationIn", "NewUpload", "LoginBody", "PostChanges", "NewPost"):
        assert schemas[name]["additionalProperties"] is False, name  # unknown fields are refused
    message = schemas["SendMessageIn"]["properties"]
    assert message["content"]["maxLength"] == 4000
    assert message["client_id"]["anyOf"][0]["maxLength"] == 64
    conversation = schemas["CreateConversationIn"]["properties"]
    assert conversation["type"]["enum"] == ["direct", "group"]
    assert conversation["user_ids"]["minItems"] == 1
    image, video = (branch["properties"]["content_type"]["pattern"] for branch in schemas["NewUpload"]["anyOf"])
    assert re.search(image, "image/jpeg") and re.search(image, "Image/JPEG") and not re.search(image, "video/mp4")
    assert re.search(video, "video/mp4") and not re.search(video, "image/jpeg")
    assert [branch["required"] for branch in schemas["LoginBody"]["anyOf"]] == [["username"], ["email"]]
    assert schemas["PostChanges"]["minProperties"] == 1 and schemas["ProfilePatch"]["minProperties"] == 1
    parameters = {p["name"]: p for p in openapi["paths"]["/posts"]["get"]["parameters"]}
    assert parameters["before"]["schema"]["oneOf"][0]["format"] == "uuid"


def test_idempotent_creations_document_their_200(openapi: dict[str, Any]) -> None:
    for path in ("/conversations", "/conversations/{conversation_id}/messages"):
        responses = openapi["paths"][path]["post"]["responses"]
        assert {"200", "201"} <= set(responses), path
        assert (
            responses["200"]["content"]["application/json"]["schema"]
            == responses["201"]["content"]["application/json"]["schema"]
        )


def test_a_field_has_one_representation_in_requests_and_responses(openapi: dict[str, Any]) -> None:
    schemas = openapi["components"]["schemas"]
    assert set(schemas["NewPost"]["properties"]["visibility"]["enum"]) == {"public", "followers"}
    assert set(schemas["PostView"]["properties"]["visibility"]["enum"]) == {"public", "followers"}
    assert {"direct", "group"} <= set(schemas["ConversationView"]["properties"]["type"]["enum"])
    assert set(schemas["CreateConversationIn"]["properties"]["type"]["enum"]) == {"direct", "group"}
    assert schemas["PostView"]["properties"]["created_at"]["format"] == "date-time"


async def test_every_path_answers_options_with_all_its_methods(client: Client, openapi: dict[str, Any]) -> None:
    for path, item in openapi["paths"].items():
        concrete = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)
        response = await client.options(concrete)
        assert response.status_code == 204, path
        documented = {m.upper() for m in item if m in {"get", "post", "put", "patch", "delete"}}
        assert set(response.headers["allow"].split(", ")) == documented | {"OPTIONS"}, path


async def test_the_asyncapi_document_is_served(client: Client) -> None:
    response = await client.get("/schema/asyncapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["asyncapi"].startswith("3.")
    messages = document["components"]["messages"]
    assert {"hello", "ack", "error", "message_new", "notification", "client_message_send", "lobby"} <= set(messages)
    assert "?token=" in document["info"]["description"]
    new = document["components"]["schemas"]["MessageNewFrame_MessageView_"]
    assert new["required"][0] == "event_id" and "message" in new["properties"]


# ---- the findings ------------------------------------------------------------------------------------------


async def test_login_without_a_body_names_the_body(client: Client) -> None:
    body = assert_error(await client.post("/login"), 422, "validation_error")
    assert body["fields"] == {"body": "required: a JSON object"}


async def test_notifications_read_needs_a_body(client: Client, member: Member) -> None:
    body = assert_error(await client.post("/notifications/read", headers=member.headers), 422, "validation_error")
    assert set(body["fields"]) == {"body"}
    response = await client.post("/notifications/read", json={}, headers=member.headers)
    assert response.status_code == 200 and response.json() == {"updated": 0}


async def test_a_validation_error_lists_every_bad_field(client: Client, member: Member) -> None:
    bad = {"content": "x" * 4001, "client_id": "c" * 65, "extra": 1}
    other = await new_member(client)
    conversation = await client.post(
        "/conversations", json={"type": "group", "user_ids": [str(other.id)], "title": "t"}, headers=member.headers
    )
    assert conversation.status_code == 201, conversation.text
    path = f"/conversations/{conversation.json()['id']}/messages"
    body = assert_error(await client.post(path, json=bad, headers=member.headers), 422, "validation_error")
    assert set(body["fields"]) == {"content", "client_id", "extra"}
    body = assert_error(await client.post("/login", json={"password": 1, "username": 2}), 422)
    assert set(body["fields"]) == {"password", "username"}


async def test_the_state_query_error_names_state(client: Client, db: Stores, settings: Settings) -> None:
    moderator = await new_member(client)
    await set_user_fields(db, moderator.id, grade=settings.moderator_grade)
    response = await client.get("/admin/reports", params={"state": "nope"}, headers=moderator.headers)
    assert set(assert_error(response, 422, "validation_error")["fields"]) == {"state"}


async def test_repeated_ids_are_all_used(client: Client, member: Member) -> None:
    first, second = await new_member(client), await new_member(client)
    response = await client.get(f"/relationships?ids={first.id}&ids={second.id}", headers=member.headers)
    assert response.status_code == 200, response.text
    assert {item["id"] for item in response.json()["items"]} == {str(first.id), str(second.id)}
    both = await client.get(f"/relationships?ids={first.id},{second.id}", headers=member.headers)
    assert {item["id"] for item in both.json()["items"]} == {str(first.id), str(second.id)}


async def test_an_empty_post_patch_is_refused_and_changes_nothing(client: Client, member: Member) -> None:
    created = await client.post("/posts", json={"content": "hi", "visibility": "followers"}, headers=member.headers)
    assert created.status_code == 201 and created.json()["visibility"] == "followers"
    post = created.json()
    response = await client.patch(f"/posts/{post['id']}", json={}, headers=member.headers)
    assert set(assert_error(response, 422, "validation_error")["fields"]) == {"body"}
    again = await client.get(f"/posts/{post['id']}", headers=member.headers)
    assert again.json()["updated_at"] == post["updated_at"]
    assert again.json()["visibility"] == "followers"


# ---- one timestamp format ----------------------------------------------------------------------------------


async def test_a_row_has_one_timestamp_whichever_tier_answers(client: Client, member: Member, db: Stores) -> None:
    created = (await client.post("/posts", json={"content": "tiers"}, headers=member.headers)).json()
    assert RFC3339_MICROS.match(created["created_at"]), created["created_at"]
    seen = {created["created_at"]}
    for _ in range(2):  # PostgreSQL or a fresh copy, then Redis
        seen.add((await client.get(f"/posts/{created['id']}", headers=member.headers)).json()["created_at"])
    await db.redis.delete(db.keys("cache", "posts", created["id"]))  # next read: the Mongo copy
    seen.add((await client.get(f"/posts/{created['id']}", headers=member.headers)).json()["created_at"])
    listed = (await client.get("/posts", params={"user": str(member.id)}, headers=member.headers)).json()
    seen.add(listed["items"][0]["created_at"])
    truth = await pg_one(db, "SELECT created_at FROM content.posts WHERE id = %s", uuid.UUID(created["id"]))
    assert truth is not None
    assert seen == {msgspec.json.encode(truth["created_at"]).decode().strip('"')}  # PostgreSQL's microseconds


async def test_mongo_copies_keep_microseconds(db: Stores) -> None:
    at = datetime(2026, 12, 2, 1, 2, 3, 495439, tzinfo=UTC)
    row = {"id": uuid.uuid4(), "created_at": at, "updated_at": at.replace(microsecond=495000)}
    collection = db.mongo["contract_micros"]
    await collection.insert_one(to_document(row, datetime.now(UTC)))
    found = from_document(await collection.find_one({"_id": row["id"]}) or {})
    assert (found["created_at"], found["updated_at"]) == (row["created_at"], row["updated_at"])
    user = uuid.uuid4()
    doc = {"_id": uuid.uuid4(), "user_id": user, "kind": "follow", "read": False, "created_at": at}
    assert await notification_store.insert(db, doc)
    (stored,) = await notification_store.newest(db, user, before=None, limit=5)
    assert stored["created_at"] == at
