"""Grouping peer events (`peer_add`, `peer_remove`) by identical recipients.

Shared by subscription changes and by deactivation and reactivation. Each recipient
gets, for each set of changed users, exactly one event listing every channel of the
change it can see; recipients for whom that list is the same share the event. So a
deactivation in 1,000 channels of a 10,000-user realm writes at most one peer event per
user, not one per channel and audience: the outbox holds about as many recipient
entries as the realm has users.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection
from typing import Literal

from models.outbox import PendingEvent
from models.tables import Stream
from models.visibility import AudienceIndex, AudienceKey
from models.wire import subscription_peer_event

# The audience bases of `AudienceIndex`, each contained in the next: an administrator is
# a non-guest, a non-guest is an active user. A user's base class decides which base
# audiences include them.
_BASES_BY_CLASS = {
    "admins": ("admins", "non_guests", "everyone"),
    "non_guests": ("non_guests", "everyone"),
    "everyone": ("everyone",),
}


class PeerEventGrouper:
    """Collects (channel, changed users) pairs and emits grouped peer events."""

    def __init__(
        self,
        op: Literal["peer_add", "peer_remove"],
        audience: AudienceIndex,
        *,
        tell_changed_users: bool,
    ) -> None:
        self.op = op
        self.audience = audience
        # peer_add: new subscribers get the full list in their `add` event, so they need
        # no peer event. peer_remove: a removed user who still sees the channel must
        # learn of the others removed with them (never of themselves).
        self.tell_changed_users = tell_changed_users
        self._by_changed: dict[frozenset[int], list[tuple[int, AudienceKey]]] = defaultdict(list)

    def add(self, stream: Stream, subscribers_after: Collection[int], changed: set[int]) -> None:
        """Record that `changed` users joined or left `stream`."""
        key = self.audience.key(stream, subscribers_after)
        self._by_changed[frozenset(changed)].append((stream.id, key))

    def events(self) -> list[PendingEvent]:
        """The grouped events, in a deterministic order."""
        groups: dict[tuple[frozenset[int], tuple[int, ...]], set[int]] = defaultdict(set)
        for changed, entries in self._by_changed.items():
            for (user_ids, stream_ids), recipients in self._group(changed, entries).items():
                groups[(user_ids, stream_ids)] |= recipients
        result = []
        for (user_ids, stream_ids), recipients in sorted(
            groups.items(), key=lambda item: (item[0][1], sorted(item[0][0]))
        ):
            event = subscription_peer_event(self.op, stream_ids, user_ids)
            result.append(PendingEvent(event, recipients))
        return result

    def _group(
        self, changed: frozenset[int], entries: list[tuple[int, AudienceKey]]
    ) -> dict[tuple[frozenset[int], tuple[int, ...]], set[int]]:
        """Recipients by (users named, channels listed) for one set of changed users."""
        by_base: dict[str, list[int]] = defaultdict(list)
        extra: dict[int, list[int]] = defaultdict(list)
        for stream_id, key in entries:
            by_base[key.base].append(stream_id)
            for user_id in key.extra:
                extra[user_id].append(stream_id)
        class_streams = {
            name: sorted(sid for base in bases for sid in by_base[base])
            for name, bases in _BASES_BY_CLASS.items()
        }
        admins = self.audience.base("admins")
        non_guests = self.audience.base("non_guests")
        classes = {
            "admins": admins,
            "non_guests": non_guests - admins,
            "everyone": self.audience.base("everyone") - non_guests,
        }

        def class_of(user_id: int) -> str:
            if user_id in admins:
                return "admins"
            return "non_guests" if user_id in non_guests else "everyone"

        def visible(user_id: int) -> tuple[int, ...]:
            return tuple(sorted({*class_streams[class_of(user_id)], *extra.get(user_id, ())}))

        groups: dict[tuple[frozenset[int], tuple[int, ...]], set[int]] = defaultdict(set)
        for name, members in classes.items():
            plain = members - extra.keys() - changed
            if plain and class_streams[name]:
                groups[(changed, tuple(class_streams[name]))] |= plain
        for user_id in extra.keys() - changed:
            groups[(changed, visible(user_id))].add(user_id)
        if self.tell_changed_users and len(changed) > 1:
            for user_id in changed & self.audience.base("everyone"):
                streams = visible(user_id)
                if streams:
                    groups[(changed - {user_id}, streams)].add(user_id)
        return groups
