"""`eventq migrate` and `eventq serve`: the database schema and the server process.

`migrate` creates or upgrades the schema; `serve` runs one event-queue server (one
shard, with `--shard`) until SIGTERM or SIGINT (server.ops.serve). Both are given the
settings rather than an open database, since the schema may not exist yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from models.database import Database
from models.ownership import check_shard_name
from server.ops.cli.shared import Commands, emit
from server.ops.config import Settings
from server.ops.logs import JSON

log = logging.getLogger("eventq.cli")


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> None:
    from migrations import upgrade

    upgrade(Database(settings.database_url).url)
    emit(args, {"migrated": True}, f"Database migrated to the newest schema: {_safe_url(settings)}")


def _safe_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> None:
    import asyncio

    from server.ops.demo import ensure_demo_realm, print_connection_help
    from server.ops.serve import run_server

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


def add_commands(commands: Commands) -> None:
    """Add `migrate` and `serve`."""
    commands.on_settings(
        "migrate", cmd_migrate, "Create or upgrade the database schema to the newest revision."
    )
    p = commands.on_settings(
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
