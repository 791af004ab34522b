"""Channel actions: creating channels, one or many at once.

Creating many channels costs the statements of creating one: the names are checked in
Python, looked up in one statement, inserted in one statement, and every `stream`
`create` event is written by one `append_events` call. A subscription request that
names new channels (`actions.subscriptions`) creates them through `insert_streams`.

`do_create_streams` acts for `acting_user_id`, read again under the realm lock
(`actions.actors`): deactivated, or with a role that may not create such channels
(a guest; a non-administrator for web-public ones), they are refused before anything is
written. `acting_user_id=None` is the machine's administrator (the command line).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Boolean, DateTime, Integer, String, insert, literal, select
from sqlalchemy.orm import Session

from actions.actors import CREATE_CHANNELS, CREATE_WEB_PUBLIC_CHANNELS, lock_realm_as
from actions.errors import AlreadyExists, InvalidInput
from actions.validation import check_name
from models.outbox import PendingEvent, append_events
from models.queries import get_streams_by_names, values_as_table
from models.tables import (
    MAX_STREAM_DESCRIPTION_LENGTH,
    MAX_STREAM_NAME_LENGTH,
    Stream,
    utcnow,
)
from models.visibility import AudienceIndex, active_user_roles
from models.wire import stream_create_event


def check_new_stream(
    name: str, *, invite_only: bool, is_web_public: bool, description: str = ""
) -> str:
    """The stripped name of a channel about to be created, or InvalidInput (Zulip's limits).

    Reads nothing, so a bulk creation can check every name before its one lookup.
    """
    checked = check_name(name, "Channel name", MAX_STREAM_NAME_LENGTH)
    if invite_only and is_web_public:
        raise InvalidInput("A channel cannot be both private and web-public.")
    if len(description) > MAX_STREAM_DESCRIPTION_LENGTH:
        raise InvalidInput(
            f"Channel description is too long (at most {MAX_STREAM_DESCRIPTION_LENGTH})."
        )
    return checked


def insert_streams(
    session: Session,
    realm_id: int,
    names: Sequence[str],
    audience: AudienceIndex,
    *,
    invite_only: bool,
    is_web_public: bool,
    description: str = "",
) -> tuple[list[Stream], list[PendingEvent]]:
    """Insert channels with no subscribers, in one statement; return them in the order of
    `names`, and one `stream` `create` event each for whoever may see it, not yet written.

    The caller holds the realm lock and has checked every name (`check_new_stream`) and
    that none is taken, nor repeated; `audience` is the realm's current one.
    """
    if not names:
        return [], []
    # The names travel as one parameter, so the INSERT is one statement however many
    # channels there are (an executemany would be one per row on SQLite with RETURNING).
    asked = values_as_table(session, "names", list(names), String)
    rows = select(
        asked.c.value,
        literal(realm_id, Integer),
        literal(description, String),
        literal(invite_only, Boolean),
        literal(is_web_public, Boolean),
        literal(utcnow(), DateTime(timezone=True)),
    )
    inserted = session.scalars(
        insert(Stream)
        .from_select(
            ["name", "realm_id", "description", "invite_only", "is_web_public", "date_created"],
            rows,
        )
        .returning(Stream)
    ).all()
    # RETURNING promises no order; names are unique within the realm.
    by_name = {stream.name: stream for stream in inserted}
    streams = [by_name[name] for name in names]
    events = [
        PendingEvent(
            stream_create_event([stream]),
            audience.users(audience.key(stream, ())),
        )
        for stream in streams
    ]
    return streams, events


def do_create_streams(
    session: Session,
    realm_id: int,
    names: Sequence[str],
    *,
    invite_only: bool = False,
    is_web_public: bool = False,
    description: str = "",
    acting_user_id: int | None = None,
) -> list[Stream]:
    """Create channels with no subscribers; `stream` `create` goes to whoever may see each.

    All or nothing: the first invalid or taken name (in order) refuses the whole call.
    `acting_user_id` must be an active user whose current role may create the channels
    (None: the machine's administrator; see the module).
    """
    need = CREATE_WEB_PUBLIC_CHANNELS if is_web_public else CREATE_CHANNELS
    lock_realm_as(session, realm_id, acting_user_id, need)
    checked = [
        check_new_stream(
            name, invite_only=invite_only, is_web_public=is_web_public, description=description
        )
        for name in names
    ]
    existing = get_streams_by_names(session, realm_id, checked)
    seen: set[str] = set()
    for name in checked:
        # A name repeated in the call (in any case) is taken by its first occurrence.
        if name in existing or name.lower() in seen:
            raise AlreadyExists(f"Channel {name!r} already exists.")
        seen.add(name.lower())
    audience = AudienceIndex(active_user_roles(session, realm_id))
    streams, events = insert_streams(
        session,
        realm_id,
        checked,
        audience,
        invite_only=invite_only,
        is_web_public=is_web_public,
        description=description,
    )
    append_events(session, realm_id, events)
    return streams


def do_create_stream(
    session: Session,
    realm_id: int,
    name: str,
    *,
    invite_only: bool = False,
    is_web_public: bool = False,
    description: str = "",
    acting_user_id: int | None = None,
) -> Stream:
    """Create a channel with no subscribers; `stream` `create` goes to whoever may see it.

    `acting_user_id` as for `do_create_streams`."""
    [stream] = do_create_streams(
        session,
        realm_id,
        [name],
        invite_only=invite_only,
        is_web_public=is_web_public,
        description=description,
        acting_user_id=acting_user_id,
    )
    return stream
