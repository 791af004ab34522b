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
client as with `client_gravatar`), `reactions`, `submessages` and `topic_links` empty
(no reactions, widgets or linkifiers), `is_mirror_dummy` false.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.tables import Message, Realm, Recipient, Stream, UserProfile

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
        "reactions": [],
        "submessages": [],
    }
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


def load_message_views(session: Session, message_ids: Collection[int]) -> dict[int, MessageView]:
    """The messages with these ids, in two statements however many: the messages with
    their senders, realms and channels, then every direct-message participant."""
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
        )
    return views
