"""The state of realms: create realms, users and channels, change subscriptions,
deactivate and reactivate users, list users and channels.

Commands: create-realm, create-user, create-stream, subscribe, unsubscribe,
deactivate-user, reactivate-user (`add_commands`); users, api-key, streams
(`add_listings`).
Each change runs the action of the `actions` package in one transaction, so the
servers see it as the same events an API request would have made.
"""

from __future__ import annotations

import argparse
from typing import Any

from actions.errors import InvalidInput
from actions.realms import do_create_realm
from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions, bulk_remove_subscriptions
from actions.users import do_create_user, do_deactivate_user, do_reactivate_user
from models.database import Database
from models.outbox import lock_realm
from models.queries import realm_streams, realm_users
from models.tables import Role
from models.visibility import active_subscribers
from server.ops.cli.shared import Commands, emit, find_realm, find_streams, find_user, table


def cmd_create_realm(args: argparse.Namespace, db: Database) -> None:
    with db.write() as session:
        realm = do_create_realm(session, args.subdomain, args.name)
        data = {"realm_id": realm.id, "string_id": realm.string_id, "name": realm.name}
    emit(args, data, f"Created realm {data['string_id']!r} (id {data['realm_id']}).")


def cmd_create_user(args: argparse.Namespace, db: Database) -> None:
    try:
        role = Role.from_name(args.role)
    except ValueError as error:
        raise InvalidInput(str(error).capitalize() + ".") from None
    with db.write() as session:
        realm = find_realm(session, args.realm)
        user = do_create_user(session, realm.id, args.email, args.full_name, role, args.bot)
        data = {"user_id": user.id, "email": user.email, "api_key": user.api_key}
    emit(
        args,
        data,
        f"Created user {data['email']} (id {data['user_id']}).\nAPI key: {data['api_key']}",
    )


def cmd_create_stream(args: argparse.Namespace, db: Database) -> None:
    with db.write() as session:
        realm = find_realm(session, args.realm)
        stream = do_create_stream(
            session,
            realm.id,
            args.name,
            invite_only=args.private,
            is_web_public=args.web_public,
            description=args.description,
        )
        data = {"stream_id": stream.id, "name": stream.name}
    emit(args, data, f"Created channel {data['name']!r} (id {data['stream_id']}).")


def _change_subscriptions(args: argparse.Namespace, db: Database, subscribe: bool) -> None:
    action = bulk_add_subscriptions if subscribe else bulk_remove_subscriptions
    with db.write() as session:
        # The subdomain must be read to know which realm to lock; everything else is
        # read under the lock (models.outbox), so a user deactivated meanwhile is seen.
        realm = find_realm(session, args.realm)
        lock_realm(session, realm.id)
        user = find_user(session, realm, args.email)
        streams = find_streams(session, realm, args.streams)
        names = {s.id: s.name for s in streams}
        change = action(session, realm.id, [user.id], [s.id for s in streams])
        changed = [names[sid] for _, sid in change.changed]
        unchanged = [names[sid] for _, sid in change.unchanged]
    verb, already = (
        ("Subscribed", "already subscribed") if subscribe else ("Unsubscribed", "not subscribed")
    )
    lines = []
    if changed:
        lines.append(
            f"{verb} {args.email} to {', '.join(changed)}."
            if subscribe
            else f"{verb} {args.email} from {', '.join(changed)}."
        )
    if unchanged:
        lines.append(f"{args.email} was {already}: {', '.join(unchanged)}.")
    key = "subscribed" if subscribe else "unsubscribed"
    emit(args, {key: changed, already.replace(" ", "_"): unchanged}, "\n".join(lines))


def cmd_subscribe(args: argparse.Namespace, db: Database) -> None:
    _change_subscriptions(args, db, subscribe=True)


def cmd_unsubscribe(args: argparse.Namespace, db: Database) -> None:
    _change_subscriptions(args, db, subscribe=False)


def _set_user_active(args: argparse.Namespace, db: Database, active: bool) -> None:
    action = do_reactivate_user if active else do_deactivate_user
    with db.write() as session:
        realm = find_realm(session, args.realm)
        user = find_user(session, realm, args.email)
        action(session, realm.id, user.id)
        data = {"user_id": user.id, "email": user.email, "is_active": active}
    done = (
        f"Reactivated {user.email}; their channel subscriptions are back."
        if active
        else f"Deactivated {user.email}: their API key and queues stop working."
    )
    emit(args, data, done)


def cmd_deactivate_user(args: argparse.Namespace, db: Database) -> None:
    _set_user_active(args, db, active=False)


def cmd_reactivate_user(args: argparse.Namespace, db: Database) -> None:
    _set_user_active(args, db, active=True)


