"""The `eventq` admin command line: migrate, create and list state, serve.

Every command prints a readable answer, or JSON with `--json`. Bad input (unknown
realm, user or channel, a duplicate, a value outside Zulip's limits) prints one line
`eventq: error: ...` on stderr and exits with status 1, having changed nothing: each
command runs in one transaction that commits only when the whole command succeeded.

This module assembles the parser from the command modules of this package, each of
which adds its own commands (`add_commands`), and runs the one chosen: it prepares what
the command needs (server.ops.cli.shared.Needs) and turns its errors into that one line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sqlalchemy.exc import OperationalError, ProgrammingError, SQLAlchemyError

from actions.errors import ActionError
from migrations import SchemaOutOfDate, check_schema
from models.database import DEFAULT_SQLITE_PATH, Database, normalize_url
from server.ops.cli import cluster, messages, outbox, probe, queues, realms, serving
from server.ops.cli.shared import Commands, Needs
from server.ops.config import Settings, log_format_from_env
from server.ops.logs import TEXT, configure_logging


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
    commands = Commands(sub, common)
    # `eventq --help` lists the commands in the order they are added, the order it has
    # always had; it interleaves the modules, hence realms' two calls.
    serving.add_commands(commands)  # migrate, serve
    realms.add_commands(commands)  # create-realm ... reactivate-user
    queues.add_commands(commands)  # queues, clients, watch
    outbox.add_commands(commands)  # prune-outbox
    probe.add_commands(commands)  # probe
    messages.add_commands(commands)  # send
    realms.add_listings(commands)  # users, api-key, streams
    cluster.add_commands(commands)  # nginx-config, cluster
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
    if args.needs is Needs.NOTHING:
        # Its own statuses (probe's are Nagios'), whatever goes wrong.
        status: int = args.func(args)
        return status
    try:
        settings = Settings.from_env(args.database_url)
        if args.needs is Needs.SETTINGS:
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
