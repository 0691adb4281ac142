"""Posts, comments, likes and media: the content of nubo, read and written through the tiered store.

Every row goes through `stores.tiered` (PostgreSQL, then Mongo `*_recent`, then Redis). Visibility is decided
after the tier read, from PostgreSQL's current relations (blocks, follows, user state), never from a cached
decision (:mod:`nubo.posts.visibility`).

Rules:
- a post is visible to its author, and to anyone else when the author is active, neither blocks the other,
  and the post is public or the viewer follows the author; invisible posts are 404, never 403;
- only the author edits or deletes a post (403 for others who can see it);
- a comment is deleted by its author or by the post's author;
- likes are idempotent (one row per target and user, `UNIQUE` in PostgreSQL); counts are count queries on
  PostgreSQL, so they are exact under concurrency (no counter to drift);
- a post's `media_ids` must all be media owned by its author (422 otherwise);
- `meta` holds the mentions (`@username`, resolved to existing users) and hashtags (`#tag`) of the content.

The modules: :mod:`~nubo.posts.parsing` (client input), :mod:`~nubo.posts.visibility`, the view counting of
:mod:`~nubo.posts.view_counts`,
:mod:`~nubo.posts.views` (the API shapes: Structs the routes return as they are; and counts),
:mod:`~nubo.posts.posts`, :mod:`~nubo.posts.comments`, :mod:`~nubo.posts.likes` and :mod:`~nubo.posts.media`.
This package exports what other packages use.
"""

from __future__ import annotations

from nubo.posts.comments import add_comment, delete_comment, list_comments, visible_comment
from nubo.posts.likes import TARGET_COMMENT, TARGET_MESSAGE, TARGET_POST, check_target, like, list_likers, unlike
from nubo.posts.media import (
    MAX_MEDIA_BYTES,
    MAX_MEDIA_PER_POST,
    MAX_MEDIA_PIXELS_SIDE,
    MAX_STORAGE_PATH_CHARS,
    create_media,
    get_media,
    validate_media,
)
from nubo.posts.parsing import MAX_COMMENT_CHARS, MAX_CONTENT_CHARS, MAX_LOCATION_CHARS, parse_meta, parse_visibility
from nubo.posts.posts import create_post, delete_post, get_post, list_posts, update_post
from nubo.posts.view_counts import MAX_VIEW_BATCH, ViewFlusher, ViewsRecorded, flush_views, record_views, view_totals
from nubo.posts.views import (
    CommentView,
    LikeState,
    MediaView,
    Mention,
    PostMeta,
    PostSummary,
    PostView,
    comment_view,
    decorate_posts,
    like_counts,
    media_view,
    post_summary,
    post_view,
)
from nubo.posts.visibility import PostContext, may_see, visible_post

__all__ = [
    "MAX_COMMENT_CHARS",
    "MAX_CONTENT_CHARS",
    "MAX_LOCATION_CHARS",
    "MAX_MEDIA_BYTES",
    "MAX_MEDIA_PER_POST",
    "MAX_MEDIA_PIXELS_SIDE",
    "MAX_STORAGE_PATH_CHARS",
    "MAX_VIEW_BATCH",
    "TARGET_COMMENT",
    "TARGET_MESSAGE",
    "TARGET_POST",
    "CommentView",
    "LikeState",
    "MediaView",
    "Mention",
    "PostContext",
    "PostMeta",
    "PostSummary",
    "PostView",
    "ViewFlusher",
    "ViewsRecorded",
    "add_comment",
    "check_target",
    "comment_view",
    "create_media",
    "create_post",
    "decorate_posts",
    "delete_comment",
    "delete_post",
    "flush_views",
    "get_media",
    "get_post",
    "like",
    "like_counts",
    "list_comments",
    "list_likers",
    "list_posts",
    "may_see",
    "media_view",
    "parse_meta",
    "parse_visibility",
    "post_summary",
    "post_view",
    "record_views",
    "unlike",
    "update_post",
    "validate_media",
    "view_totals",
    "visible_comment",
    "visible_post",
]