def cmd_users(args: argparse.Namespace, db: Database) -> None:
    with db.snapshot() as session:
        realm = find_realm(session, args.realm)
        users = [
            {
                "user_id": u.id,
                "email": u.email,
                "full_name": u.full_name,
                "role": Role(u.role).name.lower(),
                "is_active": u.is_active,
                "is_bot": u.is_bot,
            }
            for u in realm_users(session, realm.id)
        ]
    rows = [
        [
            u["user_id"],
            u["email"],
            u["full_name"],
            u["role"],
            "active" if u["is_active"] else "deactivated",
            "bot" if u["is_bot"] else "",
        ]
        for u in users
    ]
    emit(args, users, table(["ID", "EMAIL", "FULL NAME", "ROLE", "STATE", "BOT"], rows))


def cmd_api_key(args: argparse.Namespace, db: Database) -> None:
    """Whoever can run the CLI against the database administers the machine, and reads
    every key anyway: this shows one without SQL. Nothing is changed."""
    with db.snapshot() as session:
        realm = find_realm(session, args.realm)
        user = find_user(session, realm, args.email)
        data = {
            "user_id": user.id,
            "email": user.email,
            "api_key": user.api_key,
            "is_active": user.is_active,
        }
    state = (
        "active"
        if data["is_active"]
        else "deactivated: the key works again only once they are reactivated"
    )
    emit(
        args,
        data,
        f"{data['email']} (id {data['user_id']}, {state})\nAPI key: {data['api_key']}",
    )


def cmd_streams(args: argparse.Namespace, db: Database) -> None:
    with db.snapshot() as session:
        realm = find_realm(session, args.realm)
        streams = realm_streams(session, realm.id)
        members = active_subscribers(session, [s.id for s in streams])
        emails = {u.id: u.email for u in realm_users(session, realm.id)}
        data: list[dict[str, Any]] = [
            {
                "stream_id": s.id,
                "name": s.name,
                "visibility": "private"
                if s.invite_only
                else ("web-public" if s.is_web_public else "public"),
                "subscribers": sorted(emails[uid] for uid in members.get(s.id, set())),
            }
            for s in streams
        ]
    rows = [
        [
            d["stream_id"],
            d["name"],
            d["visibility"],
            len(d["subscribers"]),
            ", ".join(d["subscribers"]),
        ]
        for d in data
    ]
    emit(args, data, table(["ID", "NAME", "VISIBILITY", "N", "SUBSCRIBERS"], rows))


def add_commands(commands: Commands) -> None:
    """Add the commands that change a realm's state, create-realm to reactivate-user."""
    p = commands.on_database("create-realm", cmd_create_realm, "Create a realm (an organization).")
    p.add_argument("subdomain", help="the realm's subdomain: lower-case letters, digits, hyphens")
    p.add_argument("--name", help="display name (default: the subdomain)")
    p = commands.on_database(
        "create-user", cmd_create_user, "Create a user and print their API key."
    )
    p.add_argument("realm", help="realm subdomain")
    p.add_argument("email")
    p.add_argument("--full-name", help="display name (default: the part of EMAIL before @)")
    p.add_argument(
        "--role", default="member", help="owner, admin, moderator, member (default) or guest"
    )
    p.add_argument("--bot", action="store_true", help="create a bot user")
    p = commands.on_database(
        "create-stream", cmd_create_stream, "Create a channel (public by default)."
    )
    p.add_argument("realm", help="realm subdomain")
    p.add_argument("name", help="channel name (at most 60 characters)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--private", action="store_true", help="invite-only channel")
    kind.add_argument("--web-public", action="store_true", help="visible to every user and guest")
    p.add_argument("--description", default="", help="channel description")
    for name, func, verb in (
        ("subscribe", cmd_subscribe, "Subscribe a user to channels."),
        ("unsubscribe", cmd_unsubscribe, "Unsubscribe a user from channels."),
    ):
        p = commands.on_database(name, func, verb)
        p.add_argument("realm", help="realm subdomain")
        p.add_argument("email", help="the user's email")
        p.add_argument("streams", nargs="+", metavar="STREAM", help="channel names")
    for name, func, text in (
        (
            "deactivate-user",
            cmd_deactivate_user,
            "Deactivate a user: peers get peer_remove events, then the realm_user update; the "
            "user's API key and queues stop working at once.",
        ),
        (
            "reactivate-user",
            cmd_reactivate_user,
            "Reactivate a user: the realm_user update, then peer_add for their channels.",
        ),
    ):
        p = commands.on_database(name, func, text)
        p.add_argument("realm", help="realm subdomain")
        p.add_argument("email", help="the user's email")


def add_listings(commands: Commands) -> None:
    """Add `users` and `streams`, which list a realm's state."""
    p = commands.on_database("users", cmd_users, "List the realm's users.")
    p.add_argument("realm", help="realm subdomain")
    p = commands.on_database(
        "api-key",
        cmd_api_key,
        "Print a user's API key (any user, deactivated ones too), for a client's "
        "credentials or a zuliprc.",
    )
    p.add_argument("realm", help="realm subdomain")
    p.add_argument("email", help="the user's email")
    p = commands.on_database(
        "streams", cmd_streams, "List the realm's channels with their subscribers."
    )
    p.add_argument("realm", help="realm subdomain")
