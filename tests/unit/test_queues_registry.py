"""Tests for queues.registry: the three indexes and their cleanup."""

import pytest

from queues.descriptor import ClientDescriptor
from queues.queue import EventQueue
from queues.registry import QueueRegistry
from queues.types import Capabilities


def make_client(queue_id: str, user_id: int, realm_id: int = 1) -> ClientDescriptor:
    return ClientDescriptor(
        queue_id=queue_id,
        realm_id=realm_id,
        user_id=user_id,
        event_types=None,
        capabilities=Capabilities(),
        client_name="test",
        client_version=None,
        lifespan_secs=600,
        now=0.0,
        queue=EventQueue(),
        legacy_deactivation=False,
    )


def test_empty_registry() -> None:
    registry = QueueRegistry()
    assert len(registry) == 0
    assert list(registry) == []
    assert "q" not in registry
    assert registry.get("q") is None
    assert registry.remove("q") is None
    assert registry.for_user(1) == []
    assert registry.for_realm(1) == []


def test_add_and_lookup() -> None:
    registry = QueueRegistry()
    a, b, c = make_client("a", 1), make_client("b", 1), make_client("c", 2, realm_id=9)
    for client in (a, b, c):
        registry.add(client)
    assert len(registry) == 3
    assert list(registry) == [a, b, c]
    assert "a" in registry
    assert registry.get("b") is b
    assert registry.for_user(1) == [a, b]
    assert registry.for_user(2) == [c]
    assert registry.for_realm(1) == [a, b]
    assert registry.for_realm(9) == [c]


def test_add_duplicate_asserts() -> None:
    registry = QueueRegistry()
    registry.add(make_client("a", 1))
    with pytest.raises(ValueError, match="registered twice"):
        registry.add(make_client("a", 2))


def test_remove_cleans_every_index() -> None:
    registry = QueueRegistry()
    a, b = make_client("a", 1), make_client("b", 1)
    registry.add(a)
    registry.add(b)
    assert registry.remove("a") is a
    assert registry.for_user(1) == [b]
    assert registry.remove("b") is b
    assert len(registry) == 0
    # Empty index entries are deleted, not left as empty dicts.
    assert registry._by_user == {}
    assert registry._by_realm == {}
    assert registry.remove("b") is None


def test_iteration_is_a_snapshot() -> None:
    registry = QueueRegistry()
    registry.add(make_client("a", 1))
    registry.add(make_client("b", 2))
    for client in registry:
        registry.remove(client.queue_id)
    assert len(registry) == 0


def test_removing_a_users_queues_empties_their_index() -> None:
    registry = QueueRegistry()
    a, b, c = make_client("a", 1), make_client("b", 2), make_client("c", 1)
    for client in (a, b, c):
        registry.add(client)
    for client in registry.for_user(1):
        registry.remove(client.queue_id)
    assert list(registry) == [b]
    assert registry.for_user(1) == []
    assert registry.for_realm(1) == [b]
    assert set(registry._by_user) == {2}
