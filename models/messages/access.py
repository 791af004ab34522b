"""One message as one user may read it: access, `GET /messages/{id}` and its edit history.

This module owns Zulip's rule of who may read a message (`access_message`): a user who
received it (a `user_message` row, whatever has happened since), or, for a channel
message, anyone who may read that channel's history: a public channel they may see (a
guest only while subscribed), or a web-public one. A private channel's history is not
public, not even to its subscribers (`models.messages.history`). Anyone else is told
Zulip's "Invalid message(s)", the same answer as for a message that does not exist, so a
message's existence is never revealed. The actions on one message (`actions.message_edits`,
`actions.reactions`) check access through it, under the realm lock, locking the message's
row (`for_update`) so that concurrent changes of one message apply one after the other.

It also answers the two reads of one message: `get_message` (`GET /messages/{id}`, with
Zulip's deprecated `raw_content` beside the message object) and `message_history`
(`GET /messages/{id}/history`: a snapshot of the message after each edit, oldest first,
under `MESSAGE_EDIT_HISTORY_VISIBILITY_POLICY`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from actions.errors import InvalidInput
from models.messages.flags import flag_names
from models.messages.recipients import RECIPIENT_STREAM
from models.messages.wire import EditView, load_edits, load_message_views, message_to_api
from models.realm_settings import MESSAGE_EDIT_HISTORY_VISIBILITY_POLICY
from models.state import ViewerDeactivated
from models.tables import Message, Recipient, Stream, Subscription, UserMessage, UserProfile
from models.visibility import can_see_stream


class InvalidMessage(InvalidInput):
    """The message does not exist, or the user may not read it (never told apart)."""

    def __init__(self) -> None:
        super().__init__("Invalid message(s)")


class EditHistoryDisabled(InvalidInput):
    """The realm shows no edit history (`message_edit_history_visibility_policy` none)."""

    def __init__(self) -> None:
        super().__init__("Message edit history is disabled in this organization")


@dataclass(frozen=True, slots=True)
class AccessedMessage:
    """A message one user may read, with where it is and that user's flags on it."""

    message: Message
    # The channel of a channel message; None for a direct message.
    stream: Stream | None
    # A direct message's participants (sorted ids); () for a channel message.
    participants: tuple[int, ...]
    # The user's `user_message` flags; None when they did not receive it (they read it
    # from the channel's public history).
    flags: int | None

    @property
    def is_channel_message(self) -> bool:
        return self.stream is not None


def access_message(
    session: Session, viewer: UserProfile, message_id: int, *, for_update: bool = False
) -> AccessedMessage:
    """The message if `viewer` may read it (see the module), else `InvalidMessage`.

    One statement. `for_update` locks the message's row until the transaction ends
    (PostgreSQL's `FOR UPDATE OF message`; SQLite's one writer needs nothing).
    """
    query = (
        select(Message, Recipient.type, Recipient.dm_user_ids, Stream, UserMessage.flags)
        .join(Recipient, Recipient.id == Message.recipient_id)
        .outerjoin(Stream, Stream.id == Recipient.stream_id)
        .outerjoin(
            UserMessage,
            (UserMessage.message_id == Message.id) & (UserMessage.user_profile_id == viewer.id),
        )
        .where(Message.id == message_id, Message.realm_id == viewer.realm_id)
    )
    if for_update:
        query = query.with_for_update(of=Message).execution_options(populate_existing=True)
    row = session.execute(query).first()
    if row is None:
        raise InvalidMessage()
    message, kind, dm_user_ids, stream, flags = row
    if int(kind) == RECIPIENT_STREAM and stream is not None:
        accessed = AccessedMessage(message, stream, (), None if flags is None else int(flags))
        if flags is None and not _reads_channel_history(session, viewer, stream):
            raise InvalidMessage()
        return accessed
    if flags is None:
        raise InvalidMessage()
    participants = tuple(sorted(int(u) for u in json.loads(dm_user_ids or "[]")))
    return AccessedMessage(message, None, participants, int(flags))


