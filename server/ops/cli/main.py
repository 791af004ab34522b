"""The `eventq` admin command line: migrate, create and list state, serve.

Every command prints a readable answer, or JSON with `--json`. Bad input (unknown
realm, user or channel, a duplicate, a value outside Zulip's limits) prints one line
`eventq: error: ...` on stderr and exits with status 1, having changed nothing: each
command runs in one transaction that commits only when the whole command succeeded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

from actions.errors import ActionError, InvalidInput, NotFound
from actions.messages import ChannelTarget, DirectTarget, check_send_message
from actions.realms import do_create_realm
from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions, bulk_remove_subscriptions
from actions.users import do_create_user, do_deactivate_user, do_reactivate_user
from migrations import SchemaOutOfDate, check_schema
from models.database import DEFAULT_SQLITE_PATH, Database, normalize_url
from models.outbox import lock_realm
from models.ownership import check_shard_name
from models.queries import (
    get_realm,
    get_streams_by_names,
    get_user_by_email,
    realm_streams,
    realm_users,
)
from models.retention import BATCH_RECIPIENT_ROWS, PRUNE_PAUSE_RATIO
from models.tables import Realm, Role, Stream, UserProfile
from models.visibility import active_subscribers
from server.ops.config import DEFAULT_HOST, DEFAULT_PORT, Settings, log_format_from_env
from server.ops.logs import JSON, TEXT, configure_logging
from server.ops.probe import DEFAULT_CRIT_MS, DEFAULT_WARN_MS

log = logging.getLogger("eventq.cli")


def _realm(session: Any, subdomain: str) -> Realm:
    realm = get_realm(session, subdomain)
    if realm is None:
        raise NotFound(f"No realm with subdomain {subdomain!r}.")
    return realm


def _user(session: Any, realm: Realm, email: str) -> UserProfile:
    user = get_user_by_email(session, realm.id, email)
    if user is None:
        raise NotFound(f"No user {email!r} in realm {realm.string_id!r}.")
    return user


def _streams(session: Any, realm: Realm, names: Sequence[str]) -> list[Stream]:
    """The channels named (case-insensitively), in one statement however many."""
    found = get_streams_by_names(session, realm.id, names)
    missing = [name for name in names if name.strip() not in found]
    if missing:
        raise NotFound(f"No channel {', '.join(map(repr, missing))} in realm {realm.string_id!r}.")
    return [found[name.strip()] for name in names]


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    from migrations import upgrade

    upgrade(Database(settings.database_url).url)
    _emit(
        args, {"migrated": True}, f"Database migrated to the newest schema: {_safe_url(settings)}"
    )


def _safe_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)


def cmd_create_realm(args: argparse.Namespace, db: Database) -> None:
    with db.write() as session:
        realm = do_create_realm(session, args.subdomain, args.name)
        data = {"realm_id": realm.id, "string_id": realm.string_id, "name": realm.name}
    _emit(args, data, f"Created realm {data['string_id']!r} (id {data['realm_id']}).")


def cmd_create_user(args: argparse.Namespace, db: Database) -> None:
    try:
        role = Role.from_name(args.role)
    except ValueError as error:
        raise InvalidInput(str(error).capitalize() + ".") from None
    with db.write() as session:
        realm = _realm(session, args.realm)
        user = do_create_user(session, realm.id, args.email, args.full_name, role, args.bot)
        data = {"user_id": user.id, "email": user.email, "api_key": user.api_key}
    _emit(
        args,
        data,
        f"Created user {data['email']} (id {data['user_id']}).\nAPI key: {data['api_key']}",
    )


def cmd_create_stream(args: argparse.Namespace, db: Database) -> None:
    with db.write() as session:
        realm = _realm(session, args.realm)
        stream = do_create_stream(
            session,
            realm.id,
            args.name,
            invite_only=args.private,
            is_web_public=args.web_public,
            description=args.description,
        )
        data = {"stream_id": stream.id, "name": stream.name}
    _emit(args, data, f"Created channel {data['name']!r} (id {data['stream_id']}).")


def _change_subscriptions(args: argparse.Namespace, db: Database, subscribe: bool) -> None:
    action = bulk_add_subscriptions if subscribe else bulk_remove_subscriptions
    with db.write() as session:
        # The subdomain must be read to know which realm to lock; everything else is
        # read under the lock (models.outbox), so a user deactivated meanwhile is seen.
        realm = _realm(session, args.realm)
        lock_realm(session, realm.id)
        user = _user(session, realm, args.email)
        streams = _streams(session, realm, args.streams)
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
    _emit(args, {key: changed, already.replace(" ", "_"): unchanged}, "\n".join(lines))


def cmd_subscribe(args: argparse.Namespace, db: Database) -> None:
    _change_subscriptions(args, db, subscribe=True)


def cmd_unsubscribe(args: argparse.Namespace, db: Database) -> None:
    _change_subscriptions(args, db, subscribe=False)


def _set_user_active(args: argparse.Namespace, db: Database, active: bool) -> None:
    action = do_reactivate_user if active else do_deactivate_user
    with db.write() as session:
        realm = _realm(session, args.realm)
        user = _user(session, realm, args.email)
        action(session, realm.id, user.id)
        data = {"user_id": user.id, "email": user.email, "is_active": active}
    done = (
        f"Reactivated {user.email}; their channel subscriptions are back."
        if active
        else f"Deactivated {user.email}: their API key and queues stop working."
    )
    _emit(args, data, done)


def cmd_deactivate_user(args: argparse.Namespace, db: Database) -> None:
    _set_user_active(args, db, active=False)


def cmd_reactivate_user(args: argparse.Namespace, db: Database) -> None:
    _set_user_active(args, db, active=True)


# The `client` of messages sent from the command line.
CLI_CLIENT_NAME = "eventq"


def cmd_send(args: argparse.Namespace, db: Database) -> None:
    target: ChannelTarget | DirectTarget
    recipients: list[str] = []
    if args.channel is not None:
        if args.topic is None:
            raise InvalidInput("--channel needs --topic.")
        target = ChannelTarget(args.channel)
    else:
        recipients = [e.strip() for value in args.to for e in value.split(",") if e.strip()]
        target = DirectTarget(emails=tuple(recipients))
    with db.write() as session:
        # The subdomain must be read to know which realm to lock; the sender is read
        # under the lock, and read again by the action, which refuses a deactivated one.
        realm = _realm(session, args.realm)
        lock_realm(session, realm.id)
        sender = _user(session, realm, args.email)
        message_id = check_send_message(
            session, realm.id, sender.id, target, args.topic, args.text, CLI_CLIENT_NAME
        )
    where = f"#{args.channel} > {args.topic}" if args.channel is not None else ", ".join(recipients)
    _emit(args, {"id": message_id}, f"Sent message {message_id} to {where}.")


def cmd_users(args: argparse.Namespace, db: Database) -> None:
    with db.snapshot() as session:
        realm = _realm(session, args.realm)
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
    _emit(args, users, _table(["ID", "EMAIL", "FULL NAME", "ROLE", "STATE", "BOT"], rows))


def cmd_streams(args: argparse.Namespace, db: Database) -> None:
    with db.snapshot() as session:
        realm = _realm(session, args.realm)
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
    _emit(args, data, _table(["ID", "NAME", "VISIBILITY", "N", "SUBSCRIBERS"], rows))


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    import asyncio

    from server.ops.serve import run_server
    from server.ops.demo import ensure_demo_realm, print_connection_help

    host = args.host or settings.host
    port = args.port if args.port is not None else settings.port
    if args.shard is not None:
        settings = dataclasses.replace(settings, shard=check_shard_name(args.shard))

    async def on_ready(service: object, bound_port: int) -> None:
        demo = None
        if args.demo:
            demo = ensure_demo_realm(settings.database_url)
        if settings.log_format == JSON:
            # Every output line must be a JSON object: the help goes through the log.
            url = f"http://{host}:{bound_port}"
            log.info("member page %s/, operator page %s/admin, API %s/api/v1/", url, url, url)
            if demo is not None:
                log.info("demo login: email %s, API key %s", demo.email, demo.api_key)
        else:
            print_connection_help(host, bound_port, demo)

    asyncio.run(run_server(settings, host, port, on_ready))


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
            [_realm(session, args.realm)]
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
    _emit(
        args,
        data,
        _table(
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
    _emit(
        args,
        data,
        _table(["REALM", "SHARD", "CLIENT", "VERSION", "DEACTIVATION SEQUENCE", "QUEUES"], rows),
    )


def cmd_watch(args: argparse.Namespace, db: Database) -> None:
    import asyncio
    import signal

    from clients.client import EventClientError
    from clients.watch import watch

    with db.snapshot() as session:
        user = _user(session, _realm(session, args.realm), args.email)
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


# A larger --pause would make a prune of a big history take days.
MAX_PRUNE_PAUSE_RATIO = 100.0


def cmd_prune_outbox(args: argparse.Namespace, db: Database) -> None:
    import time

    from models.outbox import realm_positions
    from models.retention import prune_batch

    older_than_secs = args.older_than
    if older_than_secs is None:
        older_than_secs = Settings.from_env().outbox_min_age_secs
    if older_than_secs < 0:
        raise ValueError("--older-than must be 0 or more seconds")
    if args.batch_rows < 1:
        raise ValueError("--batch-rows must be 1 or more")
    if not 0 <= args.pause <= MAX_PRUNE_PAUSE_RATIO:
        raise ValueError(f"--pause must be between 0 and {MAX_PRUNE_PAUSE_RATIO:g}")
    started = time.monotonic()
    cutoff = time.time() - older_than_secs
    events = recipients = 0
    dropped: list[str] = []
    with db.snapshot() as session:
        # Every committed row counts as routed: a server that starts later begins at
        # the realm's position, and a running one keeps what its queues' checkpoints need.
        positions = realm_positions(session)
    paused = 0.0
    for realm_id, newest in sorted(positions.items()):
        done = False
        while not done:
            # One short transaction per batch, as the server's own sweep does, and a
            # rest after it in proportion (--pause) so that the servers keep the machine.
            batch_started = time.monotonic()
            with db.write() as session:
                # A server's sweep may be pruning this realm: wait for its batch, never
                # skip the realm (which would leave its rows and report success).
                batch = prune_batch(
                    session,
                    realm_id,
                    newest,
                    cutoff,
                    batch_rows=args.batch_rows,
                    wait_for_other_pruner=True,
                )
            events += batch.events
            recipients += batch.recipients
            dropped += batch.dropped_queue_ids
            done = batch.done
            if not done and args.pause > 0:
                rest = (time.monotonic() - batch_started) * args.pause
                time.sleep(rest)
                paused += rest
    seconds = time.monotonic() - started
    data = {
        "events": events,
        "recipients": recipients,
        "seconds": round(seconds, 3),
        "paused_seconds": round(paused, 3),
        "dropped_queues": len(dropped),
    }
    text = (
        f"Pruned {events} events ({recipients} recipient rows) older than "
        f"{older_than_secs:g}s in {seconds:.2f}s ({paused:.2f}s of it resting between batches)"
    )
    if dropped:
        text += f"; {len(dropped)} queues too far behind were deleted"
    _emit(args, data, text + ".")


def cmd_probe(args: argparse.Namespace) -> int:
    """`eventq probe`: prints one Nagios line (or JSON); returns the plugin's status."""
    from server.ops.probe import CRITICAL, UNKNOWN, ProbeResult, database_error, run_probe

    try:
        settings = Settings.from_env(args.database_url)
        db = Database(settings.database_url)
    except ValueError as error:
        result = ProbeResult(UNKNOWN, str(error), None, args.warn, args.crit)
    else:
        try:
            check_schema(db.url)
            result = run_probe(db, args.realm, args.server, args.warn, args.crit)
        except SchemaOutOfDate as error:
            result = ProbeResult(UNKNOWN, str(error), None, args.warn, args.crit)
        except SQLAlchemyError as error:
            message = f"database: {database_error(error)}"
            result = ProbeResult(CRITICAL, message, None, args.warn, args.crit)
        finally:
            db.dispose()
    _emit(args, result.to_json(), result.line())
    return result.status


