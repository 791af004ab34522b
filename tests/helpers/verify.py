"""`verify_action`: run an action, capture its events, prove every client converges.

Zulip's habit (zerver/tests/test_events.py), with our additions: for every active user
of the realm, fetch the `register` state before, run the action in one write
transaction while counting its SQL statements, read the outbox rows it wrote (gap-free
sequence numbers), check their count and shape, apply to each user's state exactly the
events addressed to them, and compare with a fresh `register` state after. It also
checks that no user receives an event naming a channel they could see neither before
nor after, so private channels never leak.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from clients.state import StateCache
from models.database import Database
from models.outbox import StoredEvent, read_events
from models.state import STATE_EVENT_TYPES, fetch_initial_state
from models.tables import Realm, UserProfile
from tests.helpers.events import check_event_shape
from tests.helpers.statements import count_statements

T = TypeVar("T")


@dataclass
class VerifiedAction(Generic[T]):
    """What the action returned, the events it wrote and how many statements it ran."""

    result: T
    events: list[StoredEvent]
    statements: int

    def received_by(self, user_id: int, legacy: bool = False) -> list[dict[str, Any]]:
        """The events this user's queue receives, in order."""
        return [
            e.event for e in self.events if user_id in e.user_ids and not (legacy and e.legacy_skip)
        ]


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _states(session: Session, realm_id: int, include_subscribers: bool) -> dict[int, Any]:
    users = session.scalars(
        select(UserProfile).where(UserProfile.realm_id == realm_id, UserProfile.is_active)
    ).all()
    return {
        u.id: _json(fetch_initial_state(session, u, STATE_EVENT_TYPES, include_subscribers))
        for u in users
    }


def _visible_stream_ids(state: dict[str, Any]) -> set[int]:
    return {s["stream_id"] for s in state.get("streams", [])}


def _named_stream_ids(event: dict[str, Any]) -> set[int]:
    if event["type"] == "stream":
        return {s["stream_id"] for s in event["streams"]}
    if event["type"] == "subscription":
        if "stream_ids" in event:
            return set(event["stream_ids"])
        return {s["stream_id"] for s in event["subscriptions"]}
    return set()


def verify_action(
    db: Database,
    realm_id: int,
    action: Callable[[Session], T],
    *,
    num_events: int | None = None,
    include_subscribers: bool = True,
    legacy_users: Collection[int] = (),
    max_statements: int | None = None,
) -> VerifiedAction[T]:
    """Run `action` in a write transaction and check every client converges (see module)."""
    with db.snapshot() as session:
        before_seq = session.execute(
            select(Realm.last_event_seq).where(Realm.id == realm_id)
        ).scalar_one()
        before = _states(session, realm_id, include_subscribers)

    with count_statements(db.engine) as statements, db.write() as session:
        result = action(session)

    with db.snapshot() as session:
        after_seq = session.execute(
            select(Realm.last_event_seq).where(Realm.id == realm_id)
        ).scalar_one()
        events = read_events(session, realm_id, before_seq)
        after = _states(session, realm_id, include_subscribers)

    assert [e.seq for e in events] == list(range(before_seq + 1, after_seq + 1)), (
        "outbox sequence numbers must be gap-free and match the realm counter"
    )
    if num_events is not None:
        assert len(events) == num_events, [e.event for e in events]
    if max_statements is not None:
        assert statements.count <= max_statements, statements.statements
    for stored in events:
        check_event_shape(stored.event)
        assert stored.user_ids, "an outbox event without recipients is never written"
        for user_id in stored.user_ids:
            assert user_id in before or user_id in after, (
                f"event {stored.event} went to user {user_id}, who is not active"
            )

    verified = VerifiedAction(result, events, statements.count)
    for user_id, state in before.items():
        received = verified.received_by(user_id, legacy=user_id in legacy_users)
        visible = _visible_stream_ids(state) | _visible_stream_ids(after.get(user_id, {}))
        for event in received:
            leaked = _named_stream_ids(event) - visible
            assert not leaked, f"user {user_id} was told about channels {leaked} it cannot see"
        if user_id not in after:
            continue  # deactivated by this action; its queues are gone
        cache = StateCache.from_register(
            state,
            user_id,
            removes_deactivated_users=user_id in legacy_users,
            include_subscribers=include_subscribers,
        )
        cache.apply_all(received)
        assert cache.to_register_shape() == after[user_id], (
            f"user {user_id}'s state after applying {received} differs from a fresh register"
        )
    return verified
