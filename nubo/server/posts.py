"""Routes for posts, comments and likes (media: :mod:`nubo.server.media`). Thin: parse, call
:mod:`nubo.posts`, return its shapes.

Every route needs an authenticated caller. Content the caller may not see is 404 (never 403); changing
someone else's post or comment is 403. Likes on messages live with the messaging routes
(`/messages/{id}/like`); the like logic for posts and comments is here. The response shapes are the domain's
Structs (:mod:`nubo.posts.views`); only the request bodies are defined here.
"""

from __future__ import annotations

import uuid
from typing import Annotated, ClassVar, Literal

import msgspec
from litestar import delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody, Parameter, QueryParameter
from msgspec import UNSET, UnsetType

from nubo import notifications, posts
from nubo.ids import parse_id
from nubo.pagination import Page
from nubo.posts import CommentView, LikeState, PostView, ViewsRecorded
from nubo.server.contract import NO_NUL, NOT_BLANK, errors
from nubo.server.users import AnyRequest, Before, Limit, PublicUser, StoresDep, caller_id

Visibility = Literal["public", "followers"]
Content = Annotated[str, msgspec.Meta(max_length=posts.MAX_CONTENT_CHARS, pattern=NO_NUL, examples=["Hello #nubo"])]
CommentText = Annotated[str, msgspec.Meta(min_length=1, max_length=posts.MAX_COMMENT_CHARS, pattern=NOT_BLANK)]
Location = Annotated[str, msgspec.Meta(max_length=posts.MAX_LOCATION_CHARS, pattern=NO_NUL)]
# A relative path whose segments are never `..`, without control characters (nubo.posts.media.validate_media).
_SEGMENT = r"(|\.|[^/.\x00-\x1f][^/\x00-\x1f]*|\.[^/.\x00-\x1f][^/\x00-\x1f]*|\.\.[^/\x00-\x1f]+)"
STORAGE_PATH = f"^{_SEGMENT}(/{_SEGMENT})*$"
MediaIds = Annotated[list[uuid.UUID], msgspec.Meta(max_length=posts.MAX_MEDIA_PER_POST)]


# Path ids are parsed by `parse_id` (a 422 naming the field) rather than by the router (a bare 404).
PostIdPath = FromPath[Annotated[str, Parameter(description="A post id (UUID)", schema_extra={"format": "uuid"})]]
CommentIdPath = FromPath[Annotated[str, Parameter(description="A comment id (UUID)", schema_extra={"format": "uuid"})]]
UserQuery = FromQuery[Annotated[uuid.UUID | None, QueryParameter(description="Only this user's posts (a user id)")]]


class NewPost(msgspec.Struct, forbid_unknown_fields=True):
    """A post: content and/or media (media the caller uploaded), public or for followers only."""

    json_schema_extra: ClassVar[dict[str, object]] = {
        "anyOf": [
            {"required": ["content"], "properties": {"content": {"type": "string", "pattern": NOT_BLANK}}},
            {"required": ["media_ids"], "properties": {"media_ids": {"minItems": 1}}},
        ],
        "examples": [{"content": "Hello #nubo", "visibility": "public"}],
    }

    content: Content | None = None
    media_ids: MediaIds = msgspec.field(default_factory=list)
    visibility: Visibility = "public"
    location: Location | None = None


class PostChanges(msgspec.Struct, forbid_unknown_fields=True):
    """The fields to change on one's own post (at least one); absent fields are kept."""

    json_schema_extra: ClassVar[dict[str, object]] = {"minProperties": 1}

    content: Content | UnsetType | None = UNSET
    media_ids: MediaIds | UnsetType = UNSET
    visibility: Visibility | UnsetType = UNSET
    location: Location | UnsetType | None = UNSET


class NewComment(msgspec.Struct, forbid_unknown_fields=True):
    """A comment on a post the caller can see."""

    content: CommentText


# ---- posts -------------------------------------------------------------------------------------------------


@post("/posts", summary="Create a post", tags=["posts"], status_code=201)
async def create_post(request: AnyRequest, stores: StoresDep, data: JSONBody[NewPost]) -> PostView:
    return await posts.create_post(
        stores,
        caller_id(request),
        content=data.content,
        media_ids=data.media_ids,
        visibility=data.visibility,
        location=data.location,
        on_created=lambda row: notifications.post_created(stores, row),
    )


@get(
    "/posts",
    summary="Posts the caller may see, newest first (optionally one user's)",
    tags=["posts"],
    responses=errors(404),
)
async def list_posts(
    request: AnyRequest,
    stores: StoresDep,
    user: UserQuery = None,
    limit: Limit = 20,
    before: Before = None,
) -> Page[PostView]:
    return await posts.list_posts(stores, caller_id(request), user=user, limit=limit, before=before)


@get("/posts/{post_id:str}", summary="One post", tags=["posts"])
async def get_post(request: AnyRequest, stores: StoresDep, post_id: PostIdPath) -> PostView:
    return await posts.get_post(stores, caller_id(request), parse_id(post_id, "post_id"))


@patch("/posts/{post_id:str}", summary="Edit one's own post", tags=["posts"], responses=errors(403, 409))
async def patch_post(
    request: AnyRequest, stores: StoresDep, post_id: PostIdPath, data: JSONBody[PostChanges]
) -> PostView:
    changes = {name: getattr(data, name) for name in data.__struct_fields__ if getattr(data, name) is not UNSET}
    return await posts.update_post(stores, caller_id(request), parse_id(post_id, "post_id"), changes)


