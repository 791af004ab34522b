"""A user's own settings of their subscriptions, as Zulip has them: changing them
(`POST /users/me/subscriptions/properties`) and the colour a new subscription gets.

The settings are Zulip's personal subscription properties (stored as `Subscription`
columns, revision 0012; their wire form is `models.wire.SubscriptionSettings`): `color`,
`is_muted` (and its legacy inverse `in_home_view`, which is stored as `is_muted`),
`pin_to_top`, and the five notification settings `desktop_notifications`,
`audible_notifications`, `push_notifications`, `email_notifications` and
`wildcard_mentions_notify`, which stay null ("inherit the user's global setting") until
the user sets them.

`check_property_change` validates one requested change before anything is locked, with
Zulip's wording: "Unknown subscription property: x", "x is not a boolean", "color is not
a valid hex color code" (`#` and three to six hex digits, Zulip's `check_color`).
`check_update_subscription_properties` then takes the realm lock in its shared mode
(`actions.actors.lock_realm_for_actor`): the change is the user's own and changes what
no one else sees, like a change of one's message flags. Under the lock it reads every
named channel with the user's subscription to it in one statement and refuses, before
writing anything, a channel the user cannot see or that does not exist ("Invalid channel
ID", as Zulip's `access_stream_by_id`) and one they are not subscribed to ("Not
subscribed to channel ID n"). So a request is all or nothing, where Zulip applies the
changes before the refused one.

Events, to the user's own queues only, in the order of the request, one per change even
when the value does not change, as Zulip sends them: `subscription` `update` with
`stream_id`, `property` and `value`; a change of `is_muted` or `in_home_view` sends two,
`in_home_view` first and then `is_muted` (Zulip's events since feature level 139).

Concurrency. The rows are updated by primary key with the values computed from the
request alone (never read-modify-write), so two requests of the same user at once give
rows that match their events applied in sequence order: on PostgreSQL the second
`UPDATE` of a row waits for the first transaction, which also appends its events first;
SQLite runs one writer at a time.

Colours (`pick_colors`): Zulip's palette of 24, each new subscription of a user getting,
in channel id order, the first colour none of that user's subscriptions (active or not)
has; once all are taken, the palette's entry at the channel id modulo 24 (Zulip uses the
recipient id, which eventq creates only with a channel's first message). A subscription
that is renewed keeps the settings it had.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from actions.actors import lock_realm_for_actor
from actions.errors import InvalidInput
from models.outbox import PendingEvent, append_events
from models.tables import Stream, Subscription
from models.visibility import can_see_stream
from models.wire import subscription_update_event

# Zulip's palette for new subscriptions (`zerver/lib/stream_color.py`), in its order.
STREAM_ASSIGNMENT_COLORS = (
    "#76ce90",
    "#fae589",
    "#a6c7e5",
    "#e79ab5",
    "#bfd56f",
    "#f4ae55",
    "#b0a5fd",
    "#addfe5",
    "#f5ce6e",
    "#c2726a",
    "#94c849",
    "#bd86e5",
    "#ee7e4a",
    "#a6dcbf",
    "#95a5fd",
    "#53a063",
    "#9987e1",
    "#e4523d",
    "#c2c2c2",
    "#4f8de4",
    "#c6a8ad",
    "#e7cc4d",
    "#c8bebf",
    "#a47462",
)
# The properties whose value is a boolean; `color` is the one string.
BOOLEAN_PROPERTIES = frozenset(
    {
        "is_muted",
        "in_home_view",
        "pin_to_top",
        "desktop_notifications",
        "audible_notifications",
        "push_notifications",
        "email_notifications",
        "wildcard_mentions_notify",
    }
)
COLOR_PROPERTY = "color"
# Zulip's `check_color`: `#` and three to six hex digits.
HEX_COLOR = re.compile(r"#[0-9a-fA-F]{3,6}")
# The stored column of the legacy property, whose value is its inverse.
LEGACY_MUTE_PROPERTY = "in_home_view"
MUTE_PROPERTY = "is_muted"


def pick_colors(used: Collection[str], stream_ids: Iterable[int]) -> dict[int, str]:
    """The colours of one user's new subscriptions to `stream_ids`, given the colours
    their existing subscriptions have (see the module)."""
    available = [color for color in STREAM_ASSIGNMENT_COLORS if color not in set(used)]
    picked: dict[int, str] = {}
    for index, stream_id in enumerate(sorted(set(stream_ids))):
        if index < len(available):
            picked[stream_id] = available[index]
        else:
            picked[stream_id] = STREAM_ASSIGNMENT_COLORS[stream_id % len(STREAM_ASSIGNMENT_COLORS)]
    return picked


@dataclass(frozen=True, slots=True)
class PropertyChange:
    """One requested change, validated: the channel, the property and its new value."""

    stream_id: int
    prop: str
    value: str | bool

    @property
    def column(self) -> str:
        """The `Subscription` column it writes (`in_home_view` is stored as `is_muted`)."""
        return MUTE_PROPERTY if self.prop == LEGACY_MUTE_PROPERTY else self.prop

    @property
    def stored_value(self) -> str | bool:
        """The value it writes in `column`."""
        return not self.value if self.prop == LEGACY_MUTE_PROPERTY else self.value

    def events(self) -> list[dict[str, Any]]:
        """Its `subscription` `update` events, in Zulip's order."""
        if self.column != MUTE_PROPERTY:
            return [subscription_update_event(self.stream_id, self.column, self.stored_value)]
        muted = bool(self.stored_value)
        return [
            subscription_update_event(self.stream_id, LEGACY_MUTE_PROPERTY, not muted),
            subscription_update_event(self.stream_id, MUTE_PROPERTY, muted),
        ]


