"""`nubo db import` as library code: read, validate and COPY a community's users, follows, posts, comments and
likes in one transaction, then write the 30-day copies.

Steps, for the kinds in dependency order (users, follows, posts, comments, likes):

1. every line is decoded into its typed shape and checked on its own (:mod:`nubo.importing.rows`);
2. then against the rest: ids, usernames and e-mails unique in the files and in the database, references to
   users, posts and comments that exist (in the files or already in the database), one follow per pair and
   one like per target and user. A row whose reference was rejected is rejected too, naming where;
3. unless `dry_run`, the accepted rows are COPYed, all kinds in ONE transaction (:mod:`nubo.stores.bulk`):
   if anything fails (a constraint the checks missed, a lost connection) nothing stays;
4. after the commit, the rows created within `NUBO_RETENTION_DAYS` get their Mongo copies, and the derived
   values (counts, relations) of pre-existing users and posts the import touched are invalidated in Redis.

Rejected rows never stop the import: each is reported with `file:line` and its reason.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from nubo.importing.rows import CHECKS, SHAPES, RowError
from nubo.logs import get_logger
from nubo.model import LikeTarget, UserState
from nubo.posts import parse_meta
from nubo.stores import Stores
from nubo.stores.bulk import COPY_TABLES, BulkSession, bulk_session, copy_recent_to_mongo
from nubo.stores.derived import post_tag, user_tag
from nubo.stores.postgres import Jsonb

log = get_logger(__name__)

KINDS = ("users", "follows", "posts", "comments", "likes")
SUFFIXES = (".jsonl", ".ndjson")
YIELD_EVERY = 1000  # lines read between two turns given to the COPY running meanwhile
# Called with (phase, advance, total): phase "read <file>" advances by bytes, "copy <kind>" by rows.
Progress = Callable[[str, int, int], None]


class ImportSourceError(ValueError):
    """The sources cannot be imported at all (a missing file, a name that is no kind)."""


@dataclass(frozen=True)
class Rejected:
    """A row left out, where it is and why."""

    file: str
    line: int
    reason: str

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class ImportReport:
    """What an import read, loaded (or, in a dry run, would load) and rejected."""

    dry_run: bool
    files: dict[str, str] = field(default_factory=dict)
    read: dict[str, int] = field(default_factory=dict)
    loaded: dict[str, int] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)
    mongo_copies: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # the whole import
    seconds_postgres: float = 0.0  # reading, checking, COPY and commit (without the Mongo copies)

    @property
    def rows_per_second(self) -> float:
        return sum(self.loaded.values()) / self.seconds if self.seconds else 0.0

    @property
    def postgres_rows_per_second(self) -> float:
        return sum(self.loaded.values()) / self.seconds_postgres if self.seconds_postgres else 0.0

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["rejected"] = [{"where": r.where, **asdict(r)} for r in self.rejected]
        data["rows_per_second"] = round(self.rows_per_second, 1)
        data["postgres_rows_per_second"] = round(self.postgres_rows_per_second, 1)
        return data


def find_sources(paths: Sequence[Path]) -> dict[str, Path]:
    """`{kind: file}` from files named after their kind (`users.jsonl`, ...) and directories holding them."""
    found: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            files = [p for p in sorted(path.iterdir()) if p.suffix in SUFFIXES and p.stem in KINDS]
            if not files:
                raise ImportSourceError(f"{path}: no {', '.join(k + '.jsonl' for k in KINDS)} in this directory")
        elif path.is_file():
            if path.stem not in KINDS:
                raise ImportSourceError(f"{path}: the file name must be one of {', '.join(KINDS)} (.jsonl or .ndjson)")
            files = [path]
        else:
            raise ImportSourceError(f"{path}: no such file or directory")
        for file in files:
            if file.stem in found:
                raise ImportSourceError(f"two files for {file.stem}: {found[file.stem]} and {file}")
            found[file.stem] = file
    return {kind: found[kind] for kind in KINDS if kind in found}


@dataclass
class _Accepted:
    """The rows of one kind that passed so far, with their line numbers (same order)."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)


