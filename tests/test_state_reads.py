"""The REST state reads of `models.state` refuse a caller that is gone with a typed error.

A request authenticates first and reads afterwards, so a deactivation can commit in
between: the read must answer as Zulip answers a deactivated account (an `ActionError`
with code USER_DEACTIVATED, which the HTTP layer answers with that code), never crash
on an assertion or show the deactivated user anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy.orm import Session

from actions.errors import ActionError
from actions.users import do_deactivate_user
from models.database import Database
from models.state import (
    ViewerDeactivated,
    own_user,
    state_for,
    visible_stream_id,
    visible_stream_members,
)
from tests.helpers.realms import SampleRealm

NO_SUCH_USER = 2**31 - 1


def reads(realm: SampleRealm) -> dict[str, Callable[[Session, int], Any]]:
    """Every read that takes the caller's id, bound to everything but session and caller."""
    public = realm.streams["public"]
    return {
        "state_for": lambda s, u: state_for(s, u, {"stream", "subscription"}, True),
        "own_user": own_user,
        "visible_stream_id": lambda s, u: visible_stream_id(s, u, "public"),
        "visible_stream_members": lambda s, u: visible_stream_members(s, u, public),
    }


def test_reads_refuse_a_deactivated_or_missing_caller(db: Database, realm: SampleRealm) -> None:
    loner = realm.users["loner"]
    with db.snapshot() as session:
        # The control: an active caller reads normally.
        assert visible_stream_id(session, loner, "public") == realm.streams["public"]
        assert own_user(session, loner)["user_id"] == loner
    with db.write() as session:
        do_deactivate_user(session, realm.realm_id, loner)
    for name, read in reads(realm).items():
        for caller in (loner, NO_SUCH_USER):
            with db.snapshot() as session, pytest.raises(ViewerDeactivated) as refused:
                read(session, caller)
            assert isinstance(refused.value, ActionError), name
            assert refused.value.code == "USER_DEACTIVATED", name
            assert str(refused.value) == "Account is deactivated", name
