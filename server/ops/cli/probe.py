"""`eventq probe`: check event delivery end to end, as a Nagios plugin.

The probe itself is server.ops.probe; this module gives it its arguments and prints its
one line. It runs on its own (`Needs.NOTHING`): whatever goes wrong, even a bad
setting or an unreachable database, is one of its Nagios statuses, never `eventq:
error`.
"""

from __future__ import annotations

import argparse

from sqlalchemy.exc import SQLAlchemyError

from migrations import SchemaOutOfDate, check_schema
from models.database import Database
from server.ops.cli.shared import Commands, emit
from server.ops.config import Settings
from server.ops.probe import DEFAULT_CRIT_MS, DEFAULT_WARN_MS


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
    emit(args, result.to_json(), result.line())
    return result.status


def add_commands(commands: Commands) -> None:
    """Add `probe`."""
    p = commands.on_its_own(
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
        default=commands.default_server,
        help=f"URL of the running server (default: {commands.default_server})",
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
