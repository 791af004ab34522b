"""Helpers of the chaos test (tests/test_chaos.py).

`python -m tests.helpers.chaos DATABASE_URL REALM_ID SEED USER_ID... --streams ID...` is
the writer process: `WRITER_THREADS` threads commit continuous, seeded streams of actions
(create channels and users, subscribe and unsubscribe, deactivate and reactivate the
users it created, send channel and direct messages) until its stdin is closed, printing
one line per action and finally one JSON line with the counts. It is a separate process
so that writes go on while the server is dead. Several actions are in flight at once:
messages share the realm lock and run side by side, with each other and with the
changes that wait for them, so the concurrent write path (docs/architecture.md §4) is
what the clients' exact, ordered delivery is checked against.

`WriterProcess` runs it and counts its actions as they happen, `ServerLink` tells client
threads where the server is and whether it is up, and `ChaosClient` is one long-polling
client thread that records every event it receives.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from actions.errors import ActionError
from actions.messages import ChannelTarget, DirectTarget, check_send_message
from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions, bulk_remove_subscriptions
from actions.users import do_create_user, do_deactivate_user, do_reactivate_user
from models.database import Database
from models.tables import Role
from tests.helpers.api import ApiClient
from tests.helpers.realms import SampleRealm

# Between two actions each writer thread pauses this long: about 20 transactions a second
# in all keeps the outbox growing while the server is down without burying the clients.
WRITER_PACE_SECS = 0.15
WRITER_THREADS = 3
NEW_USER_ROLES = (Role.ADMINISTRATOR, Role.MODERATOR, Role.MEMBER, Role.MEMBER, Role.GUEST)


@dataclass
class WriterState:
    """What the writer knows of the realm it changes: enough to pick valid actions."""

    realm_id: int
    active_users: list[int]
    streams: list[int]
    own_users: list[int] = field(default_factory=list)
    deactivated: list[int] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    # Held while a thread changes the lists above, and for the whole of an action that
    # changes who is subscribed or active: those run one at a time in the database
    # anyway (they take the realm lock exclusively), and holding this keeps a thread from
    # picking a user another thread is deactivating. Messages hold it only to pick.
    lock: threading.Lock = field(default_factory=threading.Lock)


class ChaosWriter:
    """Picks and commits one random action at a time."""

    def __init__(
        self, db: Database, state: WriterState, rng: random.Random, name: str = ""
    ) -> None:
        self.db = db
        self.state = state
        self.rng = rng
        self.name = name
        self.serial = 0

    def step(self) -> None:
        """Commit one action (or count its refusal: a refused action writes nothing)."""
        actions: list[tuple[int, Callable[[], None]]] = [
            (3, self.create_stream),
            (7, self.subscribe),
            (5, self.unsubscribe),
            (3, self.create_user),
            (2, self.toggle_user),
            (10, self.send_message),
        ]
        weights = [weight for weight, _ in actions]
        (_, action) = self.rng.choices(actions, weights)[0]
        name = action.__name__
        try:
            if action == self.send_message:  # bound methods are equal, never identical
                action()
            else:
                with self.state.lock:
                    action()
        except ActionError:
            name = "refused"
        with self.state.lock:
            self.state.counts[name] = self.state.counts.get(name, 0) + 1
            print(name, flush=True)  # one line per committed (or refused) action

    def _some(self, pool: Sequence[int], most: int) -> list[int]:
        return self.rng.sample(list(pool), self.rng.randint(1, min(most, len(pool))))

    def send_message(self) -> None:
        """A channel message or a direct message from an active user; one the rules
        refuse (a channel the sender may not post to) counts as refused."""
        with self.state.lock:
            sender = self.rng.choice(self.state.active_users)
            channel = self.rng.choice(self.state.streams)
            other = self.rng.choice(self.state.active_users)
        self.serial += 1
        target: ChannelTarget | DirectTarget = (
            ChannelTarget(channel) if self.rng.random() < 0.7 else DirectTarget(user_ids=(other,))
        )
        with self.db.write() as session:
            check_send_message(
                session, self.state.realm_id, sender, target, "chaos", f"m{self.serial}", "chaos"
            )

    def create_stream(self) -> None:
        self.serial += 1
        kind = self.rng.choice(("public", "private", "web_public"))
        with self.db.write() as session:
            stream = do_create_stream(
                session,
                self.state.realm_id,
                f"chaos-{self.name}{self.serial}",
                invite_only=kind == "private",
                is_web_public=kind == "web_public",
            )
            self.state.streams.append(stream.id)

    def subscribe(self) -> None:
        users = self._some(self.state.active_users, 4)
        streams = self._some(self.state.streams, 3)
        with self.db.write() as session:
            bulk_add_subscriptions(session, self.state.realm_id, users, streams)

    def unsubscribe(self) -> None:
        users = self._some(self.state.active_users, 4)
        streams = self._some(self.state.streams, 3)
        with self.db.write() as session:
            bulk_remove_subscriptions(session, self.state.realm_id, users, streams)

    def create_user(self) -> None:
        self.serial += 1
        role = self.rng.choice(NEW_USER_ROLES)
        with self.db.write() as session:
            user = do_create_user(
                session,
                self.state.realm_id,
                f"chaos{self.name}-{self.serial}@zulip.example.com",
                f"Chaos {self.name}{self.serial}",
                role,
            )
            user_id = user.id
        self.state.own_users.append(user_id)
        self.state.active_users.append(user_id)

    def toggle_user(self) -> None:
        """Deactivate one of the writer's own users, or reactivate one (never a client)."""
        if not self.state.own_users:
            self.create_user()
            return
        user_id = self.rng.choice(self.state.own_users)
        with self.db.write() as session:
            if user_id in self.state.deactivated:
                do_reactivate_user(session, self.state.realm_id, user_id)
            else:
                do_deactivate_user(session, self.state.realm_id, user_id)
        if user_id in self.state.deactivated:
            self.state.deactivated.remove(user_id)
            self.state.active_users.append(user_id)
        else:
            self.state.deactivated.append(user_id)
            self.state.active_users.remove(user_id)


