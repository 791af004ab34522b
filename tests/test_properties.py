"""Property-based: random realms and random action sequences converge for every observer,
full-sequence and legacy alike, and no observer ever hears of a channel it cannot see.

The sequences send messages too, to channels and as direct messages: every user's
history holds exactly the messages its events brought (`verify_action` checks each send),
and no user ever reads a private channel's message it did not receive, through events or
through history, whoever joined, left, was deactivated or came back meanwhile.

The concurrent variant runs batches of actions at once, several messages and at most one
change of who sees what per batch, through `verify_concurrent_actions`: the same
convergence and the same privacy, with the actions in flight together."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from actions.errors import ActionError
from actions.messages import ChannelTarget, DirectTarget, check_send_message
from actions.realms import do_create_realm
from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions, bulk_remove_subscriptions
from actions.users import do_create_user, do_deactivate_user, do_reactivate_user
from models.database import Database
from models.messages.history import fetch_messages
from models.messages.narrows import BadNarrow, NarrowTerm
from models.tables import Role, Stream
from tests.helpers.concurrent_verify import BatchAction, verify_concurrent_actions
from tests.helpers.realms import CHANNEL_KINDS
from tests.helpers.verify import VerifiedAction, verify_action

_realm_numbers = itertools.count()
ROLES = [Role.OWNER, Role.ADMINISTRATOR, Role.MODERATOR, Role.MEMBER, Role.GUEST]

step = st.one_of(
    st.tuples(st.just("subscribe"), st.integers(0, 50), st.integers(0, 50)),
    st.tuples(st.just("unsubscribe"), st.integers(0, 50), st.integers(0, 50)),
    st.tuples(st.just("deactivate"), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("reactivate"), st.integers(0, 50), st.just(0)),
    st.tuples(st.just("create_user"), st.integers(0, len(ROLES) - 1), st.just(0)),
    st.tuples(st.just("create_stream"), st.integers(0, len(CHANNEL_KINDS) - 1), st.just(0)),
    st.tuples(st.just("send_channel"), st.integers(0, 50), st.integers(0, 50)),
    st.tuples(st.just("send_dm"), st.integers(0, 50), st.integers(0, 50)),
)
# The random realm of both tests: roles of the users besides the owner, kinds of channels,
# and (user, channel) memberships by index (`_random_realm`).
REALM_SHAPES = {
    "roles": st.lists(st.sampled_from(ROLES), min_size=1, max_size=5),
    "kinds": st.lists(st.sampled_from(CHANNEL_KINDS), min_size=1, max_size=3),
    "memberships": st.sets(st.tuples(st.integers(0, 5), st.integers(0, 3)), max_size=10),
}
# Each example builds a realm in a database fixture: slow, and shared by its examples.
SLOW_FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
# Enough for any history of one example (at most 8 steps).
HISTORY_PAGE = 100


def _stream(session: Session, realm_id: int, kind: str, name: str) -> int:
    return do_create_stream(
        session, realm_id, name, invite_only=kind == "private", is_web_public=kind == "web_public"
    ).id


def _action(
    name: str, realm_id: int, user: int, stream: int, a: int, position: int, other: int
) -> Callable[[Session], Any]:
    """The action a drawn step stands for, bound to its values."""
    calls: dict[str, Callable[[Session], Any]] = {
        "send_channel": lambda s: check_send_message(
            s, realm_id, user, ChannelTarget(stream), "topic", f"step {position}", "prop"
        ),
        "send_dm": lambda s: check_send_message(
            s, realm_id, user, DirectTarget(user_ids=(other,)), None, f"step {position}", "prop"
        ),
        "subscribe": lambda s: bulk_add_subscriptions(s, realm_id, [user], [stream]),
        "unsubscribe": lambda s: bulk_remove_subscriptions(s, realm_id, [user], [stream]),
        "deactivate": lambda s: do_deactivate_user(s, realm_id, user),
        "reactivate": lambda s: do_reactivate_user(s, realm_id, user),
        "create_user": lambda s: do_create_user(
            s, realm_id, f"n{position}@p.example.com", role=ROLES[a]
        ),
        "create_stream": lambda s: _stream(s, realm_id, CHANNEL_KINDS[a], f"n{position}"),
    }
    return calls[name]


@settings(max_examples=20, deadline=None, suppress_health_check=SLOW_FIXTURES)
@given(**REALM_SHAPES, steps=st.lists(step, min_size=1, max_size=8))
def test_random_actions_converge_for_every_observer(
    db: Database,
    roles: list[Role],
    kinds: list[str],
    memberships: set[tuple[int, int]],
    steps: list[tuple[str, int, int]],
) -> None:
    realm_id, users, streams = _random_realm(db, roles, kinds, memberships)
    received: dict[int, list[int]] = {}

    def note(verified: VerifiedAction[Any]) -> None:
        for stored in verified.events:
            if stored.event["type"] == "message":
                for user_id in stored.user_ids:
                    received.setdefault(user_id, []).append(stored.event["message"]["id"])

    # Every channel with a subscriber starts with a message from one, so the steps that
    # follow (joining, leaving, deactivating) act on channels that have history.
    first_members: dict[int, int] = {}
    for user_index, stream_index in sorted(memberships):
        first_members.setdefault(stream_index % len(streams), users[user_index % len(users)])
    for stream_index, sender in sorted(first_members.items()):
        note(
            verify_action(
                db,
                realm_id,
                _action("send_channel", realm_id, sender, streams[stream_index], 0, -1, sender),
            )
        )
    for position, (name, a, b) in enumerate(steps):
        user = users[a % len(users)]
        stream = streams[b % len(streams)]
        # Every other user follows the legacy deactivation sequence.
        legacy = set(users[1::2])
        try:
            verified = verify_action(
                db,
                realm_id,
                _action(name, realm_id, user, stream, a, position, users[b % len(users)]),
                legacy_users=legacy,
            )
        except ActionError:
            continue  # refused (say, reactivating an active user): verify_action wrote nothing
        if name == "create_user":
            users.append(verified.result.id)
        elif name == "create_stream":
            streams.append(verified.result)
        note(verified)
    _check_no_private_message_leaks(db, users, streams, received)


def _random_realm(
    db: Database, roles: list[Role], kinds: list[str], memberships: set[tuple[int, int]]
) -> tuple[int, list[int], list[int]]:
    """A realm with an owner and users of `roles`, channels of `kinds`, and `memberships`
    as (user index, channel index) pairs; its id, user ids and channel ids."""
    number = next(_realm_numbers)
    with db.write() as session:
        realm_id = do_create_realm(session, f"prop{number}").id
    users: list[int] = []
    for index, role in enumerate([Role.OWNER, *roles]):  # a realm always has an owner
        with db.write() as session:
            users.append(do_create_user(session, realm_id, f"u{index}@p.example.com", role=role).id)
    streams: list[int] = []
    for index, kind in enumerate(kinds):
        with db.write() as session:
            streams.append(_stream(session, realm_id, kind, f"c{index}"))
    for user_index, stream_index in memberships:
        with db.write() as session:
            bulk_add_subscriptions(
                session,
                realm_id,
                [users[user_index % len(users)]],
                [streams[stream_index % len(streams)]],
            )
    return realm_id, users, streams


# A batch: the messages sent at once (kind, sender, channel or other user), and at most one
# change of who sees what started with them.
message_step = st.tuples(
    st.sampled_from(["send_channel", "send_dm"]), st.integers(0, 50), st.integers(0, 50)
)
change_step = st.tuples(
    st.sampled_from(["subscribe", "unsubscribe", "deactivate", "reactivate"]),
    st.integers(0, 50),
    st.integers(0, 50),
)
batch = st.tuples(st.lists(message_step, min_size=1, max_size=4), st.none() | change_step)


@settings(max_examples=15, deadline=None, suppress_health_check=SLOW_FIXTURES)
@given(**REALM_SHAPES, batches=st.lists(batch, min_size=1, max_size=4))
def test_concurrent_actions_converge_and_never_leak(
    db: Database,
    roles: list[Role],
    kinds: list[str],
    memberships: set[tuple[int, int]],
    batches: list[tuple[list[tuple[str, int, int]], tuple[str, int, int] | None]],
) -> None:
    realm_id, users, streams = _random_realm(db, roles, kinds, memberships)
    received: dict[int, list[int]] = {}
    position = 0
    for messages, change in batches:
        actions: list[BatchAction] = []
        for name, a, b in [*messages, *([change] if change else [])]:
            position += 1
            user, stream, other = (
                users[a % len(users)],
                streams[b % len(streams)],
                users[b % len(users)],
            )
            run = _action(name, realm_id, user, stream, a, position, other)
            actions.append(BatchAction(name, run, changes_visibility=not name.startswith("send")))
        outcome = verify_concurrent_actions(db, realm_id, actions)
        for user_id in users:
            received.setdefault(user_id, []).extend(outcome.message_ids_for(user_id))
    _check_no_private_message_leaks(db, users, streams, received)


def _check_no_private_message_leaks(
    db: Database, users: list[int], streams: list[int], received: dict[int, list[int]]
) -> None:
    """Each user's history is what its events brought, and a private channel's history,
    as each user may read it, holds only messages that user received."""
    with db.snapshot() as session:
        private = list(
            session.scalars(select(Stream.id).where(Stream.id.in_(streams), Stream.invite_only))
        )
        for user_id in users:
            try:
                own = fetch_messages(
                    session, user_id, anchor="newest", num_before=HISTORY_PAGE, num_after=0
                )
            except ActionError:
                continue  # deactivated: reads nothing
            # Messages sent at once may commit in any order: history is in id order.
            got = sorted(received.get(user_id, []))
            assert [m["id"] for m in own["messages"]] == got, (user_id, got)
            for stream_id in private:
                try:
                    seen = fetch_messages(
                        session,
                        user_id,
                        anchor="newest",
                        num_before=HISTORY_PAGE,
                        num_after=0,
                        narrow=[NarrowTerm("channel", stream_id)],
                    )
                except BadNarrow:
                    continue  # a channel it cannot see: answered as if it did not exist
                leaked = {m["id"] for m in seen["messages"]} - set(got)
                assert not leaked, f"user {user_id} reads private messages {leaked}"
