"""Who a message is addressed to: Zulip's recipient types and the conversation key.

This module owns the `Recipient.type` values eventq uses and `dm_key`, which finds a
direct-message conversation again from its participants. Both the send path
(`actions.messages`) and the history read (`models.messages.history`) name recipients
through it, so neither defines them for the other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

# Zulip's `Recipient.type` values eventq uses: a channel, and a direct-message
# conversation of any size (Zulip's "direct message group").
RECIPIENT_STREAM = 2
RECIPIENT_DIRECT = 3


def dm_key(user_ids: Iterable[int]) -> str:
    """The key of the direct-message conversation of exactly these participants."""
    joined = ",".join(str(user_id) for user_id in sorted(set(user_ids)))
    return hashlib.sha256(joined.encode("ascii")).hexdigest()
