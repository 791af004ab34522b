"""A message as clients see it: the message object, its wire shape and its event.

This module owns

* the message as detached values (`MessageView`, its `Participant`s), loaded from the
  database in two statements however many (`load_message_views`);
* the wire shape of a message (`message_to_api`), the same in a `message` event and in
  `GET /messages`, following Zulip's API documentation, and the stored form of the event
  (`message_event`), which carries the raw-Markdown form for queues that ask for it
  (under `RAW_MARKDOWN_KEY`).

Fields Zulip sends that eventq has no concept of have the value that says so:
`avatar_url` null (every avatar is the Gravatar of the sender's email, computed by the
client as with `client_gravatar`), `submessages` and `topic_links` empty (no widgets or
linkifiers), `is_mirror_dummy` false.

Edits and reactions (`actions.message_edits`, `actions.reactions`) show as Zulip shows
them at feature level 377: `reactions` (each `emoji_name`, `emoji_code`,
`reaction_type`, `user_id`, oldest first; `[]` at send), `last_edit_timestamp` once the
content was edited, `last_moved_timestamp` once the message was moved to another topic
or channel (not for resolving or unresolving a topic), and `edit_history` (newest edit
first) once either happened, filtered by `MESSAGE_EDIT_HISTORY_VISIBILITY_POLICY`.
`load_message_views` reads them with the messages, one statement each for reactions and
edits.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.realm_settings import MESSAGE_EDIT_HISTORY_VISIBILITY_POLICY
from models.tables import Message, MessageEdit, Reaction, Realm, Recipient, Stream, UserProfile

CONTENT_TYPE_HTML = "text/html"
CONTENT_TYPE_MARKDOWN = "text/x-markdown"
# Must equal `queues.types.RAW_MARKDOWN_KEY` (models may not import queues; a unit test
# checks they agree): the stored event's raw-Markdown fields for `apply_markdown` false.
RAW_MARKDOWN_KEY = "eventq_raw_markdown"


@dataclass(frozen=True, slots=True)
class Participant:
    """A user as a message names them: sender, or a direct message's participant."""

    id: int
    email: str
    full_name: str


@dataclass(frozen=True, slots=True)
class ReactionView:
    """One reaction as a message object lists it."""

    emoji_name: str
    emoji_code: str
    reaction_type: str
    user_id: int

    def to_api(self) -> dict[str, Any]:
        """Zulip's `EmojiReaction` (the deprecated `user` object is gone since FL 328)."""
        return {
            "emoji_name": self.emoji_name,
            "emoji_code": self.emoji_code,
            "reaction_type": self.reaction_type,
            "user_id": self.user_id,
        }


@dataclass(frozen=True, slots=True)
class EditView:
    """One entry of a message's edit history: who, when, and what each side was."""

    user_id: int
    timestamp: int
    prev_content: str | None = None
    prev_rendered_content: str | None = None
    prev_topic: str | None = None
    topic: str | None = None
    prev_stream: int | None = None
    stream: int | None = None

    @property
    def is_move(self) -> bool:
        """Whether the topic or the channel changed in this edit."""
        return self.prev_topic is not None or self.prev_stream is not None

    def to_api(self, include_content: bool = True) -> dict[str, Any]:
        """Zulip's `edit_history` entry: only the fields this edit changed."""
        entry: dict[str, Any] = {"user_id": self.user_id, "timestamp": self.timestamp}
        if include_content and self.prev_content is not None:
            entry["prev_content"] = self.prev_content
            entry["prev_rendered_content"] = self.prev_rendered_content or ""
        if self.prev_topic is not None:
            entry["prev_topic"] = self.prev_topic
            entry["topic"] = self.topic or ""
        if self.prev_stream is not None:
            entry["prev_stream"] = self.prev_stream
            entry["stream"] = self.stream
        return entry


