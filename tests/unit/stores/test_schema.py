"""The index rules of `nubo db init` (nubo.stores.schema): which Mongo index a collection wants, when an
existing one conflicts, and which servers honour TTL indexes. Pure: no database is reached."""

from __future__ import annotations

from nubo.stores.mongo import MongoServer, server_from_build_info
from nubo.stores.schema import IndexSpec, index_conflict, last_use_index


def test_index_comparison_rules() -> None:
    mongodb, ferret = MongoServer("mongodb", "7.0.14"), MongoServer("ferretdb", "v1.24.2")
    assert last_use_index(mongodb, 30).expire_after_seconds == 30 * 86400
    assert last_use_index(ferret, 30).expire_after_seconds is None
    wanted = IndexSpec("email_unique", [("email", 1)], unique=True)
    same = IndexSpec("email_unique", [("email", 1)], True)
    assert index_conflict("u", wanted, {"email_unique": same}) is None
    assert index_conflict("u", wanted, {}) is None
    # Same name, other options; same keys under another name; a TTL whose retention changed.
    assert index_conflict("u", wanted, {"email_unique": IndexSpec("email_unique", [("email", 1)])})
    assert index_conflict("u", wanted, {"other": IndexSpec("other", [("email", 1)], True)})
    ttl = last_use_index(mongodb, 30)
    changed = index_conflict("u", ttl, {"last_use": last_use_index(mongodb, 7)})
    assert changed and "collMod" in changed
    # FerretDB's buildInfo (as returned by v1.24) is recognised, so TTL is not relied upon there.
    info = {"version": "7.0.42", "ferretdbVersion": "v1.24.2"}
    assert server_from_build_info(info) == MongoServer("ferretdb", "v1.24.2")
    assert not server_from_build_info(info).supports_ttl
    assert server_from_build_info({"version": "7.0.14"}).supports_ttl
