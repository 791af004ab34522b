"""Three real Zulip clients, unmodified, against a live eventq server on both backends.

- zulip-terminal 0.7.0 (Python 3.10) in a tmux pane, driven with `send-keys` and read
  with `capture-pane`: it starts on the demo realm as `make run` creates it, shows
  another user as present (and one whose last ping is old as offline) in its user
  list, shows a message another user sends while it runs with its unread counts, opens
  its topic and so clears them, sends a channel message and a direct message typed into
  it, stars, reacts, edits, mutes a channel and opens its narrows (is:starred,
  is:mentioned, is:private, pm_with, search), each checked through the API or on its
  screen.
- zulip_bots 0.9.1's `helloworld` (`zulip-run-bot`): it answers a direct message and an
  @-mention in a channel (which needs the `mentioned` flag and plain-text content, as
  `register`'s `apply_markdown` defaults to false), and reacts to what it answers.
- zulip-js 2.1.0 (node 20): `callOnEachEvent` with its defaults (`event_types` null)
  gets a message event from its first queue; sending, reading, fetching one message,
  flags, topics, editing, edit history, deleting, reactions, and its other calls (server
  settings, message preview, realm emoji, alert words, users, channels, typing) through
  its own methods.

The module's tests share one server per backend (starting one takes seconds); each test
judges only the server's log lines written during it.

Each client's environment comes from the pinned files in `tests/clients/`
(tests/helpers/real_clients.py builds and caches them). Besides what each test checks
on screen or through the API, every request a client made must have been answered
without an error status (the server's access log, per user) and the server must log
no unhandled error: a real client hitting an endpoint eventq lacks is the failure these
tests exist to catch. Waits are on screen text, log lines and answers, with timeouts.

Each test leaves its client's first and last screen (zulip-terminal) or output lines
(the bot, zulip-js's driver) in `CLIENT-evidence.txt` under its tmp_path, and appends
them to `$EVENTQ_CLIENT_EVIDENCE_DIR/CLIENT.txt` when that is set (the evidence an
issue's closing note quotes).
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actions.presence import do_update_user_presence
from actions.subscriptions import bulk_add_subscriptions
from actions.users import do_create_user
from migrations import upgrade
from models.database import Database
from models.queries import get_realm, get_stream_by_name, get_user_by_email
from server.ops.demo import DEMO_REALM, DEMO_USERS, ensure_demo_realm
from tests.helpers.api import ApiClient
from tests.helpers.databases import BACKENDS, database_url_for
from tests.helpers.real_clients import (
    JsDriver,
    LineProcess,
    PipedLog,
    TmuxTerminal,
    access_lines,
    assert_request_ok,
    first_and_last_lines,
    python_client_venv,
    refused_requests,
    require_node,
    require_python,
    require_tool,
    server_tracebacks,
    write_evidence,
    zulip_js_modules,
)
from tests.helpers.server import LiveServer, live_server

# Starting a client (a register, a first fetch of messages, drawing a screen).
START_TIMEOUT = 30.0
# An event committed now reaching a client's long-poll and its screen or callback.
EVENT_TIMEOUT = 15.0
# zulip-terminal's compose box, addressed to the topic the test writes in.
COMPOSE_BOX = r"# general\s+▶ terminal"
DIRECT_COMPOSE_BOX = r"To: King Hamlet <hamlet@demo\.example\.com>"
# zulip-terminal 0.7.0's markers in its user list (config/symbols.py, drawn in the
# `user_active` / `user_offline` palette entries): a user whose newest presence is at
# most 140 s old and `active`, and one whose presence is older. A user with no presence
# at all is `inactive` and left out of the list (its user search shows them, as `•`).
ACTIVE_MARKER = "●"
OFFLINE_MARKER = "○"
# zulip-terminal's `--debug` log of its requests, in its working directory: a named pipe
# the test reads (`PipedLog`).
API_REQUESTS_LOG = "zulip-terminal-API-requests.log"
# A channel's or a view's unread count, right-aligned at the left panel's edge.
UNREAD_GENERAL = r"# general +\d+ │"
UNREAD_ALL_MESSAGES = r"All messages +\[a\] +\d+ │"
# A first run builds the clients' environments (downloads, a compiled wheel or two).
pytestmark = pytest.mark.timeout(600)


@dataclass(frozen=True)
class Person:
    user_id: int
    email: str
    full_name: str
    api_key: str


@dataclass
class DemoSite:
    """The demo realm `make run` creates, served by a live server."""

    server: LiveServer
    database_url: str
    people: dict[str, Person]
    # The server's log line where the current test began: each test judges only the
    # requests made during it (the site is shared by the module's tests).
    since: int = 0

    def api(self, who: str) -> ApiClient:
        person = self.people[who]
        return ApiClient(self.server.url, person.email, person.api_key)

    def create_bot(self, full_name: str, email: str, channels: list[str]) -> Person:
        """A bot user of the demo realm, subscribed to `channels` (made once per site)."""
        if full_name in self.people:
            return self.people[full_name]
        db = Database(self.database_url)
        try:
            with db.write() as session:
                realm = get_realm(session, DEMO_REALM)
                assert realm is not None
                bot = do_create_user(session, realm.id, email, full_name, is_bot=True)
                person = Person(bot.id, bot.email, bot.full_name, bot.api_key)
                realm_id = realm.id
            with db.snapshot() as session:
                stream_ids = []
                for name in channels:
                    stream = get_stream_by_name(session, realm_id, name)
                    assert stream is not None, name
                    stream_ids.append(stream.id)
            with db.write() as session:
                bulk_add_subscriptions(session, realm_id, [person.user_id], stream_ids)
        finally:
            db.dispose()
        self.people[full_name] = person
        return person

    def record_presence(self, who: str, status: str, at: float) -> None:
        """A presence ping of `who` as if made at `at` (the API stamps a ping with the
        server's clock: a ping in the past is only possible through the action)."""
        db = Database(self.database_url)
        try:
            with db.write() as session:
                realm = get_realm(session, DEMO_REALM)
                assert realm is not None
                do_update_user_presence(session, realm.id, self.people[who].user_id, status, now=at)
        finally:
            db.dispose()

    def stream_id(self, name: str) -> int:
        db = Database(self.database_url)
        try:
            with db.snapshot() as session:
                realm = get_realm(session, DEMO_REALM)
                assert realm is not None
                stream = get_stream_by_name(session, realm.id, name)
                assert stream is not None, name
                return stream.id
        finally:
            db.dispose()

    def assert_no_refused_requests(self, who: str) -> None:
        """Every request `who`'s client made was answered without an error status."""
        refused = refused_requests(self.server, self.people[who].user_id, self.since)
        assert not refused, f"eventq refused requests of {who}'s client:\n" + "\n".join(refused)

    def assert_no_server_errors(self) -> None:
        errors = server_tracebacks(self.server, self.since)
        assert not errors, "the server logged errors:\n" + "\n".join(errors)

    def mark(self) -> int:
        """Where the server's log is now: for awaiting a request made after this point."""
        return len(self.server.lines)

    def assert_request_ok(
        self, who: str, method: str, path: str, timeout: float, since: int | None = None
    ) -> None:
        """`who`'s client made this request during the current test (or after `since`),
        and it was answered 200."""
        user_id = self.people[who].user_id
        start = self.since if since is None else since
        assert_request_ok(self.server, user_id, method, path, timeout, start)


@pytest.fixture(scope="module", params=BACKENDS)
def shared_site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DemoSite]:
    """The demo realm, exactly as `make run` (`eventq serve --demo`) creates it, served by
    one server for the module's tests on each backend (a server takes seconds to start)."""
    with database_url_for(str(request.param), str(tmp_path_factory.mktemp("db"))) as url:
        upgrade(url)
        with _serve_demo(url) as site:
            yield site


