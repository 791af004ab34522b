"""A message's per-user flags: the bits of a `user_message` row and their Zulip names.

This module owns the flag bits eventq stores and their names: `READ_FLAG`, set on the
sender's own copy and by marking messages read; `STARRED_FLAG` and `COLLAPSED_FLAG`,
which only the user changes (`actions.message_flags`); and `HISTORICAL_FLAG`, on a row
created for a message the user did not receive but could read in a channel's public
history, when they change one of its flags. The bits are the positions of Zulip's
`UserMessage` flags. `flag_names` gives the names a client sees beside a message in an
event and inside it in history; a message read from public channel history without a
row is Zulip's `read` and `historical` (`HISTORICAL_DEFAULT_FLAGS`).

It also states which names a client may change (`EDITABLE_FLAGS`) and which exist in
Zulip's API but never change on request (`NON_EDITABLE_FLAGS`: mentions and alert words,
which eventq never sets, and `historical`).
"""

from __future__ import annotations

READ_FLAG = 1
STARRED_FLAG = 2
COLLAPSED_FLAG = 4
# Set when a message is sent or edited (`@**Name**`; `@**all**`, `@**everyone**`,
# `@**channel**`; `@**topic**`), never on request.
MENTIONED_FLAG = 8
STREAM_WILDCARD_MENTIONED_FLAG = 16
TOPIC_WILDCARD_MENTIONED_FLAG = 32
HISTORICAL_FLAG = 1024
# What a message without a row reads as (Zulip's default for "historical" messages): a
# row created for such a message starts from these flags.
HISTORICAL_DEFAULT_FLAGS = READ_FLAG | HISTORICAL_FLAG

# The flags `POST /messages/flags` changes, by name, in Zulip's order.
EDITABLE_FLAGS: dict[str, int] = {
    "read": READ_FLAG,
    "starred": STARRED_FLAG,
    "collapsed": COLLAPSED_FLAG,
}
# Zulip's other API flags: refused as "not editable", never as unknown.
NON_EDITABLE_FLAGS = frozenset(
    {
        "mentioned",
        "stream_wildcard_mentioned",
        "topic_wildcard_mentioned",
        "wildcard_mentioned",
        "has_alert_word",
        "historical",
    }
)
# Every bit eventq stores with its name, in bit order (the order Zulip lists them).
_NAMED_BITS = (
    (READ_FLAG, "read"),
    (STARRED_FLAG, "starred"),
    (COLLAPSED_FLAG, "collapsed"),
    (HISTORICAL_FLAG, "historical"),
)


def flag_names(flags: int | None) -> list[str]:
    """Zulip's flag names of a `user_message` row; None (no row: a message read from
    public channel history) is Zulip's `read` and `historical`."""
    if flags is None:
        flags = HISTORICAL_DEFAULT_FLAGS
    return [name for bit, name in _NAMED_BITS if flags & bit]
