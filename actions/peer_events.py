"""Grouping peer events (`peer_add`, `peer_remove`) by identical recipients.

Shared by subscription changes and by deactivation and reactivation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

from models.outbox import PendingEvent
from models.tables import Stream
from models.visibility import AudienceIndex


class PeerEventGrouper:
    """Collects (channel, changed users, recipients) and emits grouped peer events.

    Channels with the same changed users and the same recipients share one event.
    Recipients are kept as audience keys until the end, so grouping 1,000 channels of a
    10,000-user realm hashes a few small keys, not 1,000 large sets.
    """

    def __init__(self, op: str, audience: AudienceIndex, *, tell_changed_users: bool) -> None:
        self.op = op
        self.audience = audience
        # peer_add: new subscribers get the full list in their `add` event, so they need
        # no peer event. peer_remove: a removed user who still sees the channel must
        # learn of the others removed with them.
        self.tell_changed_users = tell_changed_users
        self._groups: dict[tuple[frozenset[int], object], list[int]] = defaultdict(list)

    def add(self, stream: Stream, subscribers_after: Collection[int], changed: set[int]) -> None:
        """Record that `changed` users joined or left `stream`."""
        key = self.audience.key(stream, subscribers_after)
        audience_users = self.audience.users(key)
        frozen_changed = frozenset(changed)
        # Everyone in the audience except the changed users learns of all of them.
        self._groups[(frozen_changed, ("audience", key, frozen_changed))].append(stream.id)
        # A changed user who still sees the channel (say an administrator who left it
        # together with others) learns of the others, never of themselves.
        if self.tell_changed_users and len(changed) > 1:
            for user_id in changed & audience_users:
                others = frozen_changed - {user_id}
                self._groups[(others, ("user", user_id))].append(stream.id)

    def events(self) -> list[PendingEvent]:
        """One event per set of identical (users, recipients), in a deterministic order."""
        # Different audience keys can stand for the same users (a private channel whose
        # subscribers are all administrators, say), so merge on the materialized sets.
        merged: dict[tuple[frozenset[int], frozenset[int]], list[int]] = defaultdict(list)
        for (user_ids, recipients_key), stream_ids in self._groups.items():
            recipients = self._recipients(recipients_key)
            if recipients:
                merged[(user_ids, recipients)].extend(stream_ids)
        result = []
        for (user_ids, recipients), stream_ids in sorted(
            merged.items(), key=lambda item: (sorted(item[1]), sorted(item[0][0]))
        ):
            event = {
                "type": "subscription",
                "op": self.op,
                "stream_ids": sorted(stream_ids),
                "user_ids": sorted(user_ids),
            }
            result.append(PendingEvent(event, recipients))
        return result

    def _recipients(self, recipients_key: object) -> frozenset[int]:
        assert isinstance(recipients_key, tuple), "grouper keys are tuples"
        if recipients_key[0] == "user":
            return frozenset({recipients_key[1]})
        _, audience_key, excluded = recipients_key
        return self.audience.users(audience_key) - excluded