def cmd_nginx_config(args: argparse.Namespace, settings: Settings) -> None:
    """`eventq nginx-config`: the routing configuration of a list of shards (server.ops.cluster.supervisor)."""
    from server.ops.cluster.supervisor import (
        nginx_site_config,
        nginx_standalone_config,
        parse_shard,
    )
    from server.ops.config import parse_address

    shards = [parse_shard(spec) for spec in args.shard]
    address = parse_address("--listen", args.listen)
    assert address is not None, "argparse gives --listen a default"
    host, port = address
    if args.standalone is None:
        print(nginx_site_config(shards, host, port), end="")
    else:
        from pathlib import Path

        print(nginx_standalone_config(shards, host, port, Path(args.standalone)), end="")


def cmd_cluster(args: argparse.Namespace, settings: Settings) -> None:
    """`eventq cluster`: migrate, then nginx and N shards until SIGTERM or Ctrl-C."""
    from server.ops.cluster.supervisor import (
        ClusterError,
        ClusterOptions,
        cluster_dir,
        find_nginx,
        run_cluster,
    )
    from server.ops.demo import ensure_demo_realm, print_connection_help

    nginx = args.nginx or find_nginx()
    if nginx is None:
        raise ClusterError("nginx is not installed: apt-get install nginx-light, or pass --nginx")
    options = ClusterOptions(
        shards=args.shards,
        host=args.host,
        port=args.port if args.port is not None else settings.port,
        database_url=settings.database_url,
        nginx=nginx,
        # Beside the default SQLite file, whichever database the shards use.
        var_dir=cluster_dir(DEFAULT_SQLITE_PATH.parent),
    )
    cmd_migrate(args, settings)
    demo = ensure_demo_realm(settings.database_url) if args.demo else None

    def on_ready() -> None:
        print_connection_help(options.host, options.port, demo)
        shards = ", ".join(f"{s.name} {s.address}" for s in options.shard_addresses())
        print(f"  shards:         {shards}  (processes: {options.var_dir}/cluster.json)")
        print(f"  nginx:          {options.var_dir}/nginx.conf, logs beside it", flush=True)

    run_cluster(options, on_ready)


