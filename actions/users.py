"""User actions: creating users (deactivation and reactivation join them here)."""

from __future__ import annotations

import secrets
import string

from sqlalchemy.orm import Session

from actions.errors import AlreadyExists
from actions.validation import check_email, check_name
from models.outbox import PendingEvent, append_events, lock_realm
from models.queries import get_user_by_email
from models.state import user_to_api
from models.tables import (
    API_KEY_LENGTH,
    MAX_EMAIL_LENGTH,
    MAX_FULL_NAME_LENGTH,
    Role,
    UserProfile,
)
from models.visibility import active_user_roles

_API_KEY_ALPHABET = string.ascii_letters + string.digits


def generate_api_key() -> str:
    """A random API key from the operating system's CSPRNG."""
    return "".join(secrets.choice(_API_KEY_ALPHABET) for _ in range(API_KEY_LENGTH))


def do_create_user(
    session: Session,
    realm_id: int,
    email: str,
    full_name: str | None = None,
    role: Role = Role.MEMBER,
    is_bot: bool = False,
) -> UserProfile:
    """Create an active user; every active user of the realm gets `realm_user` `add`."""
    lock_realm(session, realm_id)
    normalized = check_email(email, MAX_EMAIL_LENGTH)
    name = check_name(
        full_name if full_name is not None else normalized.split("@", 1)[0],
        "Full name",
        MAX_FULL_NAME_LENGTH,
    )
    if get_user_by_email(session, realm_id, normalized) is not None:
        raise AlreadyExists(f"Email {normalized!r} is already in use in this realm.")
    user = UserProfile(
        realm_id=realm_id,
        email=normalized,
        full_name=name,
        role=int(role),
        is_active=True,
        is_bot=is_bot,
        api_key=generate_api_key(),
    )
    session.add(user)
    session.flush()
    recipients = active_user_roles(session, realm_id).keys()
    append_events(
        session,
        realm_id,
        [
            PendingEvent(
                {"type": "realm_user", "op": "add", "person": user_to_api(user)}, recipients
            )
        ],
    )
    return user