def _reads_channel_history(session: Session, viewer: UserProfile, stream: Stream) -> bool:
    """Whether the channel's whole history is readable by `viewer`: a public channel they
    may see, or a web-public one (a private channel's history is never public)."""
    if stream.invite_only:
        return False
    subscribed = session.scalar(
        select(Subscription.active).where(
            Subscription.user_profile_id == viewer.id, Subscription.stream_id == stream.id
        )
    )
    return can_see_stream(viewer.role, stream, bool(subscribed))


def _active_viewer(session: Session, viewer_id: int) -> UserProfile:
    viewer = session.get(UserProfile, viewer_id)
    if viewer is None or not viewer.is_active:
        raise ViewerDeactivated()
    return viewer


def get_message(
    session: Session, viewer_id: int, message_id: int, apply_markdown: bool = True
) -> dict[str, Any]:
    """`GET /messages/{id}`: Zulip's `raw_content` (deprecated, still sent) and the message
    object with the viewer's `flags`."""
    viewer = _active_viewer(session, viewer_id)
    accessed = access_message(session, viewer, message_id)
    view = load_message_views(session, [message_id])[message_id]
    data = message_to_api(view, apply_markdown)
    data["flags"] = flag_names(accessed.flags)
    return {"raw_content": view.content, "message": data}


def message_history(session: Session, viewer_id: int, message_id: int) -> list[dict[str, Any]]:
    """`GET /messages/{id}/history`: the message as sent, then as it was after each edit,
    oldest first, each edit with the fields it changed (Zulip's `message_history`)."""
    viewer = _active_viewer(session, viewer_id)
    policy = MESSAGE_EDIT_HISTORY_VISIBILITY_POLICY
    if policy == "none":
        raise EditHistoryDisabled()
    accessed = access_message(session, viewer, message_id)
    message = accessed.message
    view = load_message_views(session, [message_id])[message_id]
    newest_first: list[EditView] = list(load_edits(session, [message_id]).get(message_id, ()))
    # Walk back from the message as it is now, undoing each edit.
    content, rendered, topic = message.content, message.rendered_content, message.subject
    snapshots: list[dict[str, Any]] = []
    for edit in newest_first:
        snapshot: dict[str, Any] = {
            "topic": topic,
            "content": content,
            "rendered_content": rendered,
            "user_id": edit.user_id,
            "timestamp": edit.timestamp,
        }
        if edit.prev_topic is not None:
            snapshot["prev_topic"] = edit.prev_topic
            topic = edit.prev_topic
        if edit.prev_stream is not None:
            snapshot["prev_stream"] = edit.prev_stream
            snapshot["stream"] = edit.stream
        if edit.prev_content is not None:
            previous_rendered = edit.prev_rendered_content or ""
            if policy == "all":
                snapshot["prev_content"] = edit.prev_content
                snapshot["prev_rendered_content"] = previous_rendered
                snapshot["content_html_diff"] = _html_diff(previous_rendered, rendered)
            content, rendered = edit.prev_content, previous_rendered
        snapshots.append(snapshot)
    snapshots.append(
        {
            "topic": topic,
            "content": content,
            "rendered_content": rendered,
            "user_id": view.sender.id,
            "timestamp": view.timestamp,
        }
    )
    if policy == "moves":
        # Content is left as it is now: only moves are shown.
        for snapshot in snapshots:
            snapshot["content"] = message.content
            snapshot["rendered_content"] = message.rendered_content
    return snapshots[::-1]


def _html_diff(before: str, after: str) -> str:
    """Zulip's `content_html_diff`, coarsely: the whole new rendering marked inserted and
    the whole old one marked deleted (Zulip marks only the changed words)."""
    if before == after:
        return f"<div>{after}</div>"
    return (
        f'<div><span class="highlight_text_inserted">{after}</span> '
        f'<span class="highlight_text_deleted">{before}</span></div>'
    )