class _Import:
    """The state of one import: what each file holds, what was rejected where."""

    def __init__(
        self, session: BulkSession, sources: dict[str, Path], report: ImportReport, progress: Progress
    ) -> None:
        self.session = session
        self.sources = sources
        self.report = report
        self.progress = progress
        self.now = datetime.now(UTC)
        self.accepted: dict[str, _Accepted] = {}
        self.where_rejected: dict[uuid.UUID, str] = {}  # id -> file:line of a rejected row that had it
        self.users: dict[uuid.UUID, bool] = {}  # imported user id -> active
        self.names: dict[str, uuid.UUID] = {}  # imported lower-cased username -> id
        self.user_ints: set[int] = set()  # the imported users' ids as integers (see known_users)
        self.existing: dict[str, set[uuid.UUID]] = {}  # referenced ids found in the database, per entity
        self.given: dict[str, set[uuid.UUID]] = {}  # ids the files gave (the others are minted: new)

    # ---- reading --------------------------------------------------------------------------------------------

    async def read(self, kind: str) -> _Accepted:
        """Decode and check each line of `kind`'s file on its own."""
        path = self.sources[kind]
        given = self.given.setdefault(kind, set())
        decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(SHAPES[kind])
        check = CHECKS[kind]
        accepted = _Accepted()
        total, done, number = path.stat().st_size, 0, 0
        with path.open("rb") as handle:
            for number, line in enumerate(handle, 1):
                done += len(line)
                if number % YIELD_EVERY == 0:
                    self.progress(f"read {path.name}", done, total)
                    await asyncio.sleep(0)  # lets the COPY of the previous kind send what it has
                if not line.strip():
                    continue
                try:
                    shape = decoder.decode(line)
                    row = check(shape, self.now)
                except (msgspec.ValidationError, msgspec.DecodeError, RowError) as exc:
                    self.reject(kind, number, str(exc), _id_in(line))
                    continue
                accepted.rows.append(row)
                accepted.lines.append(number)
                if shape.id is not None:
                    given.add(row[0])
        self.progress(f"read {path.name}", total, total)
        self.report.read[kind] = number
        return accepted

    def reject(self, kind: str, line: int, reason: str, row_id: uuid.UUID | None = None) -> None:
        where = f"{self.sources[kind].name}:{line}"
        self.report.rejected.append(Rejected(self.sources[kind].name, line, reason))
        if row_id is not None:
            self.where_rejected.setdefault(row_id, where)

    def keep(self, kind: str, accepted: _Accepted, problems: dict[int, str]) -> _Accepted:
        """`accepted` without the rows whose index is in `problems` (each rejected with its reason)."""
        if not problems:
            return accepted
        kept = _Accepted()
        for index, (row, line) in enumerate(zip(accepted.rows, accepted.lines, strict=True)):
            if index in problems:
                self.reject(kind, line, problems[index], row[0])
            else:
                kept.rows.append(row)
                kept.lines.append(line)
        return kept

    def missing(self, what: str, value: uuid.UUID) -> str:
        """The reason for a reference to `value` that is neither imported nor in the database."""
        where = self.where_rejected.get(value)
        if where is not None:
            return f"{what} {value} was rejected ({where})"
        return f"{what} {value} is not in the files nor in the database"

    async def look_up(self, entity: str, ids: set[uuid.UUID]) -> set[uuid.UUID]:
        """Which referenced `ids` (not imported) exist in the database already; remembered per entity."""
        known = self.existing.setdefault(entity, set())
        unknown = [i for i in ids if i not in known]
        for start in range(0, len(unknown), 50_000):
            known |= await self.session.existing_ids(entity, unknown[start : start + 50_000])
        return known

    async def unique_ids(self, kind: str, accepted: _Accepted) -> _Accepted:
        """Reject rows whose id repeats one of the files or exists in the database."""
        given = self.given[kind]
        if not given:
            return accepted  # every id was minted here: new and unique
        first: dict[uuid.UUID, int] = {}
        problems: dict[int, str] = {}
        for index, (row, line) in enumerate(zip(accepted.rows, accepted.lines, strict=True)):
            if row[0] not in given:
                continue
            if row[0] in first:
                problems[index] = f"id {row[0]} repeats {self.sources[kind].name}:{first[row[0]]}"
            else:
                first[row[0]] = line
        taken: set[uuid.UUID] = set()
        ids = list(first)
        for start in range(0, len(ids), 50_000):
            taken |= await self.session.existing_ids(COPY_TABLES[kind].entity, ids[start : start + 50_000])
        for index, row in enumerate(accepted.rows):
            if index not in problems and row[0] in taken:
                problems[index] = f"id {row[0]} exists in the database already"
        return self.keep(kind, accepted, problems)

    # ---- each kind against the others ----------------------------------------------------------------------

    async def check_users(self, accepted: _Accepted) -> _Accepted:
        accepted = await self.unique_ids("users", accepted)
        name_line: dict[str, int] = {}
        mail_line: dict[str, int] = {}
        problems: dict[int, str] = {}
        for index, (row, line) in enumerate(zip(accepted.rows, accepted.lines, strict=True)):
            name, mail = row[1].lower(), row[2].lower()
            if name in name_line:
                problems[index] = f"username {row[1]!r} repeats users line {name_line[name]}"
            elif mail in mail_line:
                problems[index] = f"email {row[2]!r} repeats users line {mail_line[mail]}"
            else:
                name_line[name], mail_line[mail] = line, line
        taken_names, taken_mails = await self.session.existing_user_names(list(name_line), list(mail_line))
        for index, row in enumerate(accepted.rows):
            if index in problems:
                continue
            if row[1].lower() in taken_names:
                problems[index] = f"username {row[1]!r} is taken in the database"
            elif row[2].lower() in taken_mails:
                problems[index] = f"email {row[2]!r} is taken in the database"
        accepted = self.keep("users", accepted, problems)
        for row in accepted.rows:
            self.users[row[0]] = row[8] == UserState.ACTIVE
            self.names[row[1].lower()] = row[0]
        self.user_ints = {user.int for user in self.users}
        return accepted

    async def known_users(self, accepted: _Accepted, columns: Sequence[int]) -> set[int]:
        """The users the rows may refer to (imported, or found in the database), as integers: a UUID's own
        hash is Python code, four times slower than an int's, and this is checked for every reference."""
        imported = self.user_ints
        unknown = {value for row in accepted.rows for c in columns if (value := row[c].int) not in imported}
        found = await self.look_up("users", {uuid.UUID(int=value) for value in unknown})
        return imported | {u.int for u in found}

    async def check_follows(self, accepted: _Accepted) -> _Accepted:
        accepted = await self.unique_ids("follows", accepted)
        users = await self.known_users(accepted, (1, 2))
        problems: dict[int, str] = {}
        first: dict[tuple[int, int], int] = {}
        for index, (row, line) in enumerate(zip(accepted.rows, accepted.lines, strict=True)):
            pair = (row[1].int, row[2].int)
            if pair[0] not in users:
                problems[index] = self.missing("follower_id", row[1])
            elif pair[1] not in users:
                problems[index] = self.missing("followed_id", row[2])
            elif pair in first:
                problems[index] = f"this follow repeats follows line {first[pair]}"
            else:
                first[pair] = line
        # Only pairs of users who both existed before the import can be in the database already.
        imported = self.user_ints
        old = [(uuid.UUID(int=a), uuid.UUID(int=b)) for a, b in first if a not in imported and b not in imported]
        taken = {(a.int, b.int) for a, b in await self.session.existing_follows(old)}
        if taken:
            for index, row in enumerate(accepted.rows):
                if index not in problems and (row[1].int, row[2].int) in taken:
                    problems[index] = "this follow exists in the database already"
        return self.keep("follows", accepted, problems)

    async def check_posts(self, accepted: _Accepted) -> _Accepted:
        accepted = await self.unique_ids("posts", accepted)
        users = await self.known_users(accepted, (1,))
        problems = {
            i: self.missing("user_id", row[1]) for i, row in enumerate(accepted.rows) if row[1].int not in users
        }
        accepted = self.keep("posts", accepted, problems)
        accepted.rows = [(*row[:3], Jsonb(self.meta(row[2])), *row[4:]) for row in accepted.rows]
        return accepted

    def meta(self, content: str) -> dict[str, Any]:
        """Hashtags, and the mentions that name active users of the import."""
        parsed = parse_meta(content)
        mentions = [
            {"username": name, "user_id": str(self.names[name])}
            for name in parsed["mentions"]
            if name in self.names and self.users[self.names[name]]
        ]
        return {"mentions": mentions, "hashtags": parsed["hashtags"]}

    def imported_ids(self, kind: str) -> set[uuid.UUID]:
        accepted = self.accepted.get(kind)
        return {row[0] for row in accepted.rows} if accepted else set()

    async def check_comments(self, accepted: _Accepted) -> _Accepted:
        accepted = await self.unique_ids("comments", accepted)
        users = await self.known_users(accepted, (2,))
        posts = self.imported_ids("posts")
        posts |= await self.look_up("posts", {row[1] for row in accepted.rows} - posts)
        problems: dict[int, str] = {}
        for index, row in enumerate(accepted.rows):
            if row[1] not in posts:
                problems[index] = self.missing("post_id", row[1])
            elif row[2].int not in users:
                problems[index] = self.missing("user_id", row[2])
        return self.keep("comments", accepted, problems)

    async def check_likes(self, accepted: _Accepted) -> _Accepted:
        accepted = await self.unique_ids("likes", accepted)
        users = await self.known_users(accepted, (3,))
        targets = {LikeTarget.POST: self.imported_ids("posts"), LikeTarget.COMMENT: self.imported_ids("comments")}
        for kind, entity in ((LikeTarget.POST, "posts"), (LikeTarget.COMMENT, "comments")):
            wanted = {row[2] for row in accepted.rows if row[1] == kind} - targets[kind]
            targets[kind] = targets[kind] | await self.look_up(entity, wanted)
        problems: dict[int, str] = {}
        first: dict[tuple[int, uuid.UUID, uuid.UUID], int] = {}
        for index, (row, line) in enumerate(zip(accepted.rows, accepted.lines, strict=True)):
            key = (row[1], row[2], row[3])
            if row[2] not in targets[row[1]]:
                problems[index] = self.missing("target_id", row[2])
            elif row[3].int not in users:
                problems[index] = self.missing("user_id", row[3])
            elif key in first:
                problems[index] = f"this like repeats likes line {first[key]}"
            else:
                first[key] = line
        # Only likes by a user and of a target that both existed before the import can be there already.
        imported = {LikeTarget.POST: self.imported_ids("posts"), LikeTarget.COMMENT: self.imported_ids("comments")}
        old = [k for k in first if k[2] not in self.users and k[1] not in imported[LikeTarget(k[0])]]
        taken = await self.session.existing_likes(old)
        for index, row in enumerate(accepted.rows):
            if index not in problems and (row[1], row[2], row[3]) in taken:
                problems[index] = "this like exists in the database already"
        return self.keep("likes", accepted, problems)

    # ---- running --------------------------------------------------------------------------------------------

    async def run(self, *, copy: bool) -> None:
        """Check each kind in turn; with `copy`, COPY each kind while the next one is being checked."""
        steps = {
            "users": self.check_users,
            "follows": self.check_follows,
            "posts": self.check_posts,
            "comments": self.check_comments,
            "likes": self.check_likes,
        }
        copying: asyncio.Task[int] | None = None
        try:
            for kind in self.sources:
                self.accepted[kind] = await steps[kind](await self.read(kind))
                self.report.loaded[kind] = len(self.accepted[kind].rows)
                if copy:
                    copying = asyncio.create_task(self.copy(kind, copying))
            if copying is not None:
                await copying
        finally:
            if copying is not None and not copying.done():
                copying.cancel()
                await asyncio.gather(copying, return_exceptions=True)

    async def copy(self, kind: str, previous: asyncio.Task[int] | None) -> int:
        """COPY `kind`'s accepted rows once the previous kind's COPY is done (one connection, in order)."""
        if previous is not None:
            await previous
        total, done = len(self.accepted[kind].rows), 0

        def advance(count: int) -> None:
            nonlocal done
            done += count
            self.progress(f"copy {kind}", done, total)

        return await self.session.copy(COPY_TABLES[kind], self.accepted[kind].rows, on_rows=advance)

    def touched_tags(self) -> set[str]:
        """Derived values of pre-existing users and posts that the imported rows change."""
        old_users = self.existing.get("users", set())
        old_posts = self.existing.get("posts", set())
        tags = {user_tag(u) for u in old_users}
        for kind, column in (("comments", 1), ("likes", 2)):
            accepted = self.accepted.get(kind)
            if accepted:
                tags |= {post_tag(row[column]) for row in accepted.rows if row[column] in old_posts}
        return tags

    def recent(self, kind: str, since: datetime) -> list[uuid.UUID]:
        """Ids of the accepted rows of `kind` created at or after `since`."""
        column = COPY_TABLES[kind].columns.index("created_at")
        return [row[0] for row in self.accepted[kind].rows if row[column] >= since]