@pytest.fixture
def demo_site(shared_site: DemoSite) -> DemoSite:
    """The shared site, with the current test's window of its log."""
    shared_site.since = len(shared_site.server.lines)
    return shared_site


@contextmanager
def _serve_demo(database_url: str) -> Iterator[DemoSite]:
    ensure_demo_realm(database_url)
    people = {}
    db = Database(database_url)
    try:
        with db.snapshot() as session:
            realm = get_realm(session, DEMO_REALM)
            assert realm is not None
            for email, _name, _role in DEMO_USERS:
                user = get_user_by_email(session, realm.id, email)
                assert user is not None
                people[email.split("@")[0]] = Person(
                    user.id, user.email, user.full_name, user.api_key
                )
    finally:
        db.dispose()
    with live_server(database_url) as server:
        yield DemoSite(server, database_url, people)


def write_zuliprc(directory: Path, site: DemoSite, who: str) -> Path:
    """A zuliprc as Zulip's "Download zuliprc" gives it (only its owner may read it)."""
    person = site.people[who]
    path = directory / f"{who}.zuliprc"
    path.write_text(f"[api]\nemail={person.email}\nkey={person.api_key}\nsite={site.server.url}\n")
    os.chmod(path, 0o600)
    return path


def newest_messages(api: ApiClient, count: int = 20) -> list[dict[str, Any]]:
    body = api.ok(
        "GET",
        "/messages",
        {"anchor": "newest", "num_before": count, "num_after": 0, "apply_markdown": False},
    )
    messages: list[dict[str, Any]] = body["messages"]
    return messages


def message_by_id(api: ApiClient, message_id: int) -> dict[str, Any]:
    body = api.ok(
        "GET",
        "/messages",
        {"anchor": message_id, "num_before": 0, "num_after": 0, "apply_markdown": False},
    )
    found = [m for m in body["messages"] if m["id"] == message_id]
    assert found, f"message {message_id} is not visible: {body}"
    return found[0]


# -- zulip-terminal ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def zulip_terminal() -> Path:
    """`zulip-term` of zulip-terminal 0.7.0, in its own Python 3.10 virtualenv."""
    python = require_python("3.10", "zulip-terminal 0.7.0")
    return python_client_venv("zulip-terminal.txt", python) / "bin" / "zulip-term"


@pytest.fixture(scope="session")
def tmux() -> str:
    return require_tool("tmux", "zulip-terminal's test", "tmux")


