"""Routes for users and their relations: profiles, search, follows, blocks and relationships.

Handlers are thin: parse, call `nubo.accounts.users` / `nubo.social`, return their shapes (defined once in
:mod:`nubo.accounts.views` and :mod:`nubo.social`). Every route needs an authenticated caller; users hidden
from the caller (deactivated, banned, blocked either way) are 404.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from litestar import Request, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, Parameter
from msgspec import Meta

from nubo import notifications, social
from nubo.accounts import users
from nubo.accounts.views import Profile
from nubo.accounts.views import PublicUser as PublicUser  # also imported from here by nubo.server.posts
from nubo.errors import Unauthorized
from nubo.ids import parse_id
from nubo.pagination import MAX_LIMIT, Page
from nubo.server.contract import NO_NUL, errors
from nubo.stores import Stores

AnyRequest = Request[Any, Any, Any]
StoresDep = NamedDependency[Stores]
# Path ids are parsed by `parse_id` (422 naming the field) rather than the router (a bare 404).
UserIdPath = FromPath[Annotated[str, Parameter(description="A user id (UUID)", schema_extra={"format": "uuid"})]]
Limit = FromQuery[Annotated[int, Parameter(ge=1, le=MAX_LIMIT, description="Page size (default 20)")]]
UUID_TEXT = "[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
UUID_LIST = f"^{UUID_TEXT}(,{UUID_TEXT}){{0,{social.MAX_RELATIONSHIP_IDS - 1}}}$"
"""One or more comma-separated UUIDs (a value of `?ids=`)."""
Before = FromQuery[Annotated[uuid.UUID | None, Parameter(description="Cursor: the `next` of the previous page")]]


def caller_id(request: AnyRequest) -> uuid.UUID:
    """The authenticated caller's id (set by the auth layer as `request.user`), else 401."""
    user = request.scope.get("user")
    user_id = getattr(user, "id", None)
    if not isinstance(user_id, uuid.UUID):
        raise Unauthorized("Authentication required", code="missing_token")
    return user_id


@get("/users/{user_id:str}", summary="A user's public profile", tags=["users"])
async def get_user(request: AnyRequest, stores: StoresDep, user_id: UserIdPath) -> Profile:
    return await users.get_profile(stores, caller_id(request), parse_id(user_id, "user_id"))


@get("/users", summary="Search users by username or name prefix", tags=["users"])
async def search_users(
    request: AnyRequest,
    stores: StoresDep,
    q: FromQuery[
        Annotated[
            str,
            Parameter(
                min_length=1,
                max_length=users.MAX_QUERY_LENGTH,
                pattern=NO_NUL,
                description="Prefix of username, first or last name",
            ),
        ]
    ],
    limit: Limit = 20,
    before: Before = None,
) -> Page[PublicUser]:
    return await users.search(stores, caller_id(request), q, limit=limit, before=before)


@post(
    "/users/{user_id:str}/follow",
    summary="Follow a user (idempotent)",
    tags=["relations"],
    status_code=200,
    responses=errors(403),
)
async def follow_user(request: AnyRequest, stores: StoresDep, user_id: UserIdPath) -> social.Relationship:
    viewer, target = caller_id(request), parse_id(user_id, "user_id")
    await social.follow(
        stores,
        viewer,
        target,
        on_created=lambda: notifications.notify(stores, target, "follow", actor_id=viewer, group="follow"),
    )
    return await social.relationship(stores, viewer, target)


@delete(
    "/users/{user_id:str}/follow",
    summary="Unfollow a user (idempotent)",
    tags=["relations"],
    status_code=200,
    responses=errors(403),
)
async def unfollow_user(request: AnyRequest, stores: StoresDep, user_id: UserIdPath) -> social.Relationship:
    viewer, target = caller_id(request), parse_id(user_id, "user_id")
    await social.unfollow(stores, viewer, target)
    return await social.relationship(stores, viewer, target)


async def _follow_list(
    request: AnyRequest, stores: Stores, user_id: str, direction: str, limit: int, before: uuid.UUID | None
) -> Page[PublicUser]:
    return await users.follow_list(
        stores, caller_id(request), parse_id(user_id, "user_id"), direction=direction, limit=limit, before=before
    )


@get("/users/{user_id:str}/followers", summary="Who follows a user, newest first", tags=["relations"])
async def list_followers(
    request: AnyRequest, stores: StoresDep, user_id: UserIdPath, limit: Limit = 20, before: Before = None
) -> Page[PublicUser]:
    return await _follow_list(request, stores, user_id, "followers", limit, before)


@get("/users/{user_id:str}/following", summary="Whom a user follows, newest first", tags=["relations"])
async def list_following(
    request: AnyRequest, stores: StoresDep, user_id: UserIdPath, limit: Limit = 20, before: Before = None
) -> Page[PublicUser]:
    return await _follow_list(request, stores, user_id, "following", limit, before)


@post(
    "/users/{user_id:str}/block",
    summary="Block a user (removes follows both ways)",
    tags=["relations"],
    status_code=200,
    responses=errors(403),
)
async def block_user(request: AnyRequest, stores: StoresDep, user_id: UserIdPath) -> social.Relationship:
    viewer, target = caller_id(request), parse_id(user_id, "user_id")
    await social.block(stores, viewer, target)
    return await social.relationship(stores, viewer, target)


@delete(
    "/users/{user_id:str}/block",
    summary="Unblock a user (idempotent)",
    tags=["relations"],
    status_code=200,
    responses=errors(403),
)
async def unblock_user(request: AnyRequest, stores: StoresDep, user_id: UserIdPath) -> social.Relationship:
    viewer, target = caller_id(request), parse_id(user_id, "user_id")
    await social.unblock(stores, viewer, target)
    return await social.relationship(stores, viewer, target)


@get("/relationships", summary="The caller's relationship with each user", tags=["relations"])
async def get_relationships(
    request: AnyRequest,
    stores: StoresDep,
    ids: FromQuery[
        Annotated[
            list[Annotated[str, Meta(pattern=UUID_LIST)]],
            Parameter(
                schema_extra={"items": {"type": "string", "pattern": UUID_LIST}},
                description=(
                    f"User ids, at most {social.MAX_RELATIONSHIP_IDS} in all: repeated (`?ids=A&ids=B`), "
                    "comma-separated (`?ids=A,B`) or both"
                ),
                min_items=1,
                max_items=social.MAX_RELATIONSHIP_IDS,
            ),
        ]
    ],
) -> Page[social.Relationship]:
    """Unknown users, users hidden by their state and users who block the caller are left out; a user the caller
    blocks shows `blocking`."""
    found = await social.relationships(stores, caller_id(request), social.parse_id_list(",".join(ids)))
    return Page(items=found, next=None)


ROUTES = [
    get_user,
    search_users,
    follow_user,
    unfollow_user,
    list_followers,
    list_following,
    block_user,
    unblock_user,
    get_relationships,
]
