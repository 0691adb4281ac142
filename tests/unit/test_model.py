"""The shared vocabulary (nubo.model): the SQL predicates every domain uses, and the stored numbers."""

from __future__ import annotations

import re
from pathlib import Path

from nubo.model import FollowState, UserState, active_user, blocked_either_way

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


def test_blocked_either_way_checks_both_directions() -> None:
    text = blocked_either_way("u.id", "%(viewer)s")
    assert text == (
        "EXISTS (SELECT 1 FROM auth.blocks bl "
        "WHERE (bl.blocker_id = u.id AND bl.blocked_id = %(viewer)s) "
        "OR (bl.blocker_id = %(viewer)s AND bl.blocked_id = u.id))"
    )


def test_blocked_either_way_takes_an_alias_for_nested_use() -> None:
    inner = blocked_either_way("p.user_id", "ANY(%(ids)s)", alias="b2")
    assert "FROM auth.blocks b2 " in inner and " bl." not in inner
    assert inner.count("b2.blocker_id") == 2 and inner.count("b2.blocked_id") == 2


def test_active_user_is_the_active_state_number() -> None:
    assert active_user("u") == "u.state = 1" == f"u.state = {UserState.ACTIVE:d}"


def test_states_compare_equal_to_the_stored_integers() -> None:
    assert UserState.ACTIVE == 1 and FollowState.ACTIVE == 1 and UserState.BANNED == 2
    assert f"{UserState.BANNED:d}" == "2"  # what an f-string puts into SQL


def test_user_states_are_those_the_schema_allows() -> None:
    """The CHECK constraint of `auth.users.state` (sql/010_auth.sql) admits exactly the UserState numbers."""
    users_table = (
        (SQL_DIR / "010_auth.sql").read_text().split("CREATE TABLE IF NOT EXISTS auth.users (", 1)[1].split(");", 1)[0]
    )
    check = re.search(r"state\s+SMALLINT[^,]*CHECK \(state IN \(([\d, ]+)\)\)", users_table)
    assert check is not None
    assert {int(n) for n in check.group(1).split(",")} == {int(state) for state in UserState}