def _id_in(line: bytes) -> uuid.UUID | None:
    """The `id` of a rejected line when it has a readable one (so rows that refer to it say where it was)."""
    try:
        raw = msgspec.json.decode(line)
        return uuid.UUID(str(raw["id"])) if isinstance(raw, dict) and "id" in raw else None
    except (msgspec.DecodeError, ValueError, TypeError):
        return None


def _no_progress(_phase: str, _done: int, _total: int) -> None:
    pass


async def import_community(
    stores: Stores, sources: dict[str, Path], *, dry_run: bool = False, progress: Progress = _no_progress
) -> ImportReport:
    """Import `sources` (`{kind: file}`, see :func:`find_sources`); see the module for the steps."""
    started = time.perf_counter()
    report = ImportReport(dry_run=dry_run, files={kind: str(path) for kind, path in sources.items()})
    async with bulk_session(stores) as session:
        job = _Import(session, sources, report, progress)
        await job.run(copy=not dry_run)
    report.seconds_postgres = time.perf_counter() - started
    if not dry_run:
        await _after_commit(stores, job, report)
    report.seconds = time.perf_counter() - started
    log.info("import_done", extra={"dry_run": dry_run, "loaded": report.loaded, "rejected": len(report.rejected)})
    return report


async def checked_rows(stores: Stores, sources: dict[str, Path]) -> dict[str, list[tuple[Any, ...]]]:
    """The rows an import of `sources` would COPY, per kind, as tuples in the columns' order (the dry run's
    result; the import benchmark COPYs them raw)."""
    async with bulk_session(stores) as session:
        job = _Import(session, sources, ImportReport(dry_run=True), _no_progress)
        await job.run(copy=False)
    return {kind: accepted.rows for kind, accepted in job.accepted.items()}


async def _after_commit(stores: Stores, job: _Import, report: ImportReport) -> None:
    """The 30-day Mongo copies and the invalidated derived values (best effort: the import has committed)."""
    since = datetime.now(UTC) - timedelta(days=stores.settings.retention_days)

    async def copy(kind: str) -> None:
        ids = job.recent(kind, since)
        report.mongo_copies[kind] = await copy_recent_to_mongo(stores, COPY_TABLES[kind].entity, since, ids)
        job.progress(f"mongo {kind}", len(ids), len(ids))

    # One collection each, concurrently: the Mongo server writes them in parallel.
    await asyncio.gather(*(copy(kind) for kind in job.accepted))
    await stores.derived.invalidate(job.touched_tags())


def iter_rejected(report: ImportReport) -> Iterator[Rejected]:
    """The rejected rows in file order."""
    order = {Path(path).name: KINDS.index(kind) for kind, path in report.files.items()}
    yield from sorted(report.rejected, key=lambda r: (order.get(r.file, 99), r.line))
