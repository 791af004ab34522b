"""Emoji reactions (`POST`/`DELETE /messages/{id}/reactions`), as Zulip does them.

`check_add_reaction` and `check_remove_reaction` check the emoji first
(`models.messages.emoji.check_emoji`, Zulip's wording), then take the realm lock in its
shared mode and read the actor under it (`actions.actors.lock_realm_for_actor`), check
that the actor may read the message (`models.messages.access.access_message`: anyone
who received it or may read its channel's public history; anyone else gets "Invalid
message(s)"), write the row and append one `reaction` event.

Why the shared lock is enough: a reaction changes what users see of a message, not who
sees it. Everything that changes who sees a message (moving it to another channel,
deleting it, subscriptions, deactivations) takes the lock exclusively, so the message
and its recipients read here cannot change before this commits. Two reactions of the
same user and emoji at once are told apart by the unique key: the insert does nothing
on conflict (`REACTION_ALREADY_EXISTS`), and a removal deletes with `RETURNING`, so only
one of two removals finds the row (`REACTION_DOES_NOT_EXIST` for the other). Events of
concurrent reactions are appended in commit order, so every client applies them as the
rows ended.

The event (Zulip's shape at feature level 377: `user_id`, the deprecated `user` object,
`message_id`, `emoji_name`, `emoji_code`, `reaction_type`) goes to everyone who has the
message (its `user_message` rows) and to the actor. A user who reacts to a message they
read from a channel's public history gets no `user_message` row for it (Zulip adds a
`historical` one); they see the reactions when they read the message again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from actions.actors import lock_realm_for_actor
from actions.errors import ActionError
from models.messages.access import access_message
from models.messages.emoji import Emoji, check_emoji, unicode_code_for_name
from models.outbox import PendingEvent, append_events
from models.tables import Reaction, UserMessage, UserProfile


class ReactionAlreadyExists(ActionError):
    """The user already reacted to this message with this emoji."""

    code = "REACTION_ALREADY_EXISTS"

    def __init__(self) -> None:
        super().__init__("Reaction already exists.")


class ReactionDoesNotExist(ActionError):
    """The user has no such reaction on this message."""

    code = "REACTION_DOES_NOT_EXIST"

    def __init__(self) -> None:
        super().__init__("Reaction doesn't exist.")


@dataclass(frozen=True, slots=True)
class ReactionRequest:
    """What a reaction request names: at least a name, or (for a removal) a code."""

    emoji_name: str | None
    emoji_code: str | None = None
    reaction_type: str | None = None


def check_add_reaction(
    session: Session, realm_id: int, user_id: int, message_id: int, request: ReactionRequest
) -> None:
    """Add the actor's reaction to the message (see the module)."""
    if request.emoji_name is None:
        raise ActionError("Missing 'emoji_name' argument")
    emoji = check_emoji(request.emoji_name, request.emoji_code, request.reaction_type)
    actor = lock_realm_for_actor(session, realm_id, user_id, shared=True).user
    access_message(session, actor, message_id)
    dialect_insert = (
        postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    )
    inserted = session.execute(
        dialect_insert(Reaction)
        .values(
            message_id=message_id,
            user_profile_id=actor.id,
            emoji_name=emoji.name,
            emoji_code=emoji.code,
            reaction_type=emoji.reaction_type,
        )
        .on_conflict_do_nothing()
        .returning(Reaction.id)
    ).first()
    if inserted is None:
        raise ReactionAlreadyExists()
    _append_reaction_event(session, realm_id, actor, message_id, emoji, "add")


def check_remove_reaction(
    session: Session, realm_id: int, user_id: int, message_id: int, request: ReactionRequest
) -> None:
    """Remove the actor's reaction from the message: the one with the code given, or with
    the code of the name given (Zulip's order)."""
    reaction_type = request.reaction_type or "unicode_emoji"
    code = request.emoji_code
    if code is None:
        if request.emoji_name is None:
            raise ActionError(
                "At least one of the following arguments must be present: emoji_name, emoji_code"
            )
        code = _code_for_removal(request.emoji_name, reaction_type)
    actor = lock_realm_for_actor(session, realm_id, user_id, shared=True).user
    access_message(session, actor, message_id)
    removed = session.execute(
        delete(Reaction)
        .where(
            Reaction.message_id == message_id,
            Reaction.user_profile_id == actor.id,
            Reaction.reaction_type == reaction_type,
            Reaction.emoji_code == code,
        )
        .returning(Reaction.emoji_name)
    ).first()
    if removed is None:
        raise ReactionDoesNotExist()
    emoji = Emoji(str(removed.emoji_name), code, reaction_type)
    _append_reaction_event(session, realm_id, actor, message_id, emoji, "remove")


def _code_for_removal(name: str, reaction_type: str) -> str:
    if reaction_type == "unicode_emoji":
        code = unicode_code_for_name(name)
        if code is None:
            raise ActionError(f"Emoji '{name}' does not exist")
        return code
    return name  # zulip_extra_emoji: the code is the name


def reaction_event(
    actor: UserProfile, message_id: int, emoji: Emoji, operation: str
) -> dict[str, Any]:
    """Zulip's `reaction` event (`add` or `remove`)."""
    return {
        "type": "reaction",
        "op": operation,
        "user_id": actor.id,
        # Deprecated, re-added in Zulip 10.0 (feature level 339) for older clients.
        "user": {
            "user_id": actor.id,
            "email": actor.email,
            "full_name": actor.full_name,
            "is_mirror_dummy": False,
        },
        "message_id": message_id,
        "emoji_name": emoji.name,
        "emoji_code": emoji.code,
        "reaction_type": emoji.reaction_type,
    }


def _append_reaction_event(
    session: Session,
    realm_id: int,
    actor: UserProfile,
    message_id: int,
    emoji: Emoji,
    operation: str,
) -> None:
    holders = set(
        session.scalars(
            select(UserMessage.user_profile_id).where(UserMessage.message_id == message_id)
        )
    )
    recipients = sorted(holders | {actor.id})
    append_events(
        session,
        realm_id,
        [PendingEvent(reaction_event(actor, message_id, emoji, operation), recipients)],
    )
