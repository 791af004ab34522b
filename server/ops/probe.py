"""`eventq probe`: an end-to-end check of event delivery, in the Nagios plugin format.

One run:

1. finds the realm's probe bot, `eventq-probe-bot@<subdomain>.invalid` (`is_bot`),
   creating it on first use (every user of the realm sees it join, once);
2. registers a queue for the bot on the running server, for probe events alone;
3. starts a long-poll of that queue;
4. commits a probe event addressed to the bot alone, through the realm lock and the
   outbox like every action (`commit_probe_event`): no other user receives anything,
   and nothing of the realm changes (the outbox row is pruned like any other);
5. times from the commit until the poll's answer carries the event, prints one line and
   exits like a Nagios plugin, then deletes the queue.

Why not a real action on a channel: every channel event also reaches the realm's
owners and administrators (they see private channels, `models.visibility`), so their
clients would show the probe flickering in and out of a channel every few minutes.

Exit status and output follow the Nagios plugin guidelines: 0 OK, 1 WARNING (slower
than `--warn`), 2 CRITICAL (slower than `--crit`, no event within `--crit`, the server
or the database unreachable, the server refusing the bot), 3 UNKNOWN (bad arguments,
unknown realm). One line, `EVENTQ OK - 12.3 ms | delivery=12.3ms;1000;5000;0`, with
the performance data whenever a delivery time was measured.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from actions.errors import ActionError
from actions.users import do_create_user
from models.database import Database
from models.outbox import PendingEvent, append_events, lock_realm
from models.queries import get_realm, get_user_by_email
from models.register_keys import PROBE_EVENT_TYPE
from models.tables import Role

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATUS_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
# The page's promise is a second; five means something is badly wrong.
DEFAULT_WARN_MS = 1000.0
DEFAULT_CRIT_MS = 5000.0
PROBE_BOT_LOCAL_PART = "eventq-probe-bot"
PROBE_BOT_NAME = "eventq probe"
# .invalid is reserved (RFC 2606): the bot's address can never reach a mailbox.
PROBE_BOT_DOMAIN_SUFFIX = ".invalid"
# The shortest lifespan the server grants: a queue the probe could not delete (the
# server stopped answering) is gone a minute later.
PROBE_QUEUE_LIFESPAN_SECS = 60
USER_AGENT = "eventq-probe/1.0"
# The queue's deletion is a courtesy; the probe's verdict does not wait long for it.
CLEANUP_TIMEOUT_SECS = 2.0


class ProbeFailed(Exception):
    """The check could not complete: `status` says how bad that is."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ProbeResult:
    """The verdict of one probe."""

    status: int
    message: str
    delivery_ms: float | None
    warn_ms: float
    crit_ms: float

    def line(self) -> str:
        """The plugin's one line of output."""
        text = f"EVENTQ {STATUS_NAMES[self.status]} - {self.message}"
        if self.delivery_ms is not None:
            text += f" | delivery={self.delivery_ms:.1f}ms;{self.warn_ms:g};{self.crit_ms:g};0"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "status": STATUS_NAMES[self.status],
            "exit_status": self.status,
            "message": self.message,
            "delivery_ms": self.delivery_ms,
            "warn_ms": self.warn_ms,
            "crit_ms": self.crit_ms,
        }


def database_error(error: SQLAlchemyError) -> str:
    """The driver's first line, without SQLAlchemy's statement and background link."""
    return (str(getattr(error, "orig", None) or error).strip().splitlines() or ["error"])[0]


def bot_email(subdomain: str) -> str:
    return f"{PROBE_BOT_LOCAL_PART}@{subdomain}{PROBE_BOT_DOMAIN_SUFFIX}"


@dataclass(frozen=True)
class ProbeBot:
    realm_id: int
    user_id: int
    email: str
    api_key: str


def ensure_probe_bot(db: Database, subdomain: str) -> ProbeBot:
    """The realm's probe bot, created on first use; UNKNOWN for an unknown realm."""
    with db.snapshot() as session:
        realm = get_realm(session, subdomain)
        if realm is None:
            raise ProbeFailed(UNKNOWN, f"no realm with subdomain {subdomain!r}")
        realm_id = realm.id
        email = bot_email(realm.string_id)
        bot = get_user_by_email(session, realm_id, email)
        if bot is not None:
            return ProbeBot(realm_id, bot.id, bot.email, bot.api_key)
    with db.write() as session:
        created = do_create_user(session, realm_id, email, PROBE_BOT_NAME, Role.MEMBER, True)
        return ProbeBot(realm_id, created.id, created.email, created.api_key)


def commit_probe_event(db: Database, bot: ProbeBot, probe_id: str) -> None:
    """Commit one probe event addressed to the bot alone."""
    with db.write() as session:
        lock_realm(session, bot.realm_id)
        event = {"type": PROBE_EVENT_TYPE, "probe_id": probe_id}
        append_events(session, bot.realm_id, [PendingEvent(event, [bot.user_id])])


