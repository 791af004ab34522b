"""Tests for queues.queue: ids, prune, acknowledgement checks, overflow and
checkpoint replay."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queues.queue import (
    MAX_QUEUE_LENGTH,
    BadLastEventId,
    EventQueue,
    OutOfOrder,
    QueuedEvent,
    QueueOverflow,
)
from queues.types import SharedEvent


def ev(seq: int, event_type: str = "realm_user") -> SharedEvent:
    return SharedEvent(1, seq, {"type": event_type, "n": seq}, [1])


def test_fresh_queue() -> None:
    queue = EventQueue()
    assert len(queue) == 0
    assert queue.empty()
    assert queue.next_event_id == 0
    assert queue.newest_event_id == -1
    assert queue.last_seq == 0
    assert queue.newest_pruned_id is None
    assert queue.contents() == []
    assert queue.encoded_events() == []
    assert "len=0" in repr(queue)


def test_push_assigns_increasing_ids_and_tracks_seq() -> None:
    queue = EventQueue()
    first, second = ev(3), ev(8)
    assert queue.push(first) == 0
    assert queue.push(second) == 1
    assert queue.last_seq == 8
    assert queue.next_event_id == 2
    assert queue.newest_event_id == 1
    assert not queue.empty()
    assert len(queue) == 2
    assert queue.contents() == [QueuedEvent(0, first), QueuedEvent(1, second)]
    # The queue stores the shared object itself, not a copy.
    assert queue.contents()[0].event is first


def test_push_starts_at_given_position() -> None:
    queue = EventQueue(next_event_id=41, last_seq=100, newest_pruned_id=40)
    assert queue.push(ev(101)) == 41
    assert queue.newest_pruned_id == 40


def test_push_rejects_old_seq() -> None:
    queue = EventQueue(last_seq=5)
    with pytest.raises(OutOfOrder, match="strictly increasing seq order"):
        queue.push(ev(5))


def test_skip_advances_last_seq_without_id() -> None:
    queue = EventQueue()
    queue.skip(4)
    assert queue.last_seq == 4
    assert queue.next_event_id == 0
    with pytest.raises(OutOfOrder, match="strictly increasing seq order"):
        queue.skip(4)


def test_encoded_events() -> None:
    queue = EventQueue()
    queue.push(ev(1))
    queue.push(ev(2))
    decoded = [json.loads(raw) for raw in queue.encoded_events()]
    assert decoded == [
        {"type": "realm_user", "n": 1, "id": 0},
        {"type": "realm_user", "n": 2, "id": 1},
    ]


def test_prune() -> None:
    queue = EventQueue()
    for seq in range(1, 6):
        queue.push(ev(seq))
    queue.prune(-1)
    assert len(queue) == 5
    assert queue.newest_pruned_id is None
    queue.prune(2)
    assert [entry.event_id for entry in queue.contents()] == [3, 4]
    assert queue.newest_pruned_id == 2
    # Acknowledging again, or something older, changes nothing.
    queue.prune(1)
    assert queue.newest_pruned_id == 2
    queue.prune(100)
    assert queue.empty()
    assert queue.newest_pruned_id == 4
    # Ids keep increasing after the queue drained.
    assert queue.push(ev(6)) == 5


def test_check_last_event_id_accepts_valid_positions() -> None:
    queue = EventQueue()
    queue.check_last_event_id(-1)
    for seq in range(1, 4):
        queue.push(ev(seq))
    queue.prune(0)
    for last_event_id in (0, 1, 2):
        queue.check_last_event_id(last_event_id)


def test_check_last_event_id_pruned_error() -> None:
    queue = EventQueue()
    for seq in range(1, 4):
        queue.push(ev(seq))
    queue.prune(1)
    with pytest.raises(BadLastEventId) as excinfo:
        queue.check_last_event_id(0)
    assert str(excinfo.value) == "An event newer than 0 has already been pruned!"
    # BadLastEventId is a ValueError, so generic handlers still map it.
    assert isinstance(excinfo.value, ValueError)


def test_check_last_event_id_fresh_queue_below_minus_one() -> None:
    with pytest.raises(BadLastEventId, match=r"^An event newer than -2 has already been pruned!$"):
        EventQueue().check_last_event_id(-2)


def test_check_last_event_id_future_error() -> None:
    queue = EventQueue()
    queue.push(ev(1))
    with pytest.raises(BadLastEventId) as excinfo:
        queue.check_last_event_id(1)
    assert str(excinfo.value) == "Event 1 was not in this queue"
    with pytest.raises(BadLastEventId, match=r"^Event 0 was not in this queue$"):
        EventQueue().check_last_event_id(0)


def test_overflow() -> None:
    queue = EventQueue()
    for seq in range(1, MAX_QUEUE_LENGTH + 1):
        queue.push(ev(seq))
    assert len(queue) == MAX_QUEUE_LENGTH
    with pytest.raises(QueueOverflow, match="event queue is full"):
        queue.push(ev(MAX_QUEUE_LENGTH + 1))
    # A failed push leaves the queue as it was.
    assert len(queue) == MAX_QUEUE_LENGTH
    assert queue.last_seq == MAX_QUEUE_LENGTH
    assert queue.next_event_id == MAX_QUEUE_LENGTH
    # Acknowledging makes room again.
    queue.prune(0)
    assert queue.push(ev(MAX_QUEUE_LENGTH + 1)) == MAX_QUEUE_LENGTH


def test_checkpoint_after_ack() -> None:
    queue = EventQueue()
    assert queue.checkpoint_after_ack(0) is None
    queue.push(ev(2))
    queue.skip(3)
    queue.push(ev(5))
    assert queue.checkpoint_after_ack(0) == (2, 0)
    assert queue.checkpoint_after_ack(1) == (5, 1)
    assert queue.checkpoint_after_ack(2) is None
    assert queue.checkpoint_after_ack(-1) is None
    queue.prune(0)
    assert queue.checkpoint_after_ack(0) is None
    assert queue.checkpoint_after_ack(1) == (5, 1)


def fill(queue: EventQueue, events: list[SharedEvent], wanted: set[str]) -> dict[int, int]:
    """Offer outbox events after queue.last_seq through a type filter, like
    ClientDescriptor.deliver; return seq -> assigned id."""
    ids: dict[int, int] = {}
    for event in events:
        if event.seq <= queue.last_seq:
            continue
        if event.type in wanted:
            ids[event.seq] = queue.push(event)
        else:
            queue.skip(event.seq)
    return ids


def test_checkpoint_replay_reproduces_ids() -> None:
    types = ["realm_user", "subscription", "stream", "subscription", "realm_user"] * 4
    outbox = [ev(seq, event_type) for seq, event_type in enumerate(types, start=1)]
    wanted = {"realm_user", "subscription"}

    original = EventQueue()
    original_ids = fill(original, outbox, wanted)
    ack = 6
    checkpoint = original.checkpoint_after_ack(ack)
    assert checkpoint is not None
    original.prune(ack)
    seq, event_id = checkpoint
    assert event_id == ack

    rebuilt = EventQueue(next_event_id=event_id + 1, last_seq=seq, newest_pruned_id=event_id)
    rebuilt_ids = fill(rebuilt, outbox, wanted)
    assert rebuilt_ids == {s: i for s, i in original_ids.items() if s > seq}
    assert rebuilt.encoded_events() == original.encoded_events()
    assert rebuilt.next_event_id == original.next_event_id
    assert rebuilt.newest_pruned_id == original.newest_pruned_id


# One step of a random session: push an outbox event (accepted or filtered),
# or acknowledge some offset back from the newest id.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("event"), st.booleans()),
        st.tuples(st.just("ack"), st.integers(min_value=0, max_value=5)),
    ),
    max_size=60,
)


@given(steps=steps)
def test_random_sessions_keep_ids_and_replay(steps: list[tuple[str, object]]) -> None:
    outbox: list[SharedEvent] = []
    queue = EventQueue()
    checkpoint: tuple[int, int] | None = None
    assigned: dict[int, int] = {}
    last_id = -1
    for kind, arg in steps:
        if kind == "event":
            seq = len(outbox) + 1
            event = ev(seq, "keep" if arg else "drop")
            outbox.append(event)
            for s, i in fill(queue, [event], {"keep"}).items():
                assert i > last_id, "ids must be strictly increasing"
                last_id = i
                assigned[s] = i
        else:
            assert isinstance(arg, int)
            ack = queue.newest_event_id - arg
            if ack < -1:
                continue
            pruned = -1 if queue.newest_pruned_id is None else queue.newest_pruned_id
            if ack < pruned:
                with pytest.raises(BadLastEventId):
                    queue.check_last_event_id(ack)
                continue
            queue.check_last_event_id(ack)
            found = queue.checkpoint_after_ack(ack)
            if found is not None:
                checkpoint = found
            queue.prune(ack)

    seq0, id0 = checkpoint if checkpoint is not None else (0, -1)
    rebuilt = EventQueue(
        next_event_id=id0 + 1,
        last_seq=seq0,
        newest_pruned_id=None if checkpoint is None else id0,
    )
    replayed = fill(rebuilt, outbox, {"keep"})
    assert replayed == {s: i for s, i in assigned.items() if s > seq0}
    assert rebuilt.next_event_id == queue.next_event_id
    # Every event the original still holds is in the rebuilt queue, same id.
    held = {entry.event_id: entry.event.seq for entry in rebuilt.contents()}
    for entry in queue.contents():
        assert held[entry.event_id] == entry.event.seq
