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
- a post's `media_ids` must all be ready media owned by its author (422 otherwise), at most
  MAX_MEDIA_PER_POST; its view carries them with their URLs (`media`);
- `meta` holds the mentions (`@username`, resolved to existing users) and hashtags (`#tag`) of the content.

The modules: :mod:`~nubo.posts.parsing` (client input), :mod:`~nubo.posts.visibility`, the view counting of
:mod:`~nubo.posts.view_counts`,
:mod:`~nubo.posts.views` (the API shapes: Structs the routes return as they are; and counts),
:mod:`~nubo.posts.posts`, :mod:`~nubo.posts.comments`, :mod:`~nubo.posts.likes` and :mod:`~nubo.posts.media`
(the ids a post may carry; the files are :mod:`nubo.media`'s).
This package exports what other packages use.
"""

from __future__ import annotations

from nubo.posts.comments import add_comment, delete_comment, earlier_commenters, list_comments, visible_comment
from nubo.posts.likes import TARGET_COMMENT, TARGET_MESSAGE, TARGET_POST, check_target, like, list_likers, unlike
from nubo.posts.media import MAX_MEDIA_PER_POST, media_id_list
from nubo.posts.parsing import MAX_COMMENT_CHARS, MAX_CONTENT_CHARS, MAX_LOCATION_CHARS, parse_meta, parse_visibility
from nubo.posts.posts import create_post, delete_post, get_post, list_posts, update_post
from nubo.posts.view_counts import MAX_VIEW_BATCH, ViewFlusher, ViewsRecorded, flush_views, record_views, view_totals
from nubo.posts.views import (
    CommentView,
    LikeState,
    Mention,
    PostMeta,
    PostSummary,
    PostView,
    comment_view,
    decorate_posts,
    like_counts,
    post_summary,
    post_view,
)
from nubo.posts.visibility import PostContext, may_see, visible_post

__all__ = [
    "MAX_COMMENT_CHARS",
    "MAX_CONTENT_CHARS",
    "MAX_LOCATION_CHARS",
    "MAX_MEDIA_PER_POST",
    "MAX_VIEW_BATCH",
    "TARGET_COMMENT",
    "TARGET_MESSAGE",
    "TARGET_POST",
    "CommentView",
    "LikeState",
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
    "create_post",
    "decorate_posts",
    "delete_comment",
    "delete_post",
    "earlier_commenters",
    "flush_views",
    "get_post",
    "like",
    "like_counts",
    "list_comments",
    "list_likers",
    "list_posts",
    "may_see",
    "media_id_list",
    "parse_meta",
    "parse_visibility",
    "post_summary",
    "post_view",
    "record_views",
    "unlike",
    "update_post",
    "view_totals",
    "visible_comment",
    "visible_post",
]
