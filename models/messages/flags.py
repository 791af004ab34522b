"""A message's per-user flags: the bits of a `user_message` row and their Zulip names.

This module owns the flag bits eventq stores (`READ_FLAG`, the only one it sets today)
and `flag_names`, the names a client sees beside a message in an event and inside it in
history. A message read from public channel history has no row, and Zulip names it
`read` and `historical`.
"""

from __future__ import annotations

# Zulip's `UserMessage` flag bit for `read`, the only flag eventq sets.
READ_FLAG = 1


def flag_names(flags: int | None) -> list[str]:
    """Zulip's flag names of a `user_message` row; None (no row: a message read from
    public channel history) is Zulip's `read` and `historical`."""
    if flags is None:
        return ["read", "historical"]
    return ["read"] if flags & READ_FLAG else []
