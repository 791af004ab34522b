"""Lookups by name or key that actions, the server and the CLI share. Each returns None
when nothing matches; callers turn that into their own error."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.tables import Realm, Stream, UserProfile


def get_realm(session: Session, string_id: str) -> Realm | None:
    """The realm with this subdomain."""
    return session.scalars(select(Realm).where(Realm.string_id == string_id.lower())).first()


def get_user_by_email(session: Session, realm_id: int, email: str) -> UserProfile | None:
    """The user of this realm with this email (emails are stored lower-case)."""
    return session.scalars(
        select(UserProfile).where(
            UserProfile.realm_id == realm_id, UserProfile.email == email.strip().lower()
        )
    ).first()


def get_user_by_api_key(session: Session, api_key: str) -> UserProfile | None:
    """The user whose API key this is, active or not."""
    return session.scalars(select(UserProfile).where(UserProfile.api_key == api_key)).first()


def get_user(session: Session, realm_id: int, user_id: int) -> UserProfile | None:
    """The user with this id, if it belongs to the realm."""
    user = session.get(UserProfile, user_id)
    return user if user is not None and user.realm_id == realm_id else None


def get_stream_by_name(session: Session, realm_id: int, name: str) -> Stream | None:
    """The channel of this realm with this name, compared case-insensitively as Zulip does."""
    return session.scalars(
        select(Stream).where(
            Stream.realm_id == realm_id, func.lower(Stream.name) == name.strip().lower()
        )
    ).first()


def get_streams_by_names(
    session: Session, realm_id: int, names: Collection[str]
) -> dict[str, Stream]:
    """`{lower-case name: channel}` for the names that exist, in one statement."""
    wanted = {name.strip().lower() for name in names}
    if not wanted:
        return {}
    rows = session.scalars(
        select(Stream).where(Stream.realm_id == realm_id, func.lower(Stream.name).in_(wanted))
    ).all()
    return {stream.name.lower(): stream for stream in rows}


def realm_users(session: Session, realm_id: int) -> Sequence[UserProfile]:
    """Every user of the realm, by id."""
    return session.scalars(
        select(UserProfile).where(UserProfile.realm_id == realm_id).order_by(UserProfile.id)
    ).all()


def realm_streams(session: Session, realm_id: int) -> Sequence[Stream]:
    """Every channel of the realm, by id."""
    return session.scalars(
        select(Stream).where(Stream.realm_id == realm_id).order_by(Stream.id)
    ).all()
