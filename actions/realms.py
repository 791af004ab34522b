"""Realm actions: creating an organization."""

from __future__ import annotations

from sqlalchemy.orm import Session

from actions.errors import AlreadyExists
from actions.validation import check_name, check_subdomain
from models.queries import get_realm
from models.tables import MAX_REALM_NAME_LENGTH, MAX_REALM_SUBDOMAIN_LENGTH, Realm


def do_create_realm(session: Session, string_id: str, name: str | None = None) -> Realm:
    """Create an empty realm. It has no users yet, so nobody receives an event."""
    subdomain = check_subdomain(string_id, MAX_REALM_SUBDOMAIN_LENGTH)
    display_name = check_name(
        name if name is not None else subdomain, "Realm name", MAX_REALM_NAME_LENGTH
    )
    if get_realm(session, subdomain) is not None:
        raise AlreadyExists(f"Realm {subdomain!r} already exists.")
    realm = Realm(string_id=subdomain, name=display_name, last_event_seq=0)
    session.add(realm)
    session.flush()
    return realm
