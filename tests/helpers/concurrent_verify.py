"""`verify_concurrent_actions`: several actions in flight at once, and every client still
converges, every message reaches exactly who it must.

`verify_action` (tests/helpers/verify.py) checks one action at a time. Here a batch of
actions starts together, one thread and one write transaction each: any number of
messages, which share the realm lock, and at most one action that changes who sees what
(subscribe, unsubscribe, deactivate, reactivate), which takes it exclusively and so runs
before or after the messages, never between their reads and their commit. Then:

* the outbox rows the batch wrote have gap-free sequence numbers;
* a message reaches exactly the users it must at its place in that sequence: the
  channel's active subscribers and the sender (a direct message: its participants), as
  they were before the changing action if the message comes before its events, and as
  they are after it otherwise; so a message never reaches a user whose removal from a
  private channel, or whose deactivation, committed before it, and a direct message
  to a user deactivated before it is never written;
* every user active throughout, applying the events addressed to them in sequence order
  to their state from before, ends with a fresh `register` state after;
* every user's history grows by exactly the messages their events carried.

With a changing action in the batch, what "before" and "after" mean for a message is
decided by the sequence numbers alone, which is the promise of docs/architecture.md §4:
the order of the outbox is the order of the commits.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from actions.errors import ActionError
from clients.state import StateCache
from models.database import Database
from models.outbox import StoredEvent, read_events
from models.state import STATE_EVENT_TYPES, fetch_initial_state
from models.tables import Realm, Stream, UserMessage, UserProfile
from models.visibility import active_subscribers

# A bound on how long the batch may take (a stuck lock fails the test instead of hanging).
BATCH_TIMEOUT_SECS = 60.0


@dataclass(frozen=True)
class BatchAction:
    """One action of a batch: what it does, and whether it changes who sees what."""

    name: str
    run: Callable[[Session], object]
    changes_visibility: bool = False


@dataclass
class BatchOutcome:
    """What a batch wrote and which of its actions were refused."""

    events: list[StoredEvent]
    refused: list[str] = field(default_factory=list)

    def message_ids_for(self, user_id: int) -> list[int]:
        return [
            e.event["message"]["id"]
            for e in self.events
            if e.event.get("type") == "message" and user_id in e.user_ids
        ]


@dataclass(frozen=True)
class _Membership:
    """Who is active, and each channel's active subscribers, at one moment."""

    active: frozenset[int]
    subscribers: dict[int, set[int]]


def _membership(session: Session, realm_id: int) -> _Membership:
    active = frozenset(
        session.scalars(
            select(UserProfile.id).where(UserProfile.realm_id == realm_id, UserProfile.is_active)
        )
    )
    stream_ids = list(session.scalars(select(Stream.id).where(Stream.realm_id == realm_id)))
    return _Membership(active, dict(active_subscribers(session, stream_ids)))


def _states(session: Session, realm_id: int, users: frozenset[int]) -> dict[int, Any]:
    states = {}
    for user in session.scalars(select(UserProfile).where(UserProfile.id.in_(users))):
        state = fetch_initial_state(session, user, STATE_EVENT_TYPES, True)
        states[user.id] = json.loads(json.dumps(state))
    return states


def _history_ids(session: Session, users: frozenset[int]) -> dict[int, set[int]]:
    rows = session.execute(
        select(UserMessage.user_profile_id, UserMessage.message_id).where(
            UserMessage.user_profile_id.in_(users)
        )
    )
    ids: dict[int, set[int]] = {user: set() for user in users}
    for user_id, message_id in rows:
        ids[int(user_id)].add(int(message_id))
    return ids


def _run_together(db: Database, actions: Sequence[BatchAction]) -> list[str]:
    """Start every action at once, each in its own write transaction; the refused ones."""
    start = threading.Barrier(len(actions))
    refused: list[str] = []
    failures: list[BaseException] = []

    def run(action: BatchAction) -> None:
        try:
            start.wait(BATCH_TIMEOUT_SECS)
            with db.write() as session:
                action.run(session)
        except ActionError:
            refused.append(action.name)  # written nothing: its transaction rolled back
        except BaseException as error:  # handed to the test thread below
            failures.append(error)

    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BATCH_TIMEOUT_SECS)
    assert not any(thread.is_alive() for thread in threads), "an action is stuck: deadlock"
    if failures:
        raise failures[0]
    return refused


def verify_concurrent_actions(
    db: Database, realm_id: int, actions: Sequence[BatchAction]
) -> BatchOutcome:
    """Run `actions` at once and check what the module says."""
    assert sum(action.changes_visibility for action in actions) <= 1, "one change per batch"
    with db.snapshot() as session:
        first_seq = session.execute(
            select(Realm.last_event_seq).where(Realm.id == realm_id)
        ).scalar_one()
        before = _membership(session, realm_id)
        states_before = _states(session, realm_id, before.active)
        history_before = _history_ids(session, before.active)

    refused = _run_together(db, actions)

    with db.snapshot() as session:
        last_seq = session.execute(
            select(Realm.last_event_seq).where(Realm.id == realm_id)
        ).scalar_one()
        events = read_events(session, realm_id, first_seq)
        after = _membership(session, realm_id)
        steady = before.active & after.active
        states_after = _states(session, realm_id, steady)
        history_after = _history_ids(session, steady)

    assert [e.seq for e in events] == list(range(first_seq + 1, last_seq + 1)), (
        "outbox sequence numbers must be gap-free and match the realm counter"
    )
    outcome = BatchOutcome(events, refused)
    _check_recipients(events, before, after)
    for user_id in steady:
        received = [e.event for e in events if user_id in e.user_ids]
        cache = StateCache.from_register(states_before[user_id], user_id, include_subscribers=True)
        cache.apply_all(received)
        assert cache.to_register_shape() == states_after[user_id], (
            f"user {user_id}'s state after applying {received} differs from a fresh register"
        )
        grown = history_after[user_id] - history_before[user_id]
        assert grown == set(outcome.message_ids_for(user_id)), (
            f"user {user_id}'s history grew by {sorted(grown)}, its events brought "
            f"{outcome.message_ids_for(user_id)}"
        )
    return outcome


def _check_recipients(events: list[StoredEvent], before: _Membership, after: _Membership) -> None:
    """Each message's recipients, judged at its place in the sequence (see the module)."""
    changed = [e.seq for e in events if e.event.get("type") != "message"]
    recipients: dict[int, set[int]] = {}
    for stored in events:
        if stored.event.get("type") == "message":
            message_id = stored.event["message"]["id"]
            recipients.setdefault(message_id, set()).update(stored.user_ids)
    for stored in events:
        if stored.event.get("type") != "message" or "read" not in stored.event["flags"]:
            continue  # one check per message, at its sender's event
        message = stored.event["message"]
        # The changing action's events are contiguous: a message is before all or after all.
        moment = before if not changed or stored.seq < changed[0] else after
        if message["type"] == "stream":
            expected = moment.subscribers.get(message["stream_id"], set()) | {message["sender_id"]}
        else:
            expected = {person["id"] for person in message["display_recipient"]}
            inactive = expected - moment.active
            assert not inactive, f"direct message {message['id']} to inactive users {inactive}"
        got = recipients[message["id"]]
        assert got == expected, (
            f"message {message['id']} (seq {stored.seq}) went to {sorted(got)}, "
            f"not to {sorted(expected)}"
        )
