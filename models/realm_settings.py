"""The realm settings eventq enforces and reports: who may edit, move and delete messages,
and for how long.

eventq has no per-realm settings table: every realm runs with these values, which are
Zulip's defaults for a new organization at feature level 377 (Zulip's `Realm` model and
its `REALM_PERMISSION_GROUP_SETTINGS`, checked one by one). The message actions enforce
them (`actions.message_edits`, `actions.reactions`) and `register` reports them (its
`realm_*` keys), so a client's idea of what it may do matches what the server allows.

Zulip's permission groups are system groups here, named by the role they admit
(`models.tables.Role`): "role:everyone" admits guests too, "role:members" every role but
guest, "role:moderators" moderators, administrators and owners, "role:administrators"
administrators and owners.
"""

from __future__ import annotations

from typing import Final

# Zulip's "Allow message editing" (`realm_allow_message_editing`, default true).
ALLOW_MESSAGE_EDITING: Final = True
# How long after sending an author may edit a message's content (`None`: no limit).
# Zulip's DEFAULT_MESSAGE_CONTENT_EDIT_LIMIT_SECONDS: 10 minutes.
MESSAGE_CONTENT_EDIT_LIMIT_SECONDS: Final[int | None] = 600
# How long after sending a user below moderator may move a message to another topic or
# channel: Zulip's DEFAULT_MOVE_MESSAGE_LIMIT_SECONDS, 7 days, for both.
MOVE_MESSAGES_WITHIN_STREAM_LIMIT_SECONDS: Final[int | None] = 604800
MOVE_MESSAGES_BETWEEN_STREAMS_LIMIT_SECONDS: Final[int | None] = 604800
# How long after sending an author may delete their own message (`None`: no limit).
# Zulip's DEFAULT_MESSAGE_CONTENT_DELETE_LIMIT_SECONDS is 10 minutes (was None here).
MESSAGE_CONTENT_DELETE_LIMIT_SECONDS: Final[int | None] = 600
# Who sees a message's edit history: "all", "moves" or "none" (Zulip FL 358; default "all").
MESSAGE_EDIT_HISTORY_VISIBILITY_POLICY: Final = "all"

# Zulip's permission groups for messages, at their defaults (the system group names
# `register` reports): moving to another topic and resolving topics, everyone; moving
# to another channel, members (not guests); deleting one's own message, everyone;
# deleting any message, administrators.
CAN_MOVE_MESSAGES_BETWEEN_TOPICS_GROUP: Final = "role:everyone"
CAN_RESOLVE_TOPICS_GROUP: Final = "role:everyone"
CAN_MOVE_MESSAGES_BETWEEN_CHANNELS_GROUP: Final = "role:members"
CAN_DELETE_OWN_MESSAGE_GROUP: Final = "role:everyone"
CAN_DELETE_ANY_MESSAGE_GROUP: Final = "role:administrators"

# The roles each system group admits (Zulip's role numbers, `models.tables.Role`).
_GROUP_MAX_ROLE: Final = {
    "role:everyone": 600,
    "role:members": 400,
    "role:moderators": 300,
    "role:administrators": 200,
    "role:owners": 100,
    "role:nobody": 0,
}


def role_in_group(role: int, group: str) -> bool:
    """Whether a user of this role belongs to this system group (a lower role number
    has more power, so each group admits every role up to its bound)."""
    return role <= _GROUP_MAX_ROLE[group]