@delete(
    "/posts/{post_id:str}",
    summary="Delete one's own post (with its comments and likes)",
    tags=["posts"],
    status_code=204,
    responses=errors(403),
)
async def delete_post(request: AnyRequest, stores: StoresDep, post_id: PostIdPath) -> None:
    await posts.delete_post(stores, caller_id(request), parse_id(post_id, "post_id"))


# ---- comments ----------------------------------------------------------------------------------------------


@get("/posts/{post_id:str}/comments", summary="Comments of a post, newest first", tags=["comments"])
async def list_comments(
    request: AnyRequest, stores: StoresDep, post_id: PostIdPath, limit: Limit = 20, before: Before = None
) -> Page[CommentView]:
    return await posts.list_comments(
        stores, caller_id(request), parse_id(post_id, "post_id"), limit=limit, before=before
    )


@post("/posts/{post_id:str}/comments", summary="Comment on a post", tags=["comments"], status_code=201)
async def add_comment(
    request: AnyRequest, stores: StoresDep, post_id: PostIdPath, data: JSONBody[NewComment]
) -> CommentView:
    return await posts.add_comment(
        stores,
        caller_id(request),
        parse_id(post_id, "post_id"),
        data.content,
        on_created=lambda row: notifications.comment_created(stores, row),
    )


@delete(
    "/comments/{comment_id:str}",
    summary="Delete a comment (its author or the post's author)",
    tags=["comments"],
    status_code=204,
    responses=errors(403),
)
async def delete_comment(request: AnyRequest, stores: StoresDep, comment_id: CommentIdPath) -> None:
    await posts.delete_comment(stores, caller_id(request), parse_id(comment_id, "comment_id"))


# ---- likes -------------------------------------------------------------------------------------------------


@post("/posts/{post_id:str}/like", summary="Like a post (idempotent)", tags=["likes"], status_code=200)
async def like_post(request: AnyRequest, stores: StoresDep, post_id: PostIdPath) -> LikeState:
    return await posts.like(
        stores,
        caller_id(request),
        posts.TARGET_POST,
        parse_id(post_id, "post_id"),
        on_created=lambda row: notifications.like_created(stores, row),
    )


@delete("/posts/{post_id:str}/like", summary="Unlike a post (idempotent)", tags=["likes"], status_code=200)
async def unlike_post(request: AnyRequest, stores: StoresDep, post_id: PostIdPath) -> LikeState:
    return await posts.unlike(stores, caller_id(request), posts.TARGET_POST, parse_id(post_id, "post_id"))


@post("/comments/{comment_id:str}/like", summary="Like a comment (idempotent)", tags=["likes"], status_code=200)
async def like_comment(request: AnyRequest, stores: StoresDep, comment_id: CommentIdPath) -> LikeState:
    return await posts.like(
        stores,
        caller_id(request),
        posts.TARGET_COMMENT,
        parse_id(comment_id, "comment_id"),
        on_created=lambda row: notifications.like_created(stores, row),
    )


@delete(
    "/comments/{comment_id:str}/like",
    summary="Unlike a comment (idempotent)",
    tags=["likes"],
    status_code=200,
)
async def unlike_comment(request: AnyRequest, stores: StoresDep, comment_id: CommentIdPath) -> LikeState:
    return await posts.unlike(stores, caller_id(request), posts.TARGET_COMMENT, parse_id(comment_id, "comment_id"))


@get("/posts/{post_id:str}/likes", summary="Who liked a post, most recent like first", tags=["likes"])
async def list_likes(
    request: AnyRequest, stores: StoresDep, post_id: PostIdPath, limit: Limit = 20, before: Before = None
) -> Page[PublicUser]:
    """The cursor (`next`, `before`) is a like id, not a user id."""
    page = await posts.list_likers(stores, caller_id(request), parse_id(post_id, "post_id"), limit=limit, before=before)
    return Page(items=[PublicUser.from_row(row) for row in page.items], next=page.next)


# ---- views -------------------------------------------------------------------------------------------------


class ViewReport(msgspec.Struct, forbid_unknown_fields=True):
    """The posts a client showed to the caller (at most MAX_VIEW_BATCH ids; repeats count once)."""

    post_ids: Annotated[list[uuid.UUID], msgspec.Meta(max_length=posts.MAX_VIEW_BATCH)]


@post(
    "/views/batch",
    summary="Report the posts shown to the caller (counted once per user, post and day)",
    tags=["posts"],
    status_code=200,
)
async def report_views(request: AnyRequest, stores: StoresDep, data: JSONBody[ViewReport]) -> ViewsRecorded:
    """Unknown posts, posts the caller may not see and the caller's own are not counted: they are listed in
    `ignored`. Counts reach `view_count` within NUBO_VIEW_FLUSH seconds."""
    return await posts.record_views(stores, caller_id(request), data.post_ids)


ROUTES = [
    create_post,
    list_posts,
    get_post,
    patch_post,
    delete_post,
    list_comments,
    add_comment,
    delete_comment,
    like_post,
    unlike_post,
    like_comment,
    unlike_comment,
    list_likes,
    report_views,
]
