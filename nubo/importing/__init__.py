"""Bulk import of an existing community (`nubo db import`): users, follows, posts, comments and likes from
JSON Lines, validated row by row, loaded with COPY in one transaction (:mod:`nubo.importing.loader`), in the
format of :mod:`nubo.importing.rows` (docs/write-pipeline.md)."""

from __future__ import annotations

from nubo.importing.loader import (
    KINDS,
    ImportReport,
    ImportSourceError,
    Rejected,
    checked_rows,
    find_sources,
    import_community,
    iter_rejected,
)
from nubo.importing.rows import NO_PASSWORD

__all__ = [
    "KINDS",
    "NO_PASSWORD",
    "ImportReport",
    "ImportSourceError",
    "Rejected",
    "checked_rows",
    "find_sources",
    "import_community",
    "iter_rejected",
]