def test_zulip_terminal_reads_sends_and_marks_read(
    demo_site: DemoSite,
    zulip_terminal: Path,
    tmux: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    iago = demo_site.people["iago"]
    hamlet_api = demo_site.api("hamlet")
    iago_api = demo_site.api("iago")
    # What the demo realm shows first: its newest message iago may see (the realm's
    # welcome messages; zulip-terminal cannot start on a realm without any).
    seen = newest_messages(iago_api, 50)
    assert seen, "the demo realm has no message: zulip-terminal cannot start on it"
    # Iago has read what is there, so the message sent below is his only unread one.
    iago_api.ok(
        "POST",
        "/messages/flags",
        {"messages": [m["id"] for m in seen], "op": "add", "flag": "read"},
    )
    zuliprc = write_zuliprc(tmp_path, demo_site, "iago")
    # Presence, as zulip-terminal 0.7.0 learns it: the `presences` of register's answer
    # and of the answer to its own `POST /users/me/presence` (sent as it starts, then
    # every 60 s); it handles no `presence` event. Hamlet reports presence through the
    # API now, Othello last did ten minutes ago, Polonius never did.
    hamlet_api.ok("POST", "/users/me/presence", {"status": "active"})
    demo_site.record_presence("othello", "active", time.time() - 600)
    emails = {who: demo_site.people[who].email for who in ("hamlet", "othello", "polonius")}
    presences = iago_api.ok("GET", "/realm/presence")["presences"]
    assert {emails["hamlet"], emails["othello"]} <= set(presences), presences
    assert emails["polonius"] not in presences, presences

    started_at = time.time()
    first_screen = ""
    requests_log = PipedLog(tmp_path / API_REQUESTS_LOG)
    terminal = TmuxTerminal(
        tmux,
        [str(zulip_terminal), "--config-file", str(zuliprc), "--debug"],
        cwd=tmp_path,
        env={"TERM": "xterm-256color"},
    )
    try:
        # Its UI: the channel list and the message list with the newest message.
        terminal.wait_for_text(r"# general\b", START_TIMEOUT)
        screen = terminal.wait_for_text(_message_header(seen[-1]), START_TIMEOUT)
        first_screen = screen
        assert not _unexpected_tracebacks(screen), screen
        demo_site.assert_request_ok("iago", "POST", "/api/v1/register", START_TIMEOUT)

        # Its own ping as it starts (`active`: it counts its start as user input) was
        # answered, the answer's `presences` replacing register's, and others see it.
        requests_log.wait_for_line('"POST /api/v1/users/me/presence HTTP/1.1" 200', START_TIMEOUT)
        own = hamlet_api.ok("GET", f"/users/{iago.user_id}/presence")["presence"]
        assert own["aggregated"]["status"] == "active", own
        assert own["aggregated"]["timestamp"] >= int(started_at) - 1, own
        # Its user list shows Hamlet present, Othello offline and leaves Polonius out.
        screen = terminal.wait_for_text(rf"{ACTIVE_MARKER} King Hamlet\b", START_TIMEOUT)
        _assert_presence_shown(screen)

        # A message another user sends while it runs shows up, unread.
        live_text = f"Hamlet speaks live from Elsinore {uuid.uuid4().hex[:8]}"
        live_id = hamlet_api.ok(
            "POST",
            "/messages",
            {"type": "stream", "to": "general", "topic": "terminal", "content": live_text},
        )["id"]
        screen = terminal.wait_for_text(live_text, EVENT_TIMEOUT)
        assert "read" not in message_by_id(iago_api, live_id)["flags"]
        # Its unread counts: the channel's and all messages', each 1.
        screen = terminal.wait_for_text(UNREAD_GENERAL, EVENT_TIMEOUT)
        assert re.search(r"# general +1 │", screen), screen
        assert re.search(r"All messages +\[a\] +1 │", screen), screen

        # `n` (next unread topic) opens its topic, general ▶ terminal, showing only that
        # topic's messages: reading it marks it read, and both unread counts go.
        before_n = demo_site.mark()
        terminal.send_keys("n")
        screen = terminal.wait_for_text(r"general: topic narrow", EVENT_TIMEOUT)
        assert re.search(r"general ▶\s+terminal", screen), screen
        assert live_text in screen and "Welcome to the eventq demo" not in screen, screen
        demo_site.assert_request_ok(
            "iago", "POST", "/api/v1/messages/flags", EVENT_TIMEOUT, since=before_n
        )
        assert "read" in message_by_id(iago_api, live_id)["flags"]
        terminal.wait_for_absence(UNREAD_GENERAL, EVENT_TIMEOUT)
        terminal.wait_for_absence(UNREAD_ALL_MESSAGES, EVENT_TIMEOUT)

        # `r` answers it: what is typed is sent (ctrl-d) to its channel and topic.
        reply_text = f"Iago answers from the terminal {uuid.uuid4().hex[:8]}"
        terminal.send_keys("r")
        terminal.wait_for_text(COMPOSE_BOX, EVENT_TIMEOUT)
        terminal.send_keys(reply_text, literal=True)
        before_send = demo_site.mark()
        terminal.send_keys("C-d")
        demo_site.assert_request_ok(
            "iago", "POST", "/api/v1/messages", EVENT_TIMEOUT, since=before_send
        )
        sent = [m for m in newest_messages(hamlet_api) if m["content"] == reply_text]
        assert len(sent) == 1, newest_messages(hamlet_api)
        assert (sent[0]["sender_id"], sent[0]["display_recipient"], sent[0]["subject"]) == (
            iago.user_id,
            "general",
            "terminal",
        )
        # ... and it shows in the terminal too (its own message event).
        terminal.wait_for_text(reply_text, EVENT_TIMEOUT)
        terminal.send_keys("Escape")
        terminal.wait_for_absence(COMPOSE_BOX, EVENT_TIMEOUT)
        reply_id = sent[0]["id"]

        # `*` stars the message in focus (still Hamlet's), `+` gives it a thumbs up.
        before_star = demo_site.mark()
        terminal.send_keys("*")
        demo_site.assert_request_ok(
            "iago", "POST", "/api/v1/messages/flags", EVENT_TIMEOUT, since=before_star
        )
        assert "starred" in message_by_id(iago_api, live_id)["flags"]
        before_react = demo_site.mark()
        terminal.send_keys("+")
        demo_site.assert_request_ok(
            "iago",
            "POST",
            f"/api/v1/messages/{live_id}/reactions",
            EVENT_TIMEOUT,
            since=before_react,
        )
        reactions = message_by_id(hamlet_api, live_id)["reactions"]
        assert [(r["emoji_name"], r["user_id"]) for r in reactions] == [("thumbs_up", iago.user_id)]

        # Down to its own reply, `e` edits it (its raw content is fetched first).
        before_edit = demo_site.mark()
        terminal.send_keys("Down")
        terminal.send_keys("e")
        demo_site.assert_request_ok(
            "iago", "GET", f"/api/v1/messages/{reply_id}", EVENT_TIMEOUT, since=before_edit
        )
        terminal.wait_for_text(r"Also change later messages", EVENT_TIMEOUT)
        terminal.send_keys(" (edited)", literal=True)
        terminal.send_keys("C-d")
        demo_site.assert_request_ok(
            "iago", "PATCH", f"/api/v1/messages/{reply_id}", EVENT_TIMEOUT, since=before_edit
        )
        assert message_by_id(hamlet_api, reply_id)["content"] == reply_text + " (edited)"
        terminal.wait_for_text(_words(reply_text + " edited", 6), EVENT_TIMEOUT)
        # An edit's box closes once sent (no Escape: one followed at once by the next
        # key would be read as an Alt-key).
        terminal.wait_for_absence(COMPOSE_BOX, EVENT_TIMEOUT)

        # Its narrows, each a GET /messages with the operators it sends: `f` is:starred,
        # `#` is:mentioned, `P` is:private, `s` on a direct message pm_with, `/` search.
        screen = _narrow(terminal, "f", "Starred messages", live_text)
        assert reply_text not in screen, screen
        mention_text = f"@**Iago** the players {uuid.uuid4().hex[:8]}"
        hamlet_api.ok(
            "POST",
            "/messages",
            {"type": "stream", "to": "general", "topic": "plays", "content": mention_text},
        )
        _narrow(terminal, "#", "Mentions", mention_text.replace("@**Iago**", "@Iago"))
        direct_text = f"Only for Iago {uuid.uuid4().hex[:8]}"
        hamlet_api.ok(
            "POST", "/messages", {"type": "private", "to": [iago.user_id], "content": direct_text}
        )
        _narrow(terminal, "P", "All private messages", direct_text)
        _narrow(terminal, "s", "Private conversation", direct_text)

        # Answering it: typing in a direct message tells the server (POST /typing).
        before_typing = demo_site.mark()
        answer_text = f"Iago writes back {uuid.uuid4().hex[:8]}"
        terminal.send_keys("r")
        terminal.wait_for_text(DIRECT_COMPOSE_BOX, EVENT_TIMEOUT)
        terminal.send_keys(answer_text, literal=True)
        demo_site.assert_request_ok(
            "iago", "POST", "/api/v1/typing", EVENT_TIMEOUT, since=before_typing
        )
        terminal.send_keys("C-d")
        demo_site.assert_request_ok(
            "iago", "POST", "/api/v1/messages", EVENT_TIMEOUT, since=before_typing
        )
        answered = [m for m in newest_messages(hamlet_api) if m["content"] == answer_text]
        assert [m["type"] for m in answered] == ["private"], newest_messages(hamlet_api)
        assert answered[0]["sender_id"] == iago.user_id
        assert {r["id"] for r in answered[0]["display_recipient"]} == {
            iago.user_id,
            demo_site.people["hamlet"].user_id,
        }
        terminal.send_keys("Escape")
        terminal.wait_for_absence(DIRECT_COMPOSE_BOX, EVENT_TIMEOUT)
        # A search applies within the current narrow: from all messages.
        _narrow(terminal, "a", "All messages", direct_text)
        terminal.send_keys("/")
        terminal.send_keys("Elsinore", literal=True)
        screen = _narrow(terminal, "Enter", "Search Results", live_text)
        assert reply_text not in screen, screen

        # Muting a channel from its list (`q` finds it, `m` asks, Enter confirms): the
        # property is saved, and the list marks it muted once the `subscription` update
        # event comes back (zulip-terminal reads the legacy `in_home_view` one).
        before_mute = demo_site.mark()
        terminal.send_keys("q")
        terminal.send_keys("general", literal=True)
        terminal.send_keys("Enter")
        terminal.send_keys("m")
        terminal.wait_for_text(r"Confirm muting of stream", EVENT_TIMEOUT)
        terminal.send_keys("Enter")
        demo_site.assert_request_ok(
            "iago",
            "POST",
            "/api/v1/users/me/subscriptions/properties",
            EVENT_TIMEOUT,
            since=before_mute,
        )
        terminal.wait_for_text(r"# general\s+M\s", EVENT_TIMEOUT)
        subscriptions = iago_api.ok("GET", "/users/me/subscriptions")["subscriptions"]
        assert [s["is_muted"] for s in subscriptions if s["name"] == "general"] == [True]

        # Its user list still marks presence the same way, its own ping's answer applied.
        _assert_presence_shown(terminal.screen())

        assert not terminal.dead(), terminal.screen(history=True)
        screen = terminal.screen(history=True)
        assert "has crashed" not in screen, screen
        assert not _unexpected_tracebacks(screen), screen
    except AssertionError as error:
        raise AssertionError(
            f"{error}\n{_terminal_context(demo_site, tmp_path, requests_log)}"
        ) from None
    finally:
        # Its first screen (once started) and its last, as evidence of the run.
        write_evidence(
            tmp_path,
            "zulip-terminal",
            request.node.name,
            first_screen or "(it never showed its first screen)",
            terminal.screen(history=terminal.dead()),
            "screen",
        )
        terminal.close()
    # Its crash log, and the log of exceptions its event handlers raised (it shows those
    # in a popup and carries on: an event of a shape it cannot handle lands there).
    for name in ("zulip-terminal-tracebacks.log", "zulip-terminal-thread-exceptions.log"):
        log = tmp_path / name
        assert not log.exists() or not log.read_text().strip(), f"{name}:\n{log.read_text()}"
    demo_site.assert_no_refused_requests("iago")
    demo_site.assert_no_server_errors()


def _terminal_context(site: DemoSite, directory: Path, requests_log: PipedLog) -> str:
    """What explains a failure: zulip-terminal's own logs and the server's last lines."""
    parts = []
    for name in ("zulip-terminal-tracebacks.log", "zulip-terminal-thread-exceptions.log"):
        path = directory / name
        if path.exists():
            parts.append(f"-- {name} --\n" + "\n".join(path.read_text().splitlines()[-30:]))
    parts.append(f"-- {API_REQUESTS_LOG} --\n" + "\n".join(requests_log.lines[-30:]))
    parts.append("-- server log --\n" + "\n".join(site.server.lines[-30:]))
    return "\n".join(parts)


def _user_list(screen: str) -> dict[str, str]:
    """zulip-terminal's user list (its right-hand panel): each name and its marker."""
    users = {}
    for line in screen.splitlines():
        columns = line.split("│")
        if len(columns) < 3:
            continue
        found = re.match(r"\s*(\S)\s+(.+?)\s*(\(you\))?\s*$", columns[-1])
        if found is not None:
            users[found.group(2)] = found.group(1)
    return users


def _assert_presence_shown(screen: str) -> None:
    """Hamlet (pinged just now) present, Othello (ten minutes ago) offline, Polonius
    (never) not listed."""
    users = _user_list(screen)
    assert users.get("King Hamlet") == ACTIVE_MARKER, (users, screen)
    assert users.get("Othello") == OFFLINE_MARKER, (users, screen)
    assert "Polonius" not in users, (users, screen)


def _narrow(terminal: TmuxTerminal, key: str, title: str, expected: str) -> str:
    """Press `key`, await the narrow's `title` above the messages and `expected` in them."""
    terminal.send_keys(key)
    terminal.wait_for_text(rf"{re.escape(title)}\s+(Search \[/\]|$)", EVENT_TIMEOUT)
    return terminal.wait_for_text(_words(expected, 8), EVENT_TIMEOUT)


# zulip-terminal 0.7.0's own start-up race, whatever the server: its presence thread can
# redraw the user list before the main loop's pipe exists, and prints this traceback
# (then runs normally). Any other traceback on its screen is a failure.
_KNOWN_CLIENT_RACE = 'assert hasattr(self, "_update_pipe")'


def _unexpected_tracebacks(screen: str) -> list[str]:
    """The tracebacks zulip-terminal printed, but for its known start-up race."""
    blocks = screen.split("Traceback (most recent call last):")[1:]
    return [block for block in blocks if _KNOWN_CLIENT_RACE not in block.split("\n\n")[0]]


def _message_header(message: dict[str, Any]) -> str:
    """A pattern for the bar zulip-terminal draws above `message` and its sender's name
    (plain text, whatever Markdown the message's content holds)."""
    if message["type"] == "stream":
        bar = rf"{re.escape(message['display_recipient'])}\s+▶\s+{re.escape(message['subject'])}"
    else:
        bar = r"You and " + re.escape(message["sender_full_name"])
    return rf"{bar}[\s\S]*{re.escape(message['sender_full_name'])}"


def _words(text: str, count: int) -> str:
    """A pattern for the first `count` words of `text` (Markdown, no markup characters) on
    a screen, where they may be wrapped or re-spaced."""
    words = [re.sub(r"[*_`#>\[\]()!]", "", word) for word in text.split()]
    return r"\W+".join(re.escape(word) for word in words[:count] if word)


# -- zulip_bots: helloworld --------------------------------------------------------------------


@pytest.fixture(scope="session")
def zulip_run_bot() -> Path:
    """`zulip-run-bot` of zulip_bots 0.9.1, in its own Python 3.11 virtualenv."""
    python = require_python("3.11", "zulip_bots 0.9.1")
    return python_client_venv("zulip-bots.txt", python) / "bin" / "zulip-run-bot"


@pytest.fixture
def hello_bot(
    demo_site: DemoSite, zulip_run_bot: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[Person, LineProcess]]:
    """helloworld running as "Hello Bot" (subscribed to general), once it has a queue."""
    bot = demo_site.create_bot("Hello Bot", "hello-bot@demo.example.com", ["general"])
    zuliprc = write_zuliprc(tmp_path, demo_site, "Hello Bot")
    runner = LineProcess(
        [str(zulip_run_bot), "helloworld", "--config-file", str(zuliprc)], env={}, cwd=tmp_path
    )
    try:
        demo_site.assert_request_ok("Hello Bot", "POST", "/api/v1/register", START_TIMEOUT)
        yield bot, runner
    finally:
        runner.stop()
        # Its first and last lines of output (both streams), as evidence of the run.
        first, last = first_and_last_lines(runner.lines)
        write_evidence(tmp_path, "helloworld-bot", request.node.name, first, last, "log lines")


def assert_bot_ran_cleanly(site: DemoSite, runner: LineProcess) -> None:
    """Still running, no traceback, no request refused, no server error."""
    assert runner.process.poll() is None, runner.output()
    assert "Traceback" not in runner.output(), runner.output()
    site.assert_no_refused_requests("Hello Bot")
    site.assert_no_server_errors()


def test_helloworld_answers_a_direct_message_and_reacts(
    demo_site: DemoSite, hello_bot: tuple[Person, LineProcess]
) -> None:
    bot, runner = hello_bot
    hamlet_api = demo_site.api("hamlet")
    sends = bot_sends(demo_site, bot)
    dm_id = hamlet_api.ok(
        "POST", "/messages", {"type": "private", "to": [bot.user_id], "content": "hello bot"}
    )["id"]
    reply = _await_reply(demo_site, runner, hamlet_api, bot, dm_id, sends)
    assert reply["type"] == "private"
    assert {r["id"] for r in reply["display_recipient"]} == {
        bot.user_id,
        demo_site.people["hamlet"].user_id,
    }
    # Then it reacts with :wave: to the message it answered.
    demo_site.assert_request_ok(
        "Hello Bot", "POST", f"/api/v1/messages/{dm_id}/reactions", EVENT_TIMEOUT
    )
    reactions = message_by_id(hamlet_api, dm_id)["reactions"]
    assert [(r["emoji_name"], r["user_id"]) for r in reactions] == [("wave", bot.user_id)]
    assert_bot_ran_cleanly(demo_site, runner)


def test_helloworld_answers_mentions_in_a_channel(
    demo_site: DemoSite, hello_bot: tuple[Person, LineProcess]
) -> None:
    bot, runner = hello_bot
    hamlet_api = demo_site.api("hamlet")
    # An @-mention at the start of a channel message is answered in that topic. The bot
    # handles it only when its event has the `mentioned` flag and the content is the
    # Markdown as sent (apply_markdown defaults to false), starting "@**Hello Bot**".
    mention_ids = []
    for content in ("@**Hello Bot** convert 1 km", f"@**Hello Bot|{bot.user_id}** hi"):
        sends = bot_sends(demo_site, bot)
        mention_id = hamlet_api.ok(
            "POST",
            "/messages",
            {"type": "stream", "to": "general", "topic": "bots", "content": content},
        )["id"]
        mention_ids.append(mention_id)
        reply = _await_reply(demo_site, runner, hamlet_api, bot, mention_id, sends)
        assert (reply["type"], reply["display_recipient"], reply["subject"]) == (
            "stream",
            "general",
            "bots",
        ), content

    # A channel message that does not mention it is left alone: a direct message sent
    # after it is the next one the bot answers.
    quiet_id = hamlet_api.ok(
        "POST",
        "/messages",
        {"type": "stream", "to": "general", "topic": "bots", "content": "no bot here"},
    )["id"]
    sends = bot_sends(demo_site, bot)
    probe_id = hamlet_api.ok(
        "POST", "/messages", {"type": "private", "to": [bot.user_id], "content": "still?"}
    )["id"]
    _await_reply(demo_site, runner, hamlet_api, bot, probe_id, sends)
    answered = [
        m
        for m in newest_messages(hamlet_api, 50)
        if m["sender_id"] == bot.user_id and m["type"] == "stream" and m["id"] > mention_ids[0]
    ]
    assert len(answered) == 2 and all(m["id"] < quiet_id for m in answered), answered
    assert_bot_ran_cleanly(demo_site, runner)


def bot_sends(site: DemoSite, bot: Person) -> int:
    """How many messages the server has logged the bot sending so far."""
    return sum(
        1
        for line in access_lines(site.server, bot.user_id)
        if (line.method, line.path, line.status) == ("POST", "/api/v1/messages", 200)
    )


def _await_reply(
    site: DemoSite, runner: LineProcess, api: ApiClient, bot: Person, after: int, sends: int
) -> dict[str, Any]:
    """The bot's "beep boop" to message `after`, sent when the bot had sent `sends`."""
    # The bot's send shows in the server's log; the message is committed by then.
    try:
        site.server.wait_until(
            lambda: bot_sends(site, bot) > sends, EVENT_TIMEOUT, f"the bot's answer to {after}"
        )
    except AssertionError as error:
        raise AssertionError(f"{error}\n{runner.output()}") from None
    found = [
        m for m in newest_messages(api, 10) if m["sender_id"] == bot.user_id and m["id"] > after
    ]
    assert found, f"no answer to message {after}\n{runner.output()}"
    assert found[0]["content"] == "beep boop"
    return found[0]


# -- zulip-js --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def zulip_js() -> tuple[str, Path]:
    """node and the `node_modules` holding zulip-js 2.1.0 (from package-lock.json)."""
    node, npm = require_node(20)
    return node, zulip_js_modules(npm)


@pytest.fixture
def js_iago(
    demo_site: DemoSite,
    zulip_js: tuple[str, Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> Iterator[JsDriver]:
    """zulip-js connected as iago."""
    node, modules = zulip_js
    iago = demo_site.people["iago"]
    driver = JsDriver(node, modules, demo_site.server.url, iago.email, iago.api_key)
    try:
        yield driver
    finally:
        driver.stop()
        # The driver's first and last output lines, as evidence of the run.
        first, last = first_and_last_lines(driver.lines)
        write_evidence(tmp_path, "zulip-js", request.node.name, first, last, "output lines")


def assert_js_ran_cleanly(site: DemoSite, driver: JsDriver) -> None:
    """zulip-js reported no trouble, no request was refused, the server logged no error."""
    assert driver.client_errors() == [], driver.client_errors()
    site.assert_no_refused_requests("iago")
    site.assert_no_server_errors()


def listen(site: DemoSite, driver: JsDriver) -> None:
    """callOnEachEvent(callback) with its defaults (`event_types` null), once registered."""
    assert driver.request("listen") == "listening"
    try:
        site.assert_request_ok("iago", "POST", "/api/v1/register", START_TIMEOUT)
    except AssertionError as error:
        raise AssertionError(f"{error}\nzulip-js said: {driver.client_errors()}") from None


def await_js_event(driver: JsDriver, what: str, match: Any) -> dict[str, Any]:
    event: dict[str, Any] = driver.wait_for(
        lambda: next((e for e in driver.events() if match(e)), None), EVENT_TIMEOUT, what
    )
    return event


def test_zulip_js_call_on_each_event_with_its_defaults(
    demo_site: DemoSite, js_iago: JsDriver
) -> None:
    listen(demo_site, js_iago)
    text = f"For zulip-js {uuid.uuid4().hex[:8]}"
    sent_id = demo_site.api("hamlet").ok(
        "POST", "/messages", {"type": "stream", "to": "general", "topic": "js", "content": text}
    )["id"]
    event = await_js_event(
        js_iago,
        "the message event",
        lambda e: e["type"] == "message" and e["message"]["id"] == sent_id,
    )
    # zulip-js asks for no apply_markdown: the content as it was sent, and it is unread.
    assert event["message"]["content"] == text
    assert event["flags"] == []
    # One register for the whole run: no error, no retry loop.
    registers = [
        line.line
        for line in access_lines(
            demo_site.server, demo_site.people["iago"].user_id, demo_site.since
        )
        if (line.method, line.path) == ("POST", "/api/v1/register")
    ]
    assert len(registers) == 1, registers
    assert_js_ran_cleanly(demo_site, js_iago)


def test_zulip_js_message_methods(demo_site: DemoSite, js_iago: JsDriver) -> None:
    """Every message method of zulip-js a program uses; all failures are listed at once."""
    hamlet_api = demo_site.api("hamlet")
    failures: list[str] = []

    def check(ok: bool, what: str, answer: Any) -> None:
        if not ok:
            failures.append(f"{what}: {answer}")

    text = f"zulip-js writes {uuid.uuid4().hex[:8]}"
    sent = js_iago.call(
        "messages.send", {"to": "general", "type": "stream", "topic": "js", "content": text}
    )
    assert sent["result"] == "success", sent
    sent_id = sent["id"]
    assert message_by_id(hamlet_api, sent_id)["content"] == text

    listed = js_iago.call(
        "messages.retrieve",
        {
            "anchor": "newest",
            "num_before": 10,
            "num_after": 0,
            "narrow": [
                {"operator": "stream", "operand": "general"},
                {"operator": "topic", "operand": "js"},
            ],
        },
    )
    check(
        listed.get("result") == "success"
        and [m["id"] for m in listed["messages"]][-1:] == [sent_id],
        "messages.retrieve (GET /messages, channel and topic narrow)",
        listed,
    )
    single = js_iago.call("messages.getById", {"message_id": sent_id})
    check(
        single.get("result") == "success" and single.get("raw_content") == text,
        "messages.getById (GET /messages/{id})",
        single,
    )
    starred = js_iago.call("messages.flags.add", {"flag": "starred", "messages": [sent_id]})
    check(
        starred.get("result") == "success"
        and "starred" in message_by_id(demo_site.api("iago"), sent_id)["flags"],
        "messages.flags.add starred (POST /messages/flags)",
        starred,
    )
    topics = js_iago.call("streams.topics.retrieve", {"stream_id": demo_site.stream_id("general")})
    check(
        topics.get("result") == "success" and "js" in [t["name"] for t in topics.get("topics", [])],
        "streams.topics.retrieve (GET /users/me/{stream_id}/topics)",
        topics,
    )
    edited_text = text + " (edited)"
    edited = js_iago.call("messages.update", {"message_id": sent_id, "content": edited_text})
    check(
        edited.get("result") == "success"
        and message_by_id(hamlet_api, sent_id)["content"] == edited_text,
        "messages.update (PATCH /messages/{id}, parameters in the query string)",
        edited,
    )
    history = js_iago.call("messages.getHistoryById", {"message_id": sent_id})
    check(
        history.get("result") == "success"
        and [h.get("content") for h in history.get("message_history", [])] == [text, edited_text],
        "messages.getHistoryById (GET /messages/{id}/history)",
        history,
    )
    deleted = js_iago.call("messages.deleteById", {"message_id": sent_id})
    check(
        deleted.get("result") == "success"
        and sent_id not in [m["id"] for m in newest_messages(hamlet_api)],
        "messages.deleteById (DELETE /messages/{id})",
        deleted,
    )
    assert not failures, "zulip-js calls that failed:\n" + "\n".join(failures)
    assert_js_ran_cleanly(demo_site, js_iago)


def test_zulip_js_other_methods(demo_site: DemoSite, js_iago: JsDriver) -> None:
    """The rest of what zulip-js offers a program and a Zulip server answers at feature
    level 377 (not GET /realm/filters, the legacy linkifiers read, nor /users/me/pointer,
    gone since Zulip 3.0); all failures are listed at once."""
    failures: list[str] = []

    def check(method: str, params: dict[str, Any], ok: Any) -> dict[str, Any]:
        answer = js_iago.call(method, params)
        if answer.get("result") != "success" or not ok(answer):
            failures.append(f"{method} {params}: {answer}")
        return answer

    check("server.settings", {}, lambda a: a.get("zulip_feature_level") == 377)
    check(
        "messages.render",
        {"content": "**bold** @**King Hamlet**"},
        lambda a: (
            a.get("rendered", "").startswith("<p><strong>bold</strong> ")
            and 'class="user-mention"' in a.get("rendered", "")
        ),
    )
    check("emojis.retrieve", {}, lambda a: a.get("emoji") == {})
    check("users.me.alertWords.retrieve", {}, lambda a: a.get("alert_words") == [])
    check("users.me.getProfile", {}, lambda a: a.get("email") == demo_site.people["iago"].email)
    check(
        "users.retrieve",
        {},
        lambda a: (
            {p.email for p in demo_site.people.values() if "@demo" in p.email}
            <= {m["email"] for m in a.get("members", [])}
        ),
    )
    check("streams.retrieve", {}, lambda a: "general" in [s["name"] for s in a.get("streams", [])])
    check(
        "streams.getStreamId",
        {"stream": "general"},
        lambda a: a.get("stream_id") == demo_site.stream_id("general"),
    )
    check(
        "streams.subscriptions.retrieve",
        {},
        lambda a: "general" in [s["name"] for s in a.get("subscriptions", [])],
    )
    # `to` as zulip-js sends it: a JSON list (its form encoding JSON-encodes arrays).
    check("typing.send", {"to": [demo_site.people["hamlet"].user_id], "op": "start"}, bool)
    assert not failures, "zulip-js calls that failed:\n" + "\n".join(failures)
    assert_js_ran_cleanly(demo_site, js_iago)


def test_zulip_js_reactions(demo_site: DemoSite, js_iago: JsDriver) -> None:
    iago = demo_site.people["iago"]
    hamlet_api = demo_site.api("hamlet")
    listen(demo_site, js_iago)
    sent_id = hamlet_api.ok(
        "POST", "/messages", {"type": "stream", "to": "general", "topic": "js", "content": "react"}
    )["id"]
    added = js_iago.call("reactions.add", {"message_id": sent_id, "emoji_name": "octopus"})
    assert added["result"] == "success", added
    event = await_js_event(
        js_iago,
        "the reaction add event",
        lambda e: e["type"] == "reaction" and e["op"] == "add" and e["message_id"] == sent_id,
    )
    assert (event["emoji_name"], event["user_id"]) == ("octopus", iago.user_id)
    reactions = message_by_id(hamlet_api, sent_id)["reactions"]
    assert [(r["emoji_name"], r["user_id"]) for r in reactions] == [("octopus", iago.user_id)]
    # DELETE with its parameters in the query string, as zulip-js sends them.
    removed = js_iago.call("reactions.remove", {"message_id": sent_id, "emoji_name": "octopus"})
    assert removed["result"] == "success", removed
    await_js_event(
        js_iago,
        "the reaction remove event",
        lambda e: e["type"] == "reaction" and e["op"] == "remove" and e["message_id"] == sent_id,
    )
    assert message_by_id(hamlet_api, sent_id)["reactions"] == []
    assert_js_ran_cleanly(demo_site, js_iago)
