"""Every live queue of this process, indexed by queue id, by owner and by
realm, so routing touches only the queues of an event's target users.

The registry only indexes; it never delivers, expires or answers polls.
Each index maps a key to a dict keyed by queue id (an insertion-ordered set
that also holds the descriptor), so lookups cost one dict access and
iteration order is registration order, which keeps routing deterministic.

Not thread-safe; call from the IOLoop.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from queues.descriptor import ClientDescriptor


class QueueRegistry:
    """Live `ClientDescriptor` objects with their three indexes."""

    __slots__ = ("_by_queue_id", "_by_user", "_by_realm")

    def __init__(self) -> None:
        self._by_queue_id: dict[str, ClientDescriptor] = {}
        self._by_user: dict[int, dict[str, ClientDescriptor]] = {}
        self._by_realm: dict[int, dict[str, ClientDescriptor]] = {}

    def __len__(self) -> int:
        return len(self._by_queue_id)

    def __iter__(self) -> Iterator[ClientDescriptor]:
        # A snapshot, so callers (the GC sweep) may remove while iterating.
        return iter(list(self._by_queue_id.values()))

    def __contains__(self, queue_id: object) -> bool:
        return queue_id in self._by_queue_id

    def add(self, client: ClientDescriptor) -> None:
        if client.queue_id in self._by_queue_id:
            raise ValueError(f"queue {client.queue_id!r} registered twice: ids must be unique")
        self._by_queue_id[client.queue_id] = client
        self._by_user.setdefault(client.user_id, {})[client.queue_id] = client
        self._by_realm.setdefault(client.realm_id, {})[client.queue_id] = client

    def remove(self, queue_id: str) -> ClientDescriptor | None:
        """Unregister a queue; None if it was not registered. Empty index
        entries are deleted so departed users cost no memory."""
        client = self._by_queue_id.pop(queue_id, None)
        if client is None:
            return None
        _discard(self._by_user, client.user_id, queue_id)
        _discard(self._by_realm, client.realm_id, queue_id)
        return client

    def get(self, queue_id: str) -> ClientDescriptor | None:
        return self._by_queue_id.get(queue_id)

    def for_user(self, user_id: int) -> list[ClientDescriptor]:
        """The user's queues in registration order (a new list)."""
        queues = self._by_user.get(user_id)
        return [] if queues is None else list(queues.values())

    def iter_user(self, user_id: int) -> Iterable[ClientDescriptor]:
        """The user's queues in registration order, without a copy: for routing, which
        runs once per recipient of every event and changes no index while it iterates."""
        queues = self._by_user.get(user_id)
        return () if queues is None else queues.values()

    def for_realm(self, realm_id: int) -> list[ClientDescriptor]:
        """The realm's queues in registration order (a new list)."""
        queues = self._by_realm.get(realm_id)
        return [] if queues is None else list(queues.values())


def _discard(index: dict[int, dict[str, ClientDescriptor]], key: int, queue_id: str) -> None:
    bucket = index[key]
    del bucket[queue_id]
    if not bucket:
        del index[key]
