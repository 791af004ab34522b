"""Ephemeral events in the pure queue layer (docs/architecture.md §5, "Ephemeral events"):
the side buffer of `queues.queue.EventQueue` (the id an event carries, expiry, the bound,
at most once, the order among durable events, the checkpoint left alone), the filter of
`queues.descriptor.ClientDescriptor`, `queues.routing.route_ephemeral`, and the NOTIFY
payload and channel of `server.engine.ephemeral`. Time is passed in; nothing waits.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.typing import TYPING_STARTED_EXPIRY_PERIOD_MILLISECONDS
from queues.descriptor import ClientDescriptor
from queues.queue import (
    EPHEMERAL_TTL_SECS,
    MAX_EPHEMERAL_EVENTS,
    EphemeralEvent,
    EventQueue,
)
from queues.registry import QueueRegistry
from queues.routing import route_ephemeral
from queues.types import Capabilities, SharedEvent
from server.engine.ephemeral import (
    EPHEMERAL_CHANNEL,
    MAX_PAYLOAD_BYTES,
    decode_payload,
    encode_payload,
    ephemeral_channel,
)

NOW = 1_000.0


def durable(seq: int) -> SharedEvent:
    return SharedEvent(1, seq, {"type": "stream", "seq": seq}, [1])


def typing(n: int = 0, message_type: str = "direct") -> EphemeralEvent:
    capability = "stream_typing_notifications" if message_type == "stream" else None
    data = {"type": "typing", "op": "start", "message_type": message_type, "n": n}
    return EphemeralEvent(1, data, [1], capability)


def decoded(answer: list[bytes]) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in answer]


def shape(answer: list[bytes]) -> list[tuple[str, int]]:
    """Each handed-out event as (what it is, its id): `d3` for durable seq 3, `t0` for
    typing event 0."""
    return [
        (f"t{e['n']}" if e["type"] == "typing" else f"d{e['seq']}", e["id"])
        for e in decoded(answer)
    ]


def test_the_side_buffer_exists_only_while_used() -> None:
    queue = EventQueue()
    # An idle queue holds no buffer at all, as it holds no deque (`__slots__`: no dict).
    assert queue._ephemeral is None and queue._entries is None
    assert not queue.has_ephemeral and not queue.has_pending(NOW)
    queue.offer_ephemeral(typing(), NOW)
    assert queue.has_ephemeral and queue.has_pending(NOW)
    queue.take_answer(NOW)
    assert queue._ephemeral is None
    assert not hasattr(queue, "__dict__")


def test_an_ephemeral_event_carries_the_newest_durable_id_and_takes_none() -> None:
    queue = EventQueue()
    queue.offer_ephemeral(typing(0), NOW)  # nothing handed out yet: -1, like a heartbeat
    queue.push(durable(1))
    queue.push(durable(2))
    queue.offer_ephemeral(typing(1), NOW)
    assert [p.carried_id for p in queue.ephemeral_contents()] == [-1, 1]
    assert queue.next_event_id == 2 and queue.newest_event_id == 1
    assert shape(queue.take_answer(NOW)) == [("t0", -1), ("d1", 0), ("d2", 1), ("t1", 1)]
    # The durable events stay until acknowledged; the ephemeral ones were handed out once.
    assert shape(queue.take_answer(NOW)) == [("d1", 0), ("d2", 1)]


def test_ephemeral_events_keep_their_arrival_order_among_durable_ones() -> None:
    queue = EventQueue()
    queue.push(durable(5))  # id 0
    queue.offer_ephemeral(typing(0), NOW)
    queue.offer_ephemeral(typing(1), NOW)
    queue.push(durable(7))  # id 1
    queue.push(durable(9))  # id 2
    queue.offer_ephemeral(typing(2), NOW)
    queue.push(durable(11))  # id 3
    assert shape(queue.take_answer(NOW)) == [
        ("d5", 0),
        ("t0", 0),
        ("t1", 0),
        ("d7", 1),
        ("d9", 2),
        ("t2", 2),
        ("d11", 3),
    ]


def test_acknowledged_events_are_not_handed_out_again_around_ephemeral_ones() -> None:
    queue = EventQueue()
    queue.push(durable(1))
    queue.push(durable(2))
    queue.prune(0)  # the client acknowledged id 0
    queue.offer_ephemeral(typing(0), NOW)
    queue.push(durable(3))
    assert shape(queue.take_answer(NOW)) == [("d2", 1), ("t0", 1), ("d3", 2)]


def test_an_ephemeral_event_expires_after_the_typing_expiry_period() -> None:
    assert EPHEMERAL_TTL_SECS * 1000 == TYPING_STARTED_EXPIRY_PERIOD_MILLISECONDS
    queue = EventQueue()
    queue.offer_ephemeral(typing(0), NOW)
    queue.offer_ephemeral(typing(1), NOW + 10)
    assert queue.has_pending(NOW + EPHEMERAL_TTL_SECS - 0.001)
    # At 15 s the first is gone; the second has 10 s left.
    assert shape(queue.take_answer(NOW + EPHEMERAL_TTL_SECS)) == [("t1", -1)]
    queue.offer_ephemeral(typing(2), NOW)
    assert not queue.has_pending(NOW + EPHEMERAL_TTL_SECS)
    assert queue.ephemeral_contents() == [] and queue._ephemeral is None
    assert queue.take_answer(NOW + EPHEMERAL_TTL_SECS) == []


def test_an_expired_event_is_dropped_when_a_new_one_arrives() -> None:
    queue = EventQueue()
    queue.offer_ephemeral(typing(0), NOW)
    queue.offer_ephemeral(typing(1), NOW + EPHEMERAL_TTL_SECS)
    assert [p.event.data["n"] for p in queue.ephemeral_contents()] == [1]


def test_the_side_buffer_is_bounded_and_drops_the_oldest() -> None:
    queue = EventQueue()
    for n in range(MAX_EPHEMERAL_EVENTS + 5):
        queue.offer_ephemeral(typing(n), NOW)
    kept = [p.event.data["n"] for p in queue.ephemeral_contents()]
    assert kept == list(range(5, MAX_EPHEMERAL_EVENTS + 5))
    assert len(queue.take_answer(NOW)) == MAX_EPHEMERAL_EVENTS


def test_ephemeral_events_leave_ids_positions_and_checkpoints_alone() -> None:
    queue = EventQueue(next_event_id=4, last_seq=20, newest_pruned_id=3)
    queue.push(durable(21))  # id 4
    before = (queue.next_event_id, queue.last_seq, queue.newest_pruned_id, queue.contents())
    for n in range(10):
        queue.offer_ephemeral(typing(n), NOW)
    assert (queue.next_event_id, queue.last_seq, queue.newest_pruned_id, queue.contents()) == (
        before
    )
    assert len(queue) == 1
    # The id an ephemeral event carries is a durable event's: acknowledging it checkpoints
    # exactly that event, and is accepted like any id handed out.
    carried = decoded(queue.take_answer(NOW))[-1]["id"]
    queue.check_last_event_id(carried)
    assert queue.checkpoint_after_ack(carried) == (21, 4)
    queue.prune(carried)
    assert queue.empty() and queue.next_event_id == 5
    # The next durable event gets the next id, as if no ephemeral event had come.
    assert queue.push(durable(22)) == 5


@given(
    st.lists(
        st.one_of(
            st.just("durable"),
            st.just("typing"),
            st.just("poll"),
            st.integers(min_value=0, max_value=3),  # a poll acknowledging what it was given
        ),
        max_size=60,
    )
)
def test_clients_bookkeeping_sees_the_same_durable_ids_as_without_ephemeral_events(
    steps: list[object],
) -> None:
    """A client that keeps `max(last_event_id, event id)` (the zulip client, zulip-js,
    zulip-terminal) and acknowledges it receives every durable event once it acknowledges
    past it, with the ids a queue without ephemeral events gives, and each ephemeral
    event at most once."""
    with_typing, without = EventQueue(), EventQueue()
    seq = 0
    last_event_id = -1
    received: dict[int, int] = {}  # durable id -> seq
    typing_seen: list[int] = []
    typing_sent = 0
    for step in steps:
        if step == "durable":
            seq += 1
            assert with_typing.push(durable(seq)) == without.push(durable(seq))
        elif step == "typing":
            with_typing.offer_ephemeral(typing(typing_sent), NOW)
            typing_sent += 1
        else:
            with_typing.check_last_event_id(last_event_id)
            with_typing.prune(last_event_id)
            without.prune(last_event_id)
            answer = decoded(with_typing.take_answer(NOW))
            for event in answer:
                if event["type"] == "typing":
                    typing_seen.append(event["n"])
                else:
                    received[event["id"]] = event["seq"]
                last_event_id = max(last_event_id, event["id"])
            assert [e["id"] for e in answer if e["type"] != "typing"] == [
                entry.event_id for entry in without.contents()
            ]
    assert typing_seen == sorted(set(typing_seen))  # once each, in the order sent
    assert all(received[event_id] == event_id + 1 for event_id in received)
    assert with_typing.next_event_id == without.next_event_id == seq


def test_ephemeral_event_encoding_and_its_refusal_of_an_id() -> None:
    event = EphemeralEvent(1, {"type": "typing", "op": "stop"}, [3, 3, 4])
    assert event.user_ids == frozenset({3, 4}) and event.type == "typing"
    assert json.loads(event.encode_with_id(7)) == {"type": "typing", "op": "stop", "id": 7}
    assert EphemeralEvent(1, {}, []).encode_with_id(-1) == b'{"id":-1}'
    given_bytes = EphemeralEvent(1, {"type": "typing"}, [1], encoded=b'{"type":"typing"}')
    assert given_bytes.encode_with_id(2) == b'{"type":"typing","id":2}'
    with pytest.raises(ValueError, match="must not contain 'id'"):
        EphemeralEvent(1, {"type": "typing", "id": 1}, [1])
    assert "targets=2" in repr(event)


def client(
    queue_id: str,
    user_id: int,
    *,
    realm_id: int = 1,
    event_types: frozenset[str] | None = None,
    capabilities: Capabilities | None = None,
) -> ClientDescriptor:
    return ClientDescriptor(
        queue_id=queue_id,
        realm_id=realm_id,
        user_id=user_id,
        event_types=event_types,
        capabilities=capabilities or Capabilities(),
        client_name="test",
        client_version=None,
        lifespan_secs=600,
        now=0.0,
        queue=EventQueue(),
        legacy_deactivation=False,
    )


def test_the_filter_of_a_queue_event_types_and_capability() -> None:
    everything = client("all", 1)
    typing_only = client("typing", 1, event_types=frozenset({"typing"}))
    no_typing = client("no", 1, event_types=frozenset({"message", "stream"}))
    capable = client("capable", 1, capabilities=Capabilities(stream_typing_notifications=True))
    direct, channel = typing(0, "direct"), typing(1, "stream")
    assert everything.accepts_ephemeral(direct) and typing_only.accepts_ephemeral(direct)
    assert not no_typing.accepts_ephemeral(direct)
    # Zulip: channel typing only for clients that declared `stream_typing_notifications`.
    assert not everything.accepts_ephemeral(channel)
    assert capable.accepts_ephemeral(channel)
    assert not no_typing.offer_ephemeral(direct, NOW)
    assert not no_typing.queue.has_ephemeral


def test_route_ephemeral_reaches_the_target_users_queues_and_wakes_waiting_polls() -> None:
    registry = QueueRegistry()
    waiting = client("w", 1)
    waiting.waiter = object()
    idle = client("i", 1)
    filtered = client("f", 1, event_types=frozenset({"stream"}))
    other_realm = client("r", 2, realm_id=9)
    bystander = client("b", 3)
    for each in (waiting, idle, filtered, other_realm, bystander):
        registry.add(each)
    event = EphemeralEvent(1, {"type": "typing"}, [1, 2])

    woken = route_ephemeral(registry, event, NOW)

    assert woken == [waiting]
    for reached in (waiting, idle):
        assert [p.event for p in reached.queue.ephemeral_contents()] == [event]
    for missed in (filtered, other_realm, bystander):
        assert not missed.queue.has_ephemeral


def test_the_notify_payload_round_trips_and_refuses_what_is_not_one() -> None:
    event = {"type": "typing", "op": "start", "message_type": "stream", "topic": "é"}
    payload = encode_payload(4, {9, 3}, json.dumps(event, separators=(",", ":")), "cap")
    assert json.loads(payload) == {
        "realm_id": 4,
        "user_ids": [3, 9],
        "capability": "cap",
        "event": event,
    }
    assert decode_payload(payload) == (4, [3, 9], event, "cap")
    plain = encode_payload(4, [3], json.dumps(event), None)
    assert decode_payload(plain) == (4, [3], event, None)
    for bad in (
        "[]",
        '{"realm_id": true, "user_ids": [], "event": {"type": "typing"}}',
        '{"realm_id": 1, "user_ids": ["3"], "event": {"type": "typing"}}',
        '{"realm_id": 1, "user_ids": [3], "event": {"type": 5}}',
        '{"realm_id": 1, "user_ids": [3], "event": {"type": "typing", "id": 2}}',
        '{"realm_id": 1, "user_ids": [3], "event": {"type": "typing"}, "capability": 1}',
        "not json",
    ):
        with pytest.raises(ValueError):
            decode_payload(bad)


def test_the_channel_is_the_schemas_own_and_the_payload_bound_is_postgresqls() -> None:
    assert ephemeral_channel("public") == EPHEMERAL_CHANNEL == "eventq_ephemeral"
    one, two = ephemeral_channel("eventq_test_a"), ephemeral_channel("eventq_test_b")
    assert one != two and one.startswith("eventq_ephemeral_")
    assert len(ephemeral_channel("x" * 200)) <= 63 and one.isidentifier()
    assert MAX_PAYLOAD_BYTES < 8000
