"""A generated community in the `nubo db import` format (JSON Lines, one file per kind), for the import tests
and the import benchmark. Deterministic for a seed; ids are UUIDv7 at each row's `created_at`, spread over the
last `days` days (so some rows are inside the 30-day window and some are not)."""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path


@dataclass(frozen=True)
class CommunitySize:
    users: int
    follows: int
    posts: int
    comments: int
    likes: int

    @property
    def rows(self) -> int:
        return self.users + self.follows + self.posts + self.comments + self.likes


ISSUE_SIZE = CommunitySize(users=10_000, follows=200_000, posts=100_000, comments=20_000, likes=50_000)


def _id_at(rng: random.Random, when: datetime) -> uuid.UUID:
    millis = int(when.timestamp() * 1000)
    return uuid.UUID(
        int=(millis << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62) | rng.getrandbits(62)
    )


def write_community(directory: Path, size: CommunitySize, *, seed: int = 17, days: int = 90) -> dict[str, Path]:
    """Write users/follows/posts/comments/likes.jsonl into `directory`; returns `{kind: path}`. Every row is
    valid and unique, so an import loads exactly `size`."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    directory.mkdir(parents=True, exist_ok=True)
    tag = f"{seed:x}"

    def moment() -> datetime:
        return now - timedelta(seconds=rng.uniform(60, days * 86400))

    def write(kind: str, rows: list[dict[str, object]]) -> Path:
        path = directory / f"{kind}.jsonl"
        with path.open("w") as handle:
            handle.writelines(json.dumps(row, separators=(",", ":")) + "\n" for row in rows)
        return path

    users: list[uuid.UUID] = []
    user_rows: list[dict[str, object]] = []
    for n in range(size.users):
        when = moment()
        users.append(_id_at(rng, when))
        user_rows.append(
            {
                "id": str(users[-1]),
                "username": f"u{tag}_{n}",
                "email": f"u{tag}_{n}@example.org",
                "first_name": "First",
                "last_name": f"Last{n}",
                "created_at": when.isoformat(),
            }
        )
    pairs: set[tuple[int, int]] = set()
    while len(pairs) < size.follows:
        a, b = rng.randrange(size.users), rng.randrange(size.users)
        if a != b:
            pairs.add((a, b))
    follow_rows: list[dict[str, object]] = [
        {"follower_id": str(users[a]), "followed_id": str(users[b]), "created_at": moment().isoformat()}
        for a, b in sorted(pairs)
    ]
    posts: list[uuid.UUID] = []
    post_rows: list[dict[str, object]] = []
    for n in range(size.posts):
        when = moment()
        posts.append(_id_at(rng, when))
        post_rows.append(
            {
                "id": str(posts[-1]),
                "user_id": str(users[rng.randrange(size.users)]),
                "content": f"post {n} #topic{n % 50} hello @u{tag}_{rng.randrange(size.users)}",
                "visibility": "public" if n % 5 else "followers",
                "created_at": when.isoformat(),
            }
        )
    comment_rows: list[dict[str, object]] = [
        {
            "post_id": str(posts[rng.randrange(size.posts)]),
            "user_id": str(users[rng.randrange(size.users)]),
            "content": f"comment {n}",
            "created_at": moment().isoformat(),
        }
        for n in range(size.comments)
    ]
    likes: set[tuple[int, int]] = set()
    while len(likes) < size.likes:
        likes.add((rng.randrange(size.posts), rng.randrange(size.users)))
    like_rows: list[dict[str, object]] = [
        {"target_id": str(posts[p]), "user_id": str(users[u]), "created_at": moment().isoformat()}
        for p, u in sorted(likes)
    ]
    return {
        "users": write("users", user_rows),
        "follows": write("follows", follow_rows),
        "posts": write("posts", post_rows),
        "comments": write("comments", comment_rows),
        "likes": write("likes", like_rows),
    }