def visible_edit_history(edits: Sequence[EditView], policy: str) -> list[dict[str, Any]] | None:
    """`edit_history` under Zulip's `message_edit_history_visibility_policy`: every edit
    ("all"), only moves without their content ("moves"), or none (None: the key is left
    out, as it is for a message never edited)."""
    if not edits or policy == "none":
        return None
    if policy == "moves":
        moves = [edit.to_api(include_content=False) for edit in edits if edit.is_move]
        return moves or None
    return [edit.to_api() for edit in edits]


@dataclass(frozen=True, slots=True)
class MessageView:
    """Everything a message's wire shape is built from, detached from any session."""

    id: int
    sender: Participant
    realm_str: str
    recipient_id: int
    # (id, name) of the channel; None for a direct message.
    stream: tuple[int, str] | None
    # A direct message's participants, sender included, by id; () for a channel message.
    participants: tuple[Participant, ...]
    subject: str
    content: str
    rendered_content: str
    timestamp: int
    client: str
    # Oldest first, as Zulip lists them.
    reactions: tuple[ReactionView, ...] = ()
    # Unix seconds of the last content edit and the last move; None: never.
    last_edit_timestamp: int | None = None
    last_moved_timestamp: int | None = None
    # Newest edit first, as Zulip's `edit_history`.
    edits: tuple[EditView, ...] = ()


def is_me_message(content: str) -> bool:
    """Zulip's `/me` status message: one line starting with `/me `."""
    return content.startswith("/me ") and "\n" not in content


def message_to_api(view: MessageView, apply_markdown: bool) -> dict[str, Any]:
    """A message as Zulip's `message` event and `GET /messages` show it (without the
    per-user `flags`, which travel beside it in an event and inside it in history)."""
    data: dict[str, Any] = {
        "id": view.id,
        "sender_id": view.sender.id,
        "sender_email": view.sender.email,
        "sender_full_name": view.sender.full_name,
        "sender_realm_str": view.realm_str,
        "recipient_id": view.recipient_id,
        "subject": view.subject,
        "topic_links": [],
        "timestamp": view.timestamp,
        "client": view.client,
        "avatar_url": None,
        "is_me_message": is_me_message(view.content),
        "reactions": [reaction.to_api() for reaction in view.reactions],
        "submessages": [],
    }
    if view.last_edit_timestamp is not None:
        data["last_edit_timestamp"] = view.last_edit_timestamp
    if view.last_moved_timestamp is not None:
        data["last_moved_timestamp"] = view.last_moved_timestamp
    edit_history = visible_edit_history(view.edits, MESSAGE_EDIT_HISTORY_VISIBILITY_POLICY)
    if edit_history is not None:
        data["edit_history"] = edit_history
    if view.stream is not None:
        data["type"] = "stream"
        data["stream_id"] = view.stream[0]
        data["display_recipient"] = view.stream[1]
    else:
        data["type"] = "private"
        data["display_recipient"] = [
            {"id": p.id, "email": p.email, "full_name": p.full_name, "is_mirror_dummy": False}
            for p in view.participants
        ]
    if apply_markdown:
        data["content"] = view.rendered_content
        data["content_type"] = CONTENT_TYPE_HTML
    else:
        data["content"] = view.content
        data["content_type"] = CONTENT_TYPE_MARKDOWN
    return data


def message_event(view: MessageView, flags: Sequence[str]) -> dict[str, Any]:
    """The stored `message` event: the rendered form, plus (under RAW_MARKDOWN_KEY, which
    no client ever sees) what a queue registered with `apply_markdown` false gets instead."""
    return {
        "type": "message",
        "message": message_to_api(view, apply_markdown=True),
        "flags": list(flags),
        RAW_MARKDOWN_KEY: {"content": view.content, "content_type": CONTENT_TYPE_MARKDOWN},
    }


