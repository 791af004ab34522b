"""The live queues of running servers: list them, count their clients, watch a user's.

Commands: queues, clients (`GET /api/v1/eventq/...` of every live shard, as each
realm's first administrator), watch (a user's own event queue, printed as it goes).
They read the database only for whom to ask and as whom; the queues themselves live in
the servers' memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from models.database import Database
from models.tables import Realm, Role, UserProfile
from server.ops.cli.shared import Commands, emit, find_realm, find_user, table

# `eventq queues` and `eventq clients` ask every shard that said it was alive this
# recently (shards say so every 10 s).
LIVE_SHARD_WINDOW_SECS = 60.0


def _server_urls(args: argparse.Namespace, db: Database) -> list[str]:
    """The servers to ask: `--server` if given, else every live shard of the database,
    else the default address."""
    import time

    from models.ownership import list_shards

    if args.server is not None:
        return [args.server]
    with db.snapshot() as session:
        shards = list_shards(session)
    now = time.time()
    urls = [shard.url for shard in shards if now - shard.seen_at <= LIVE_SHARD_WINDOW_SECS]
    return urls or [args.default_server]


def _server_get(args: argparse.Namespace, db: Database, path: str) -> list[tuple[Realm, Any]]:
    """GET an admin endpoint of every running shard once per realm, as the realm's first
    active owner or administrator (the CLI has the database, hence their API key).

    A shard that does not answer is reported on stderr and skipped; none answering is
    an error."""
    import base64
    import urllib.error
    import urllib.request

    from sqlalchemy import select

    with db.snapshot() as session:
        realms = (
            [find_realm(session, args.realm)]
            if args.realm
            else list(session.scalars(select(Realm).order_by(Realm.id)))
        )
        admins = {}
        for realm in realms:
            admin = session.scalars(
                select(UserProfile)
                .where(
                    UserProfile.realm_id == realm.id,
                    UserProfile.is_active.is_(True),
                    UserProfile.role <= Role.ADMINISTRATOR,
                )
                .order_by(UserProfile.id)
            ).first()
            if admin is not None:
                admins[realm.id] = (admin.email, admin.api_key)
    answers = []
    unreachable = []
    for url in _server_urls(args, db):
        try:
            for realm in realms:
                if realm.id not in admins:
                    continue  # a realm without an administrator has no queue anyone could list
                email, key = admins[realm.id]
                token = base64.b64encode(f"{email}:{key}".encode()).decode()
                request = urllib.request.Request(
                    f"{url.rstrip('/')}/api/v1/{path}",
                    headers={"Authorization": f"Basic {token}", "User-Agent": "eventq-cli"},
                )
                with urllib.request.urlopen(request, timeout=10) as response:
                    answers.append((realm, json.loads(response.read())))
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            unreachable.append(f"cannot reach the server at {url}: {reason}")
    if unreachable and not answers:
        raise ValueError("; ".join(unreachable))
    for problem in unreachable:
        print(f"warning: {problem}", file=sys.stderr)
    return answers


def cmd_queues(args: argparse.Namespace, db: Database) -> None:
    import time

    now = time.time()
    data = []
    for realm, answer in _server_get(args, db, "eventq/queues"):
        shard = answer.get("shard", "-")
        for queue in answer["queues"]:
            data.append({"realm": realm.string_id, "shard": shard, **queue})
        delivery = answer["delivery"]
        if delivery["failing"]:
            # On stderr, so `--json` output stays one document: the operator must see it.
            print(
                f"warning: delivery for realm {realm.string_id} on shard {shard} is paused after "
                f"seq {delivery['routed_seq']} ({delivery['consecutive_failures']} failures in "
                f"a row, retrying in {delivery['retry_in_secs']:.0f}s): {delivery['last_error']}",
                file=sys.stderr,
            )
    rows = [
        [
            q["realm"],
            q["shard"],
            q["queue_id"],
            q["user_id"],
            f"{q['client_name']}/{q['client_version'] or '-'}",
            ",".join(k for k, v in q["capabilities"].items() if v) or "-",
            ",".join(q["event_types"]) if q["event_types"] is not None else "all",
            q["pending"],
            "waiting" if q["waiting"] else f"{now - q['last_active']:.0f}s ago",
            f"{q['expires_in']:.0f}s",
        ]
        for q in data
    ]
    emit(
        args,
        data,
        table(
            [
                "REALM",
                "SHARD",
                "QUEUE",
                "USER",
                "CLIENT",
                "CAPABILITIES",
                "EVENT TYPES",
                "PENDING",
                "LAST POLL",
                "EXPIRES IN",
            ],
            rows,
        ),
    )


def cmd_clients(args: argparse.Namespace, db: Database) -> None:
    data = []
    for realm, answer in _server_get(args, db, "eventq/clients"):
        for client in answer["clients"]:
            data.append({"realm": realm.string_id, "shard": answer.get("shard", "-"), **client})
    rows = [
        [
            c["realm"],
            c["shard"],
            c["client_name"],
            c["client_version"] or "-",
            c["sequence"],
            c["queues"],
        ]
        for c in data
    ]
    emit(
        args,
        data,
        table(["REALM", "SHARD", "CLIENT", "VERSION", "DEACTIVATION SEQUENCE", "QUEUES"], rows),
    )


def cmd_watch(args: argparse.Namespace, db: Database) -> None:
    import asyncio
    import signal

    from clients.client import EventClientError
    from clients.watch import watch

    with db.snapshot() as session:
        user = find_user(session, find_realm(session, args.realm), args.email)
        email, api_key = user.email, user.api_key

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await watch(args.server, email, api_key, sys.stdout, stop=stop, max_events=args.max_events)

    try:
        asyncio.run(run())
    except EventClientError as error:
        raise ValueError(str(error)) from None


def add_commands(commands: Commands) -> None:
    """Add `queues`, `clients` and `watch`."""
    for name, func, text in (
        (
            "queues",
            cmd_queues,
            "List the live queues of every running shard: shard, id, user, client, "
            "capabilities, event types, pending events, last poll, expiry.",
        ),
        (
            "clients",
            cmd_clients,
            "Count the live queues of every running shard per client name and version, and "
            "which deactivation sequence (full or legacy) each gets.",
        ),
    ):
        p = commands.on_database(name, func, text)
        p.add_argument("realm", nargs="?", help="realm subdomain (default: every realm)")
        p.add_argument(
            "--server",
            help="URL of one running server to ask (default: every shard of the database "
            f"seen in the last minute, else {commands.default_server})",
        )
        p.set_defaults(default_server=commands.default_server)
    p = commands.on_database(
        "watch",
        cmd_watch,
        "Print the live events a user's client receives, with a one-line summary of "
        "each change of channel members (Ctrl-C stops).",
    )
    p.add_argument("realm", help="realm subdomain")
    p.add_argument("email", help="whose view to watch")
    p.add_argument(
        "--server",
        default=commands.default_server,
        help=f"URL of the running server (default: {commands.default_server})",
    )
    p.add_argument("--max-events", type=int, metavar="N", help="stop after N events")