class ProbeClient:
    """The bot's few API calls, with plain urllib (the probe runs from cron or Nagios)."""

    def __init__(self, server: str, bot: ProbeBot) -> None:
        self.base = server.rstrip("/") + "/api/v1"
        token = base64.b64encode(f"{bot.email}:{bot.api_key}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "User-Agent": USER_AGENT}

    def call(self, method: str, path: str, params: dict[str, Any], timeout: float) -> Any:
        """One request; its JSON answer, or `ProbeFailed` (CRITICAL) saying why not."""
        encoded = urllib.parse.urlencode(
            {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}
        )
        url, data = self.base + path, None
        if method == "GET":
            url += "?" + encoded
        else:
            data = encoded.encode()
        request = urllib.request.Request(url, data=data, method=method, headers=self.headers)
        try:
            with urllib.request.urlopen(request, timeout=max(timeout, 0.001)) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                message = json.loads(error.read()).get("msg", "")
            except ValueError:
                message = ""
            raise ProbeFailed(
                CRITICAL, f"{method} {path}: HTTP {error.code} {message}".rstrip()
            ) from None
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            raise ProbeFailed(
                CRITICAL, f"cannot reach the server at {self.base}: {reason}"
            ) from None


class _Poll:
    """One long-poll on a daemon thread, so that the probe's deadline never waits for it
    (an abandoned poll dies with the process)."""

    def __init__(self, client: ProbeClient, queue_id: str, last_event_id: int, timeout: float):
        self.done = threading.Event()
        self.answer: Any = None
        self.error: ProbeFailed | None = None
        params = {"queue_id": queue_id, "last_event_id": last_event_id}

        def run() -> None:
            try:
                self.answer = client.call("GET", "/events", params, timeout)
            except ProbeFailed as error:
                self.error = error
            finally:
                self.done.set()

        threading.Thread(target=run, name="eventq-probe-poll", daemon=True).start()


def run_probe(
    db: Database,
    subdomain: str,
    server: str,
    warn_ms: float = DEFAULT_WARN_MS,
    crit_ms: float = DEFAULT_CRIT_MS,
) -> ProbeResult:
    """One probe, end to end; every failure is a verdict, never an exception."""

    def verdict(status: int, message: str, delivery_ms: float | None = None) -> ProbeResult:
        return ProbeResult(status, message, delivery_ms, warn_ms, crit_ms)

    if not 0 < warn_ms <= crit_ms:
        return verdict(UNKNOWN, f"need 0 < --warn <= --crit, not {warn_ms:g} and {crit_ms:g}")
    crit_secs = crit_ms / 1000.0
    try:
        bot = ensure_probe_bot(db, subdomain)
        client = ProbeClient(server, bot)
        # Each step before the commit gets the critical time too: a server that cannot
        # register a queue within it is in as much trouble as one that delivers late.
        queue = client.call(
            "POST",
            "/register",
            {"event_types": [PROBE_EVENT_TYPE], "queue_lifespan_secs": PROBE_QUEUE_LIFESPAN_SECS},
            crit_secs,
        )
        queue_id, last_event_id = str(queue["queue_id"]), int(queue["last_event_id"])
        probe_id = secrets.token_hex(8)
        # Parked before the commit when the server is quick, as a client's poll would be.
        poll = _Poll(client, queue_id, last_event_id, crit_secs)
        commit_probe_event(db, bot, probe_id)
        committed = time.monotonic()
        deadline = committed + crit_secs
        while True:
            if not poll.done.wait(max(0.0, deadline - time.monotonic())):
                return verdict(CRITICAL, f"no probe event within {crit_ms:g} ms")
            if poll.error is not None:
                raise poll.error
            events = poll.answer.get("events", [])
            if any(event.get("probe_id") == probe_id for event in events):
                delivery_ms = (time.monotonic() - committed) * 1000.0
                break
            # A heartbeat, or an older probe event: acknowledge it and poll again.
            last_event_id = max([last_event_id, *(int(e["id"]) for e in events)])
            poll = _Poll(client, queue_id, last_event_id, deadline - time.monotonic())
    except ProbeFailed as failure:
        return verdict(failure.status, str(failure))
    except ActionError as error:  # the bot could not be created
        return verdict(UNKNOWN, f"cannot create the probe bot: {error}")
    except SQLAlchemyError as error:
        return verdict(CRITICAL, f"database: {database_error(error)}")
    try:
        client.call("DELETE", "/events", {"queue_id": queue_id}, CLEANUP_TIMEOUT_SECS)
    except ProbeFailed:
        pass  # the queue expires within PROBE_QUEUE_LIFESPAN_SECS anyway
    if delivery_ms > crit_ms:
        return verdict(CRITICAL, f"{delivery_ms:.1f} ms (critical above {crit_ms:g})", delivery_ms)
    if delivery_ms > warn_ms:
        return verdict(WARNING, f"{delivery_ms:.1f} ms (warning above {warn_ms:g})", delivery_ms)
    return verdict(OK, f"{delivery_ms:.1f} ms", delivery_ms)