def check_property_change(stream_id: int, prop: str, value: Any) -> PropertyChange:
    """One change, checked as Zulip checks it (the property, then its value's type)."""
    if prop == COLOR_PROPERTY:
        if not isinstance(value, str):
            raise InvalidInput("color is not a string")
        if not HEX_COLOR.fullmatch(value):
            raise InvalidInput("color is not a valid hex color code")
        return PropertyChange(stream_id, prop, value)
    if prop not in BOOLEAN_PROPERTIES:
        raise InvalidInput(f"Unknown subscription property: {prop}")
    if not isinstance(value, bool):
        raise InvalidInput(f"{prop} is not a boolean")
    return PropertyChange(stream_id, prop, value)


class InvalidChannelId(InvalidInput):
    """A channel that does not exist, or that the user may not see: Zulip's answer for
    both, so a private channel's existence is not revealed."""

    def __init__(self) -> None:
        super().__init__("Invalid channel ID")


class NotSubscribed(InvalidInput):
    """A channel the user sees but is not (or no longer) subscribed to."""

    def __init__(self, stream_id: int) -> None:
        super().__init__(f"Not subscribed to channel ID {stream_id}")


def check_update_subscription_properties(
    session: Session, realm_id: int, user_id: int, changes: Sequence[PropertyChange]
) -> None:
    """Apply the user's `changes` to their own subscriptions, in order (see the module).

    The statements do not grow with the number of channels: the lock with the actor,
    one read of the channels and subscriptions, one `UPDATE` per distinct set of columns
    a row changes (one when every channel changes the same properties), and the events.
    """
    user = lock_realm_for_actor(session, realm_id, user_id, shared=True).user
    if not changes:
        return
    named = sorted({change.stream_id for change in changes})
    found = {
        stream.id: (stream, subscription)
        for stream, subscription in session.execute(
            select(Stream, Subscription)
            .outerjoin(
                Subscription,
                (Subscription.stream_id == Stream.id) & (Subscription.user_profile_id == user.id),
            )
            .where(Stream.realm_id == realm_id, Stream.id.in_(named))
        )
    }
    # Every refusal before anything is written, the first bad change reported.
    row_ids: dict[int, int] = {}
    for change in changes:
        stream, subscription = found.get(change.stream_id, (None, None))
        subscribed = subscription is not None and subscription.active
        if stream is None or not can_see_stream(user.role, stream, subscribed):
            raise InvalidChannelId()
        if subscription is None or not subscribed:
            raise NotSubscribed(change.stream_id)
        row_ids[change.stream_id] = subscription.id
    # Later changes of a column win, as Zulip applies them one after another.
    values: dict[int, dict[str, str | bool]] = defaultdict(dict)
    for change in changes:
        values[row_ids[change.stream_id]][change.column] = change.stored_value
    _write_rows(session, values)
    events = [event for change in changes for event in change.events()]
    append_events(session, realm_id, [PendingEvent(event, [user.id]) for event in events])


def _write_rows(session: Session, values: Mapping[int, Mapping[str, str | bool]]) -> None:
    """Update the rows by primary key; rows that change the same columns share one
    statement (executemany)."""
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for row_id, columns in sorted(values.items()):
        by_columns[tuple(sorted(columns))].append({"id": row_id, **columns})
    for rows in by_columns.values():
        session.execute(update(Subscription), rows)
