"""What the `eventq` command modules share: registering a command, finding what its
arguments name, and printing its answer.

Each command module of this package adds its subcommands through `Commands` (main.py
only assembles them and runs the one chosen), looks up the realm, user or channels its
arguments name with `find_realm`, `find_user` and `find_streams` (a missing one is a
NotFound, printed as `eventq: error: ...`), and prints with `emit`: readable text, or
JSON with `--json`. It is a module of its own, not part of main.py, because main.py
imports every command module: they could not import it back without a circle.
"""

from __future__ import annotations

import argparse
import enum
import json
from collections.abc import Callable, Sequence
from typing import Any

from actions.errors import NotFound
from models.database import Database
from models.queries import get_realm, get_streams_by_names, get_user_by_email
from models.tables import Realm, Stream, UserProfile
from server.ops.config import DEFAULT_HOST, DEFAULT_PORT, Settings


class Needs(enum.Enum):
    """What `main` prepares before it runs a command, and so what the command is given."""

    # The database, once its schema is known to be the newest: most commands.
    DATABASE = "database"
    # The settings only: the command makes the schema (migrate, cluster), waits for it
    # (serve) or needs no database (nginx-config).
    SETTINGS = "settings"
    # Nothing: the command reports every failure itself and returns its own exit
    # status (probe, whose statuses are Nagios').
    NOTHING = "nothing"


DataCommand = Callable[[argparse.Namespace, Database], None]
SettingsCommand = Callable[[argparse.Namespace, Settings], None]
StatusCommand = Callable[[argparse.Namespace], int]


class Commands:
    """The subcommands of `eventq` being assembled; each command module adds its own.

    A command's parser lists `--json` among its options (every command has it) and
    gives its help text as its description too. The chosen command's function is
    `args.func`, and what it needs is `args.needs` (a `Needs`).
    """

    def __init__(
        self,
        subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
        common: argparse.ArgumentParser,
    ) -> None:
        self._subparsers = subparsers
        self._common = common
        # What `--server` defaults to, in the help of the commands that ask a server.
        try:
            env = Settings.from_env()
            self.default_server = f"http://{env.host}:{env.port}"
        except ValueError:  # a bad EVENTQ_PORT is reported when a command runs
            self.default_server = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"

    def on_database(self, name: str, func: DataCommand, help_text: str) -> argparse.ArgumentParser:
        """Add a command that works on the database (`func(args, db)`)."""
        return self._add(name, func, help_text, Needs.DATABASE)

    def on_settings(
        self, name: str, func: SettingsCommand, help_text: str
    ) -> argparse.ArgumentParser:
        """Add a command given the settings only (`func(args, settings)`)."""
        return self._add(name, func, help_text, Needs.SETTINGS)

    def on_its_own(self, name: str, func: StatusCommand, help_text: str) -> argparse.ArgumentParser:
        """Add a command that handles its own errors (`func(args)` is the exit status)."""
        return self._add(name, func, help_text, Needs.NOTHING)

    def _add(
        self, name: str, func: Callable[..., object], help_text: str, needs: Needs
    ) -> argparse.ArgumentParser:
        command = self._subparsers.add_parser(
            name, parents=[self._common], help=help_text, description=help_text
        )
        command.set_defaults(func=func, needs=needs)
        return command


def find_realm(session: Any, subdomain: str) -> Realm:
    """The realm with this subdomain; NotFound if there is none."""
    realm = get_realm(session, subdomain)
    if realm is None:
        raise NotFound(f"No realm with subdomain {subdomain!r}.")
    return realm


def find_user(session: Any, realm: Realm, email: str) -> UserProfile:
    """The user of `realm` with this email; NotFound if there is none."""
    user = get_user_by_email(session, realm.id, email)
    if user is None:
        raise NotFound(f"No user {email!r} in realm {realm.string_id!r}.")
    return user


def find_streams(session: Any, realm: Realm, names: Sequence[str]) -> list[Stream]:
    """The channels named (case-insensitively), in one statement however many."""
    found = get_streams_by_names(session, realm.id, names)
    missing = [name for name in names if name.strip() not in found]
    if missing:
        raise NotFound(f"No channel {', '.join(map(repr, missing))} in realm {realm.string_id!r}.")
    return [found[name.strip()] for name in names]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A left-aligned text table."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print a command's answer: `text`, or `data` as JSON with `--json`."""
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else text)
