"""Channel actions: creating channels."""

from __future__ import annotations

from sqlalchemy.orm import Session

from actions.errors import AlreadyExists, InvalidInput
from actions.validation import check_name
from models.outbox import PendingEvent, append_events, lock_realm
from models.queries import get_stream_by_name
from models.state import stream_to_api
from models.tables import MAX_STREAM_DESCRIPTION_LENGTH, MAX_STREAM_NAME_LENGTH, Stream
from models.visibility import AudienceIndex, active_user_roles


def do_create_stream(
    session: Session,
    realm_id: int,
    name: str,
    *,
    invite_only: bool = False,
    is_web_public: bool = False,
    description: str = "",
) -> Stream:
    """Create a channel with no subscribers; `stream` `create` goes to whoever may see it."""
    lock_realm(session, realm_id)
    checked = check_name(name, "Channel name", MAX_STREAM_NAME_LENGTH)
    if invite_only and is_web_public:
        raise InvalidInput("A channel cannot be both private and web-public.")
    if len(description) > MAX_STREAM_DESCRIPTION_LENGTH:
        raise InvalidInput(
            f"Channel description is too long (at most {MAX_STREAM_DESCRIPTION_LENGTH})."
        )
    if get_stream_by_name(session, realm_id, checked) is not None:
        raise AlreadyExists(f"Channel {checked!r} already exists.")
    stream = Stream(
        realm_id=realm_id,
        name=checked,
        description=description,
        invite_only=invite_only,
        is_web_public=is_web_public,
    )
    session.add(stream)
    session.flush()
    audience = AudienceIndex(active_user_roles(session, realm_id))
    recipients = audience.users(audience.key(stream, ()))
    append_events(
        session,
        realm_id,
        [
            PendingEvent(
                {"type": "stream", "op": "create", "streams": [stream_to_api(stream)]}, recipients
            )
        ],
    )
    return stream
