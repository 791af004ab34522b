"""Tests for queues.routing: delivery by target user, filters, waking and
overflow removal."""

from queues.descriptor import ClientDescriptor
from queues.queue import MAX_QUEUE_LENGTH, EventQueue
from queues.registry import QueueRegistry
from queues.routing import RouteResult, route
from queues.types import Capabilities, SharedEvent


def make_client(
    queue_id: str,
    user_id: int,
    *,
    realm_id: int = 1,
    event_types: frozenset[str] | None = None,
    legacy_deactivation: bool = False,
) -> ClientDescriptor:
    return ClientDescriptor(
        queue_id=queue_id,
        realm_id=realm_id,
        user_id=user_id,
        event_types=event_types,
        capabilities=Capabilities(),
        client_name="test",
        client_version=None,
        lifespan_secs=600,
        now=0.0,
        queue=EventQueue(),
        legacy_deactivation=legacy_deactivation,
    )


def test_route_result_defaults() -> None:
    assert RouteResult() == RouteResult(woken=[], overflowed=[])


def test_routes_only_to_target_users_and_accepted_types() -> None:
    registry = QueueRegistry()
    target = make_client("t", 1)
    filtered = make_client("f", 1, event_types=frozenset({"stream"}))
    bystander = make_client("b", 2)
    for client in (target, filtered, bystander):
        registry.add(client)
    event = SharedEvent(1, 1, {"type": "realm_user"}, [1, 3])

    result = route(registry, event)

    assert result == RouteResult()
    assert [entry.event for entry in target.queue.contents()] == [event]
    # The event object is shared, not copied.
    assert target.queue.contents()[0].event is event
    assert filtered.queue.empty()
    assert filtered.queue.last_seq == 1  # considered and skipped
    assert bystander.queue.empty()
    assert bystander.queue.last_seq == 0  # never offered


def test_route_wakes_only_accepting_waiters() -> None:
    registry = QueueRegistry()
    waiting = make_client("w", 1)
    waiting_filtered = make_client("wf", 1, event_types=frozenset({"stream"}))
    idle = make_client("i", 1)
    waiting.waiter = object()
    waiting_filtered.waiter = object()
    for client in (waiting, waiting_filtered, idle):
        registry.add(client)

    result = route(registry, SharedEvent(1, 1, {"type": "realm_user"}, [1]))

    assert result.woken == [waiting]
    assert len(idle.queue) == 1


def test_route_legacy_skip() -> None:
    registry = QueueRegistry()
    modern = make_client("m", 1)
    legacy = make_client("l", 1, legacy_deactivation=True)
    registry.add(modern)
    registry.add(legacy)
    peer_remove = {"type": "subscription", "op": "peer_remove", "stream_ids": [4], "user_ids": [9]}
    route(registry, SharedEvent(1, 1, peer_remove, [1], legacy_skip=True))
    route(registry, SharedEvent(1, 2, {"type": "realm_user", "op": "update"}, [1]))
    assert [e.event.type for e in modern.queue.contents()] == ["subscription", "realm_user"]
    assert [e.event.type for e in legacy.queue.contents()] == ["realm_user"]
    assert legacy.queue.contents()[0].event_id == 0


def test_route_ignores_duplicates() -> None:
    registry = QueueRegistry()
    client = make_client("c", 1)
    registry.add(client)
    event = SharedEvent(1, 1, {"type": "realm_user"}, [1])
    route(registry, event)
    client.waiter = object()
    assert route(registry, event) == RouteResult()
    assert len(client.queue) == 1


def test_route_skips_other_realms() -> None:
    registry = QueueRegistry()
    other = make_client("o", 1, realm_id=2)
    registry.add(other)
    route(registry, SharedEvent(1, 1, {"type": "realm_user"}, [1]))
    assert other.queue.empty()


def test_route_reports_overflowed_queue_and_leaves_removal_to_the_caller() -> None:
    registry = QueueRegistry()
    full = make_client("full", 1)
    healthy = make_client("ok", 1)
    full.waiter = object()
    registry.add(full)
    registry.add(healthy)
    for seq in range(1, MAX_QUEUE_LENGTH + 1):
        full.queue.push(SharedEvent(1, seq, {"type": "realm_user"}, [1]))
    healthy.queue.skip(MAX_QUEUE_LENGTH)

    result = route(registry, SharedEvent(1, MAX_QUEUE_LENGTH + 1, {"type": "realm_user"}, [1]))

    assert result.overflowed == [full]
    assert result.woken == []
    assert "full" in registry, "removal is the caller's one removal path"
    assert len(full.queue) == MAX_QUEUE_LENGTH, "the overflowing event was not pushed"
    assert len(healthy.queue) == 1
