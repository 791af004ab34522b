"""Tests for queues.gc: the idle-queue sweep."""

from queues.descriptor import ClientDescriptor
from queues.gc import GC_INTERVAL_SECS, find_expired
from queues.queue import EventQueue
from queues.registry import QueueRegistry
from queues.types import Capabilities


def make_client(queue_id: str, *, now: float, lifespan_secs: int = 600) -> ClientDescriptor:
    return ClientDescriptor(
        queue_id=queue_id,
        realm_id=1,
        user_id=1,
        event_types=None,
        capabilities=Capabilities(),
        client_name="test",
        client_version=None,
        lifespan_secs=lifespan_secs,
        now=now,
        queue=EventQueue(),
        legacy_deactivation=False,
    )


def test_gc_interval_is_shorter_than_default_lifespan() -> None:
    assert 0 < GC_INTERVAL_SECS < 600


def test_collects_only_expired_idle_clients() -> None:
    registry = QueueRegistry()
    old = make_client("old", now=0.0)
    fresh = make_client("fresh", now=500.0)
    waiting = make_client("waiting", now=0.0)
    waiting.waiter = object()
    for client in (old, fresh, waiting):
        registry.add(client)

    assert find_expired(registry, now=599.0) == []
    assert find_expired(registry, now=600.0) == [old]
    assert list(registry) == [old, fresh, waiting], "finding changes nothing"
    registry.remove(old.queue_id)

    # A waiting poll protects the client however old it is; once the poll is
    # answered and the client goes quiet, it is collected.
    assert find_expired(registry, now=1100.0) == [fresh]
    registry.remove(fresh.queue_id)
    waiting.waiter = None
    assert find_expired(registry, now=1100.0) == [waiting]


def test_touch_postpones_collection() -> None:
    registry = QueueRegistry()
    client = make_client("c", now=0.0)
    registry.add(client)
    client.touch(550.0)
    assert find_expired(registry, now=700.0) == []
    assert find_expired(registry, now=1150.0) == [client]