def writer_main(argv: Sequence[str]) -> int:
    """The writer process: act until stdin reaches end of file, then report."""
    parser = argparse.ArgumentParser(prog="python -m tests.helpers.chaos")
    parser.add_argument("database_url")
    parser.add_argument("realm_id", type=int)
    parser.add_argument("seed", type=int)
    parser.add_argument("user_ids", type=int, nargs="+")
    parser.add_argument("--streams", type=int, nargs="+", required=True)
    args = parser.parse_args(argv)

    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    db = Database(args.database_url)
    state = WriterState(args.realm_id, list(args.user_ids), list(args.streams))
    failures: list[BaseException] = []

    def act(writer: ChaosWriter) -> None:
        try:
            while not stop.is_set():
                writer.step()
                stop.wait(WRITER_PACE_SECS)  # deliberate pacing between actions
        except BaseException as error:  # reported below, and the process fails
            failures.append(error)
            stop.set()

    threads = [
        threading.Thread(
            target=act,
            args=(ChaosWriter(db, state, random.Random(args.seed + number), f"w{number}"),),
            name=f"chaos-writer-{number}",
        )
        for number in range(WRITER_THREADS)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        db.dispose()
    if failures:
        raise failures[0]
    print(json.dumps({"counts": state.counts}), flush=True)
    return 0


def start_writer(database_url: str, realm: SampleRealm, seed: int, log: Path) -> WriterProcess:
    """The writer process over the sample realm's users and channels, from the repository
    root, logging to `log`."""
    return WriterProcess(
        [
            database_url,
            str(realm.realm_id),
            str(seed),
            *map(str, realm.users.values()),
            "--streams",
            *map(str, realm.streams.values()),
        ],
        Path(__file__).resolve().parents[2],
        log,
    )


class WriterProcess:
    """The writer process, seen from the test: how many actions it has done so far."""

    def __init__(self, args: Sequence[str], cwd: Path, log: Path) -> None:
        self.log = log
        self._changed = threading.Condition()
        self.actions = 0
        self.last_line = ""
        self._eof = False
        with log.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.helpers.chaos", *args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                cwd=cwd,
            )
        self._reader = threading.Thread(target=self._read, name="chaos-writer-out", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.actions += 1
                self.last_line = line.strip()
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for_actions(self, count: int, timeout: float) -> None:
        """Wait until the writer has done `count` actions in all (it acts ~20 times a second)."""
        with self._changed:
            done = self._changed.wait_for(lambda: self.actions >= count or self._eof, timeout)
            assert done and not self._eof, f"the writer stopped:\n{self.log.read_text()}"

    def stop(self, timeout: float) -> dict[str, int]:
        """Close stdin (the writer's stop signal); the counts of actions it reports."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        status = self.process.wait(timeout)
        self._reader.join(timeout)
        assert self.process.stdout is not None
        self.process.stdout.close()
        assert status == 0, f"writer exited with {status}:\n{self.log.read_text()}"
        counts: dict[str, int] = json.loads(self.last_line)["counts"]
        return counts

    def kill(self) -> None:
        """Stop a writer the test no longer waits for (after a failure)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()


class ServerLink:
    """Where the server listens and whether it is up; clients wait here while it is down."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._url = ""
        self._up = False
        self._closed = False

    def up(self, url: str) -> None:
        with self._changed:
            self._url, self._up = url, True
            self._changed.notify_all()

    def down(self) -> None:
        with self._changed:
            self._up = False

    def close(self) -> None:
        """Release every waiting client (the test is over, one way or another)."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def wait_up(self, timeout: float) -> str | None:
        """The server's URL once it is up; None if the link closed or `timeout` passed."""
        with self._changed:
            self._changed.wait_for(lambda: self._up or self._closed, timeout)
            return self._url if self._up and not self._closed else None


class Progress:
    """Events received by all clients together, for the main thread to wait on."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.events = 0
        self.failures = 0

    def add(self, events: int = 0, failures: int = 0) -> None:
        with self.changed:
            self.events += events
            self.failures += failures
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(predicate, timeout)


# How long a client waits for the server to come back before it gives up.
SERVER_DOWN_TIMEOUT_SECS = 60.0


class ChaosClient(threading.Thread):
    """Long-polls one queue through server crashes and records what it receives.

    Like a Zulip client: it resends its `queue_id` and `last_event_id` after every
    connection error and never re-registers. It stops at the event `is_last` accepts,
    or at the first answer that is not a success (recorded in `errors`).
    """

    def __init__(
        self,
        name: str,
        api: ApiClient,
        queue_id: str,
        link: ServerLink,
        progress: Progress,
        is_last: Callable[[dict[str, Any]], bool],
    ) -> None:
        super().__init__(name=f"chaos-client-{name}", daemon=True)
        self.viewpoint = name
        self.api = api
        self.queue_id = queue_id
        self.last_event_id = -1
        self.link = link
        self.progress = progress
        self.is_last = is_last
        self.received: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self.polls = 0
        self.connection_errors = 0
        self.heartbeats = 0
        self.done = False

    def run(self) -> None:
        try:
            self._poll_until_done()
        except Exception as error:  # reported by the test, never lost in a thread
            self.errors.append(f"{type(error).__name__}: {error}")
            self.progress.add(failures=1)

    def _poll_until_done(self) -> None:
        while not self.done:
            url = self.link.wait_up(SERVER_DOWN_TIMEOUT_SECS)
            if url is None:
                if not self.link.closed:
                    self.errors.append("the server did not come back")
                    self.progress.add(failures=1)
                return
            self.api.base_url = url
            self.polls += 1
            try:
                answer = self.api.poll(self.queue_id, self.last_event_id)
            except requests.RequestException:
                # The server died under the poll or is not listening yet: ask again with
                # the same queue_id and last_event_id once it is up.
                self.connection_errors += 1
                continue
            if not answer.ok:
                code = answer.body.get("code", "")
                self.errors.append(
                    f"poll(last_event_id={self.last_event_id}) -> {answer.status} {code} "
                    f"{answer.body.get('msg', '')!r}"
                )
                self.progress.add(failures=1)
                return
            events = [e for e in answer.body["events"] if e.get("type") != "heartbeat"]
            self.heartbeats += len(answer.body["events"]) - len(events)
            for event in events:
                self.received.append(event)
                self.last_event_id = int(event["id"])
                if self.is_last(event):
                    self.done = True
            self.progress.add(events=len(events))


if __name__ == "__main__":
    sys.exit(writer_main(sys.argv[1:]))
