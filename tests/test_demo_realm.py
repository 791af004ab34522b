"""The demo realm of `make run` (`eventq serve --demo`), on both backends: a client can
open it, and the connect command it prints works exactly as printed.

The realm has the welcome messages (two topics of the welcome channel, a topic of the
web-public channel and a direct message to the demo login), created once: a second start
sends none again, and a demo realm from before the messages existed gets them. The
connect command is read from a real server's output and run by a shell from another
directory, with a bare environment (no activated virtual environment, no `~/.zuliprc`),
as a new user on a fresh machine would paste it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select

from models.database import Database
from models.messages.history import fetch_messages
from models.messages.narrows import parse_narrow
from models.queries import get_realm, get_user_by_email
from models.tables import Message, UserMessage
from server.ops.demo import (
    DEMO_REALM,
    DEMO_USERS,
    WELCOME_CHANNEL,
    WELCOME_MESSAGES,
    ensure_demo_realm,
)
from tests.helpers.api import ApiClient
from tests.helpers.server import LiveServer

CONNECT_LINE = re.compile(r"^\s*zulip client:\s+(.+)$")
# Running the printed command: a Python start, an import of `zulip` and one register.
COMMAND_TIMEOUT_SECS = 60.0


def message_count(db: Database) -> int:
    with db.snapshot() as session:
        realm = get_realm(session, DEMO_REALM)
        assert realm is not None
        return int(
            session.scalar(select(func.count(Message.id)).where(Message.realm_id == realm.id)) or 0
        )


def login_history(db: Database) -> list[dict[str, Any]]:
    """The demo login's newest messages, as `GET /messages` gives them."""
    with db.snapshot() as session:
        realm = get_realm(session, DEMO_REALM)
        assert realm is not None
        login = get_user_by_email(session, realm.id, DEMO_USERS[0][0])
        assert login is not None
        answer = fetch_messages(
            session,
            login.id,
            anchor="newest",
            num_before=50,
            num_after=0,
            narrow=parse_narrow([]),
            apply_markdown=False,
        )
    return list(answer["messages"])


def test_the_welcome_messages_are_sent_once(database_url: str) -> None:
    login = ensure_demo_realm(database_url)
    assert login.email == DEMO_USERS[0][0]
    db = Database(database_url)
    try:
        assert message_count(db) == len(WELCOME_MESSAGES)
        history = login_history(db)
        # The login sees every one: the channels' and the direct message to them.
        assert [m["content"] for m in history] == [content for _, _, _, content in WELCOME_MESSAGES]
        topics = {(m["display_recipient"], m["subject"]) for m in history if m["type"] == "stream"}
        assert {t for c, t in topics if c == WELCOME_CHANNEL} == {
            "welcome to eventq",
            "things to try",
        }
        [direct] = [m for m in history if m["type"] == "private"]
        assert direct["sender_email"] == "hamlet@demo.example.com"
        # Unread for the login but its own (a sender's copy is read).
        assert [m["flags"] for m in history if m["sender_email"] != login.email] == [
            [] for m in history if m["sender_email"] != login.email
        ]

        # A second start sends nothing and returns the same login.
        assert ensure_demo_realm(database_url) == login
        assert message_count(db) == len(WELCOME_MESSAGES)

        # A demo realm from before the welcome messages (none in it) gets them.
        with db.write() as session:
            session.execute(delete(UserMessage))
            session.execute(delete(Message))
        assert ensure_demo_realm(database_url) == login
        assert message_count(db) == len(WELCOME_MESSAGES)
    finally:
        db.dispose()


def test_the_printed_connect_command_works_as_printed(database_url: str, tmp_path: Path) -> None:
    server = LiveServer(database_url, extra_args=("--demo",)).start()
    try:
        line = server.wait_for_log(CONNECT_LINE, 30.0)
        match = CONNECT_LINE.match(line)
        assert match is not None
        command = match.group(1)
        # As a new user pastes it: another directory, a bare environment.
        home = tmp_path / "home"
        home.mkdir()
        ran = subprocess.run(
            ["/bin/sh", "-c", command],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"},
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECS,
        )
        assert ran.returncode == 0, (command, ran.stdout, ran.stderr)
        assert re.fullmatch(r"success \S+\n", ran.stdout), (command, ran.stdout, ran.stderr)

        # The login the help printed opens the realm and finds the welcome messages.
        login = re.search(r"demo login:\s+email (\S+)\s+API key (\S+)", "\n".join(server.lines))
        assert login is not None
        client = ApiClient(server.url, login.group(1), login.group(2))
        answer = client.ok(
            "GET", "/messages", {"anchor": "newest", "num_before": 10, "num_after": 0}
        )
        assert len(answer["messages"]) == len(WELCOME_MESSAGES)
    finally:
        assert server.stop() == 0

    # A restart with --demo sends no welcome message again.
    again = LiveServer(database_url, extra_args=("--demo",)).start()
    try:
        again.wait_for_log(CONNECT_LINE, 30.0)
    finally:
        assert again.stop() == 0
    db = Database(database_url)
    try:
        assert message_count(db) == len(WELCOME_MESSAGES)
    finally:
        db.dispose()
