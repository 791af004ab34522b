"""The acting user, read again under the realm lock: the one way an action checks who acts.

The server authenticates a request before the action's transaction begins, from its
credentials cache (`server.engine.credentials`), which the routed outbox keeps current only
after the fact; its handlers also refuse non-administrators early on that cached role.
Between that check and the action, the actor may have been deactivated or lost their
role, by a transaction that has committed since. So every action done for a user takes
the realm's writer lock first (`models.outbox.lock_realm`), then reads the actor in the
same transaction and judges them on what it reads. Actions that only add to what users
see (sending a message, changing one's own flags) share the lock (`shared=True`); a
deactivation or a role change takes it exclusively, so it still excludes them:

* absent from the realm, or deactivated: `ActorDeactivated` (USER_DEACTIVATED);
* active, but their current role lacks what the action needs: the action's
  `Permission` refusal (`AdministratorRequired` for owner and administrator actions).

A change committed before the lock is seen; one that commits later needs the same lock
exclusively, so it waits until this transaction ends. Every refusal is raised before the action
writes anything, so the caller's transaction (`Database.write()`) rolls back with
nothing to undo.

`acting_user_id=None` is the machine's administrator (the command line, the demo and
the probe act as whoever runs them): there is no user to check, and only the lock is
taken.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Integer, String, or_, select
from sqlalchemy.orm import Session

from actions.errors import ActionError, ActorDeactivated, AdministratorRequired, NotAllowed
from models.outbox import lock_realm
from models.queries import values_as_table
from models.tables import Realm, UserProfile
from models.visibility import (
    can_create_channels,
    can_create_web_public_channels,
    can_subscribe_others,
    can_unsubscribe_others,
    is_realm_admin,
)


@dataclass(frozen=True, slots=True)
class Permission:
    """What the acting user's current role must allow, and the refusal when it does not."""

    allows: Callable[[int], bool]
    refusal: Callable[[], ActionError]

    def check(self, role: int) -> None:
        """Raise the refusal unless `role` allows it (`role` as read under the lock)."""
        if not self.allows(role):
            raise self.refusal()


# Zulip's defaults (`models.visibility`), each with the one wording its refusal has.
ADMINISTRATOR = Permission(is_realm_admin, AdministratorRequired)
CREATE_CHANNELS = Permission(
    can_create_channels, lambda: NotAllowed("Guests cannot create channels.")
)
CREATE_WEB_PUBLIC_CHANNELS = Permission(
    can_create_web_public_channels,
    lambda: NotAllowed("Only administrators can create web-public channels."),
)
SUBSCRIBE_OTHERS = Permission(
    can_subscribe_others, lambda: NotAllowed("Guests cannot subscribe other users.")
)
UNSUBSCRIBE_OTHERS = Permission(
    can_unsubscribe_others,
    lambda: NotAllowed("Insufficient permission to unsubscribe other users."),
)


@dataclass(frozen=True, slots=True)
class LockedActor:
    """The acting user as the realm lock found them, the realm's subdomain, and the
    other users the action named (by id and by lower-case email, active or not), all
    read in one statement."""

    user: UserProfile
    realm_str: str
    by_id: dict[int, UserProfile]
    by_email: dict[str, UserProfile]


def lock_realm_for_actor(
    session: Session,
    realm_id: int,
    actor_id: int,
    need: Permission | None = None,
    *,
    user_ids: Collection[int] = (),
    emails: Collection[str] = (),
    shared: bool = False,
) -> LockedActor:
    """Take the realm's writer lock, then read and check the acting user (see the module).

    `need` is what the actor's current role must allow (None: any active user). The
    users named by `user_ids` and `emails` (lower-case) are read in the same statement
    as the actor, however many there are, so an action that names users pays nothing
    for checking its actor. `shared` takes the lock in its shared mode
    (`models.outbox.lock_realm`), for actions that change no one's visibility.
    """
    lock_realm(session, realm_id, shared=shared)
    wanted: list[ColumnElement[bool]] = [UserProfile.id == actor_id]
    if user_ids:
        ids = values_as_table(session, "ids", sorted(set(user_ids)), Integer)
        wanted.append(UserProfile.id.in_(select(ids.c.value)))
    if emails:
        addresses = values_as_table(session, "emails", sorted(set(emails)), String)
        wanted.append(UserProfile.email.in_(select(addresses.c.value)))
    rows = session.execute(
        select(UserProfile, Realm.string_id)
        .join(Realm, Realm.id == UserProfile.realm_id)
        .where(UserProfile.realm_id == realm_id, or_(*wanted))
        # The rows may be in the session already, read before the lock: read them again.
        .execution_options(populate_existing=True)
    ).all()
    by_id = {user.id: user for user, _ in rows}
    actor = by_id.get(actor_id)
    # Users are never deleted, only deactivated: credentials that name no user of this
    # realm any more are answered as a deactivated account's, as authentication would.
    if actor is None or not actor.is_active:
        raise ActorDeactivated()
    if need is not None:
        need.check(actor.role)
    realm_str = next(str(string_id) for user, string_id in rows if user.id == actor_id)
    return LockedActor(actor, realm_str, by_id, {user.email: user for user in by_id.values()})


def lock_realm_as(
    session: Session, realm_id: int, acting_user_id: int | None, need: Permission | None = None
) -> UserProfile | None:
    """Take the realm's writer lock as `acting_user_id` and return them, checked against
    `need` (see `lock_realm_for_actor`); None, with the lock alone, for the machine's
    administrator (`acting_user_id=None`), whom nothing refuses."""
    if acting_user_id is None:
        lock_realm(session, realm_id)
        return None
    return lock_realm_for_actor(session, realm_id, acting_user_id, need).user