def timestamp_of(moment: datetime) -> int:
    """Unix seconds; SQLite returns naive datetimes, which eventq writes in UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def load_reactions(
    session: Session, message_ids: Collection[int]
) -> dict[int, tuple[ReactionView, ...]]:
    """The reactions of these messages, oldest first, in one statement."""
    found: dict[int, list[ReactionView]] = {}
    if not message_ids:
        return {}
    for row in session.execute(
        select(
            Reaction.message_id,
            Reaction.emoji_name,
            Reaction.emoji_code,
            Reaction.reaction_type,
            Reaction.user_profile_id,
        )
        .where(Reaction.message_id.in_(sorted(set(message_ids))))
        .order_by(Reaction.message_id, Reaction.id)
    ):
        found.setdefault(int(row.message_id), []).append(
            ReactionView(
                row.emoji_name, row.emoji_code, row.reaction_type, int(row.user_profile_id)
            )
        )
    return {message_id: tuple(reactions) for message_id, reactions in found.items()}


def load_edits(session: Session, message_ids: Collection[int]) -> dict[int, tuple[EditView, ...]]:
    """The edit history of these messages, newest first, in one statement."""
    found: dict[int, list[EditView]] = {}
    if not message_ids:
        return {}
    for edit in session.scalars(
        select(MessageEdit)
        .where(MessageEdit.message_id.in_(sorted(set(message_ids))))
        .order_by(MessageEdit.message_id, MessageEdit.id.desc())
    ):
        found.setdefault(edit.message_id, []).append(
            EditView(
                user_id=edit.user_id,
                timestamp=timestamp_of(edit.edit_time),
                prev_content=edit.prev_content,
                prev_rendered_content=edit.prev_rendered_content,
                prev_topic=edit.prev_subject,
                topic=edit.subject,
                prev_stream=edit.prev_stream_id,
                stream=edit.stream_id,
            )
        )
    return {message_id: tuple(edits) for message_id, edits in found.items()}


def load_message_views(session: Session, message_ids: Collection[int]) -> dict[int, MessageView]:
    """The messages with these ids, in at most four statements however many: the messages
    with their senders, realms and channels, every direct-message participant, their
    reactions and their edits."""
    if not message_ids:
        return {}
    rows = session.execute(
        select(
            Message,
            UserProfile.email,
            UserProfile.full_name,
            Realm.string_id,
            Recipient.stream_id,
            Recipient.dm_user_ids,
            Stream.name,
        )
        .join(UserProfile, UserProfile.id == Message.sender_id)
        .join(Realm, Realm.id == Message.realm_id)
        .join(Recipient, Recipient.id == Message.recipient_id)
        .outerjoin(Stream, Stream.id == Recipient.stream_id)
        .where(Message.id.in_(sorted(set(message_ids))))
    ).all()
    participant_ids: set[int] = set()
    for row in rows:
        if row.dm_user_ids:
            participant_ids.update(json.loads(row.dm_user_ids))
    people: dict[int, Participant] = {}
    if participant_ids:
        for user_id, email, full_name in session.execute(
            select(UserProfile.id, UserProfile.email, UserProfile.full_name).where(
                UserProfile.id.in_(sorted(participant_ids))
            )
        ):
            people[int(user_id)] = Participant(int(user_id), email, full_name)
    reactions = load_reactions(session, message_ids)
    # Every message's edits: a resolved topic is an edit that sets neither timestamp.
    edits = load_edits(session, message_ids)
    views = {}
    for row in rows:
        message: Message = row.Message
        stream = None
        participants: tuple[Participant, ...] = ()
        if row.stream_id is not None:
            stream = (int(row.stream_id), str(row.name))
        else:
            participants = tuple(people[int(i)] for i in json.loads(row.dm_user_ids or "[]"))
        views[message.id] = MessageView(
            id=message.id,
            sender=Participant(message.sender_id, row.email, row.full_name),
            realm_str=row.string_id,
            recipient_id=message.recipient_id,
            stream=stream,
            participants=participants,
            subject=message.subject,
            content=message.content,
            rendered_content=message.rendered_content,
            timestamp=timestamp_of(message.date_sent),
            client=message.sending_client,
            reactions=reactions.get(message.id, ()),
            last_edit_timestamp=_optional_timestamp(message.last_edit_time),
            last_moved_timestamp=_optional_timestamp(message.last_moved_time),
            edits=edits.get(message.id, ()),
        )
    return views


def _optional_timestamp(moment: datetime | None) -> int | None:
    return None if moment is None else timestamp_of(moment)
