"""A message's per-user flags: the bits of a `user_message` row and their Zulip names.

This module owns the flag bits eventq stores and their names: `READ_FLAG`, set on the
sender's own copy and by marking messages read; `STARRED_FLAG` and `COLLAPSED_FLAG`,
which only the user changes (`actions.message_flags`); and `HISTORICAL_FLAG`, on a row
created for a message the user did not receive but could read in a channel's public
history, when they change one of its flags; and the mention flags, set when a message is
sent (`actions.messages`): `MENTIONED_FLAG` for a recipient mentioned by name,
`STREAM_WILDCARD_MENTIONED_FLAG` for every recipient of a message with a channel
wildcard, `TOPIC_WILDCARD_MENTIONED_FLAG` for the topic's participants when it has the
topic wildcard. The bits are the positions of Zulip's `UserMessage` flags.

`flag_names` gives the names a client sees beside a message in an event and inside it in
history, in Zulip's order, with Zulip's deprecated `wildcard_mentioned` last, present
exactly when either wildcard flag is (Zulip's rule since feature level 224); a message
read from public channel history without a row is Zulip's `read` and `historical`
(`HISTORICAL_DEFAULT_FLAGS`).

It also states which names a client may change (`EDITABLE_FLAGS`) and which exist in
Zulip's API but never change on request (`NON_EDITABLE_FLAGS`: the mention flags, alert
words, which eventq never sets, and `historical`).
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
# The flags that put an unread message in `unread_msgs`' `mentions`.
MENTION_FLAGS = MENTIONED_FLAG | STREAM_WILDCARD_MENTIONED_FLAG | TOPIC_WILDCARD_MENTIONED_FLAG
WILDCARD_MENTION_FLAGS = STREAM_WILDCARD_MENTIONED_FLAG | TOPIC_WILDCARD_MENTIONED_FLAG
# Every bit eventq stores with its name, in bit order (the order Zulip lists them).
_NAMED_BITS = (
    (READ_FLAG, "read"),
    (STARRED_FLAG, "starred"),
    (COLLAPSED_FLAG, "collapsed"),
    (MENTIONED_FLAG, "mentioned"),
    (STREAM_WILDCARD_MENTIONED_FLAG, "stream_wildcard_mentioned"),
    (TOPIC_WILDCARD_MENTIONED_FLAG, "topic_wildcard_mentioned"),
    (HISTORICAL_FLAG, "historical"),
)
# Zulip's deprecated name for either wildcard flag, still sent for older clients, after
# the others (zerver/lib/message.py and message_send.py append it).
LEGACY_WILDCARD_MENTIONED = "wildcard_mentioned"


def flag_names(flags: int | None) -> list[str]:
    """Zulip's flag names of a `user_message` row; None (no row: a message read from
    public channel history) is Zulip's `read` and `historical`."""
    if flags is None:
        flags = HISTORICAL_DEFAULT_FLAGS
    names = [name for bit, name in _NAMED_BITS if flags & bit]
    if flags & WILDCARD_MENTION_FLAGS:
        names.append(LEGACY_WILDCARD_MENTIONED)
    return names