DataCommand = Callable[[argparse.Namespace, Database], None]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `eventq` with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="eventq",
        description="eventq: a Zulip-compatible real-time event-queue server and its admin "
        "tools. Every command works on the database named by --database-url, else "
        f"EVENTQ_DATABASE_URL, else the SQLite file {DEFAULT_SQLITE_PATH}.",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="SQLAlchemy database URL (overrides EVENTQ_DATABASE_URL)",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func: Callable[..., object], help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, parents=[common], help=help_text, description=help_text)
        command.set_defaults(func=func)
        return command

    add("migrate", cmd_migrate, "Create or upgrade the database schema to the newest revision.")
    p = add(
        "serve",
        cmd_serve,
        "Run the event-queue server (Zulip-compatible API under /api/v1) until SIGTERM or "
        "SIGINT; queues survive a restart.",
    )
    p.add_argument("--host", help="address to listen on (default: EVENTQ_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default: EVENTQ_PORT or 9993)")
    p.add_argument(
        "--demo",
        action="store_true",
        help="create a demo realm with users and channels if missing and print a login",
    )
    p.add_argument(
        "--shard",
        metavar="NAME",
        help="this process's name among several on one database (default: EVENTQ_SHARD or "
        "main): the prefix of the queue ids it creates, which a proxy routes polls by; "
        "lower-case letters, digits and underscores (see docs/deployment.md)",
    )
    p = add("create-realm", cmd_create_realm, "Create a realm (an organization).")
    p.add_argument("subdomain", help="the realm's subdomain: lower-case letters, digits, hyphens")
    p.add_argument("--name", help="display name (default: the subdomain)")
    p = add("create-user", cmd_create_user, "Create a user and print their API key.")
    p.add_argument("realm", help="realm subdomain")
    p.add_argument("email")
    p.add_argument("--full-name", help="display name (default: the part of EMAIL before @)")
    p.add_argument(
        "--role", default="member", help="owner, admin, moderator, member (default) or guest"
    )
    p.add_argument("--bot", action="store_true", help="create a bot user")
    p = add("create-stream", cmd_create_stream, "Create a channel (public by default).")
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
        p = add(name, func, verb)
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
        p = add(name, func, text)
        p.add_argument("realm", help="realm subdomain")
        p.add_argument("email", help="the user's email")
    try:
        env = Settings.from_env()
        default_server = f"http://{env.host}:{env.port}"
    except ValueError:  # a bad EVENTQ_PORT is reported when a command runs
        default_server = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
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
        p = add(name, func, text)
        p.add_argument("realm", nargs="?", help="realm subdomain (default: every realm)")
        p.add_argument(
            "--server",
            help="URL of one running server to ask (default: every shard of the database "
            f"seen in the last minute, else {default_server})",
        )
        p.set_defaults(default_server=default_server)
    p = add(
        "watch",
        cmd_watch,
        "Print the live events a user's client receives, with a one-line summary of "
        "each change of channel members (Ctrl-C stops).",
    )
    p.add_argument("realm", help="realm subdomain")
    p.add_argument("email", help="whose view to watch")
    p.add_argument(
        "--server",
        default=default_server,
        help=f"URL of the running server (default: {default_server})",
    )
    p.add_argument("--max-events", type=int, metavar="N", help="stop after N events")
    p = add(
        "prune-outbox",
        cmd_prune_outbox,
        "Delete outbox history no queue needs (the server does this every minute): rows "
        "older than --older-than, up to the oldest queue checkpoint of each realm, in short "
        "transactions. Prints the rows removed and the time taken.",
    )
    p.add_argument(
        "--older-than",
        type=float,
        metavar="SECS",
        help="minimum age of a removed row (default: EVENTQ_OUTBOX_MIN_AGE_SECS or 3600)",
    )
    p.add_argument(
        "--batch-rows",
        type=int,
        default=BATCH_RECIPIENT_ROWS,
        metavar="N",
        help=f"recipient rows deleted per transaction (default: {BATCH_RECIPIENT_ROWS})",
    )
    p.add_argument(
        "--pause",
        type=float,
        default=PRUNE_PAUSE_RATIO,
        metavar="RATIO",
        help="after each batch, rest RATIO times as long as the batch took, so that the "
        f"prune leaves the database to the servers (default: {PRUNE_PAUSE_RATIO:g}, at "
        "most half the database's time; 0: as fast as possible)",
    )
    p = add(
        "probe",
        cmd_probe,
        "Check event delivery end to end, as a Nagios plugin: commit a probe event for "
        "the realm's probe bot (eventq-probe-bot@REALM.invalid, created on first use) and "
        "time it until a long-poll of the bot's queue receives it. Prints one line, "
        "'EVENTQ OK - 12.3 ms | delivery=12.3ms;WARN;CRIT;0', and exits 0 (OK), 1 "
        "(slower than --warn), 2 (slower than --crit, never delivered within it, server "
        "or database unreachable) or 3 (unknown realm, bad arguments).",
    )
    p.add_argument("realm", help="realm subdomain")
    p.add_argument(
        "--server",
        default=default_server,
        help=f"URL of the running server (default: {default_server})",
    )
    p.add_argument(
        "--warn",
        type=float,
        metavar="MS",
        default=DEFAULT_WARN_MS,
        help=f"warning above this many milliseconds (default: {DEFAULT_WARN_MS:g})",
    )
    p.add_argument(
        "--crit",
        type=float,
        metavar="MS",
        default=DEFAULT_CRIT_MS,
        help=f"critical above this many milliseconds, and the longest wait "
        f"(default: {DEFAULT_CRIT_MS:g})",
    )
    p = add(
        "send",
        cmd_send,
        "Send a message as a user, to a channel and topic or to users directly; its "
        "recipients get it as a message event. Prints the new message's id.",
    )
    p.add_argument("realm", help="realm subdomain")
    p.add_argument("email", help="the sender's email")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--channel", metavar="NAME", help="the channel to send to")
    # Repeated, or with commas (`--to a@x,b@x`): a list option would swallow the text.
    where.add_argument(
        "--to",
        action="append",
        metavar="EMAIL",
        help="a user to send a direct message to (repeat, or separate emails with commas)",
    )
    p.add_argument("--topic", metavar="T", help="the topic (with --channel)")
    p.add_argument("text", help="the message (Markdown)")
    p = add("users", cmd_users, "List the realm's users.")
    p.add_argument("realm", help="realm subdomain")
    p = add("streams", cmd_streams, "List the realm's channels with their subscribers.")
    p.add_argument("realm", help="realm subdomain")
    p = add(
        "nginx-config",
        cmd_nginx_config,
        "Print the nginx configuration that puts shards (`eventq serve --shard NAME`) behind "
        "one address: keep-alive upstreams, register and the REST endpoints to any shard, "
        "each poll to the shard its queue id names (the next shard as backup), polls of "
        "queues of shards no longer listed spread by a consistent hash. The output belongs "
        "in nginx's http {} block (Debian: /etc/nginx/conf.d/eventq.conf); set "
        "EVENTQ_TRUSTED_PROXY=on on the shards. Reload nginx after changing the list: the "
        "queues of a removed shard resume on another, with the same event ids.",
    )
    p.add_argument(
        "--shard",
        action="append",
        required=True,
        metavar="NAME=HOST:PORT",
        help="a shard and where it listens, e.g. shard1=127.0.0.1:9994; repeat for each "
        "shard, in a fixed order (a shard's backup is the next one)",
    )
    p.add_argument(
        "--listen",
        default="0.0.0.0:80",
        metavar="HOST:PORT",
        help="where nginx listens for clients (default: 0.0.0.0:80; add TLS as usual)",
    )
    p.add_argument(
        "--standalone",
        metavar="VAR_DIR",
        help="print a whole nginx.conf instead, running in the foreground with its pid file, "
        "logs and temporary files in VAR_DIR (start it with nginx -c FILE -p VAR_DIR)",
    )
    p = add(
        "cluster",
        cmd_cluster,
        "Run a local cluster until SIGTERM or Ctrl-C: migrate the database, then N shards "
        "(shard1..shardN on the ports after --port) and nginx on --port in front of them, "
        "with the configuration and logs in var/cluster/. A shard that dies is restarted; "
        "if nginx dies everything stops. Works on the SQLite file and on PostgreSQL.",
    )
    p.add_argument("--shards", type=int, default=3, metavar="N", help="how many (default: 3)")
    p.add_argument("--host", default="127.0.0.1", help="where nginx listens (default: 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        help="nginx's port; shard K listens on PORT+K (default: EVENTQ_PORT or 9993)",
    )
    p.add_argument(
        "--nginx",
        metavar="PATH",
        help="the nginx program (default: nginx on PATH, else /usr/sbin/nginx)",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="create a demo realm with users and channels if missing and print a login",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one `eventq` command; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        log_format = log_format_from_env()
    except ValueError:
        log_format = TEXT  # Settings.from_env reports the bad value below
    # Admin commands print their own answer; only the server logs at INFO.
    configure_logging(logging.INFO if args.command == "serve" else logging.WARNING, log_format)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.func is cmd_probe:
        # Its own statuses (Nagios'), whatever goes wrong.
        return cmd_probe(args)
    try:
        settings = Settings.from_env(args.database_url)
        if args.func in (cmd_migrate, cmd_serve, cmd_nginx_config, cmd_cluster):
            args.func(args, settings)
            return 0
        # Before the engine exists: opening a SQLite file that is not there would make it.
        check_schema(normalize_url(settings.database_url))
        db = Database(settings.database_url)
        try:
            args.func(args, db)
        finally:
            db.dispose()
    except (ActionError, ValueError, SchemaOutOfDate) as error:
        print(f"eventq: error: {error}", file=sys.stderr)
        return 1
    except (OperationalError, ProgrammingError) as error:
        message = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        print(f"eventq: error: database: {message}", file=sys.stderr)
        return 1
    except SQLAlchemyError as error:
        print(f"eventq: error: database: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
