"""The realm settings eventq enforces and reports: who may edit, move and delete messages,
and for how long.

eventq has no per-realm settings table: every realm runs with these values, which are
Zulip's defaults for a new organization. The message actions enforce them and `register`
reports them (its `realm_*` keys), so a client's idea of what it may do matches what the
server allows.
"""

from __future__ import annotations

from typing import Final

# Zulip's "Allow message editing" (`realm_allow_message_editing`).
ALLOW_MESSAGE_EDITING: Final = True
# How long after sending an author may edit a message's content (`None`: no limit).
MESSAGE_CONTENT_EDIT_LIMIT_SECONDS: Final[int | None] = 600
# How long after sending a member may move a message to another topic or channel.
MOVE_MESSAGES_WITHIN_STREAM_LIMIT_SECONDS: Final[int | None] = 604800
MOVE_MESSAGES_BETWEEN_STREAMS_LIMIT_SECONDS: Final[int | None] = 604800
# How long after sending an author may delete their own message (`None`: no limit).
MESSAGE_CONTENT_DELETE_LIMIT_SECONDS: Final[int | None] = None
# Who sees a message's edit history: "all", "moves" or "none" (Zulip FL 358).
MESSAGE_EDIT_HISTORY_VISIBILITY_POLICY: Final = "all"
