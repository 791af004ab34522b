"""Helpers of the chaos test across shards (tests/test_cluster_chaos.py).

`ShardProcess` is one `eventq serve` shard on a fixed loopback port, so that it can be
killed and restarted where nginx expects it; it keeps the log of every life it had (the
moves of queues are read from it). `ClusterClient` is a long-polling client thread
(tests/helpers/chaos.py's `ChaosClient`) that polls through nginx and rides out a
shard's death: it re-polls with the same `queue_id` and `last_event_id` after a
connection error, a 502, 503 or 504, after a short back-off, and never registers again.
`check_claims` compares the queues' ownership history in the database (claims, epochs,
owners) with the moves the shards logged.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import select

from models.database import Database
from models.tables import QueueClaim, QueueDescriptorRow
from server.ops.cluster.nginx import ShardAddress
from tests.helpers.api import ApiClient
from tests.helpers.chaos import ChaosClient, Progress, ServerLink
from tests.helpers.openapi import validate_response
from tests.helpers.server import LiveServer

# The line the claiming shard logs when a poll moves a queue to it (sharding contract).
MOVED = re.compile(r"queue (\S+) moved from (\S+) to (\S+) \(epoch (\d+)\)")
# (queue, from, to, epoch) of one logged move.
Move = tuple[str, str, str, int]


class ShardProcess:
    """One shard: `eventq serve` named `name` on a fixed port, restartable in place."""

    def __init__(
        self, name: str, database_url: str, port: int, env: dict[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.address = ShardAddress(name, "127.0.0.1", port)
        self.server = LiveServer(
            database_url, {**env, "PYTHONFAULTHANDLER": "1"}, port, extra_args=("--shard", name)
        )
        self.log_path = log_path
        self.history: list[str] = []  # log lines of the lives that have ended
        self.lives = 0
        self.kills = 0

    def start(self) -> None:
        """Start a new life and wait until it listens (on the same port as before)."""
        self.lives += 1
        marker = f"----- {self.name}: life {self.lives} -----"
        try:
            self.server.start()
        except AssertionError as error:
            raise AssertionError(f"{self.name} did not start: {self._stacks()}") from error
        self.server.lines.insert(0, marker)
        assert self.server.port == self.port, (self.server.port, self.port)

    def _stacks(self) -> str:
        """Where a shard that does not start is stuck: SIGABRT makes Python's
        faulthandler (PYTHONFAULTHANDLER) print every thread's stack to its log."""
        process = self.server.process
        if process is None or process.poll() is not None:
            return f"it exited with {None if process is None else process.returncode}"
        self.server.stop(signal.SIGABRT)
        self._end_life()
        return "its stacks:\n" + "\n".join(self.history[-80:])

    def _end_life(self) -> None:
        self.history.extend(self.server.lines)
        self.server.lines = []
        self.log_path.write_text("\n".join(self.history) + "\n")

    def kill(self) -> None:
        """SIGKILL, and wait until the process is gone (its log read to the end)."""
        self.server.kill()
        self.kills += 1
        self._end_life()

    def stop(self) -> int:
        """SIGTERM, and wait for a graceful exit; its exit status."""
        status = self.server.stop()
        self._end_life()
        return status

    def cleanup(self) -> None:
        """Kill a life still running (after a failure) and keep its log."""
        process = self.server.process
        if process is not None and process.stdout is not None and not process.stdout.closed:
            self.server.kill()
            self._end_life()

    def all_lines(self) -> list[str]:
        return self.history + self.server.lines

    def moves(self) -> list[Move]:
        """(queue, from, to, epoch) of every move this shard claimed, in all its lives."""
        found = []
        for line in self.all_lines():
            match = MOVED.search(line)
            if match is not None:
                queue, old, new, epoch = match.groups()
                found.append((queue, old, new, int(epoch)))
        return found

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.all_lines()[-lines:])


# Answers that mean "no shard could take this poll right now": nginx found no live
# upstream (502), a shard is stopping or full (503), nginx gave up waiting (504).
RETRY_STATUSES = frozenset({502, 503, 504})
# Back-off before a re-poll: a random moment up to this long, as Zulip's clients do.
RETRY_BACKOFF_SECS = (0.02, 0.25)
# A client gives up once no poll has succeeded for this long (a shard restart takes ~1 s).
OUTAGE_LIMIT_SECS = 60.0
# Longer than any heartbeat the shards are told to send.
CLIENT_POLL_TIMEOUT_SECS = 30.0


@dataclass
class RetryCounts:
    """Why a client re-polled: connection errors, and answers by HTTP status."""

    connection: int = 0
    by_status: dict[int, int] = field(default_factory=dict)

    def add_status(self, status: int) -> None:
        self.by_status[status] = self.by_status.get(status, 0) + 1


class ClusterClient(ChaosClient):
    """A `ChaosClient` that polls through nginx and re-polls through a shard's death.

    The same `queue_id` and `last_event_id` every time; a BAD_EVENT_QUEUE_ID (or any
    other answer than a success or a retryable status) is recorded in `errors` and ends
    the client: nothing may be lost across shards.
    """

    def __init__(
        self,
        label: str,
        api: ApiClient,
        queue_id: str,
        link: ServerLink,
        progress: Progress,
        is_last: Callable[[dict[str, Any]], bool],
        stopping: threading.Event,
        jitter: Callable[[float, float], float],
    ) -> None:
        super().__init__(label, api, queue_id, link, progress, is_last)
        self.stopping = stopping
        self.jitter = jitter
        self.retries = RetryCounts()

    def _poll_until_done(self) -> None:
        url = self.link.wait_up(0)
        assert url is not None, "the link must be up (nginx's URL) before clients start"
        events_url = f"{url.rstrip('/')}/api/v1/events"
        last_success = time.monotonic()
        while not self.done and not self.stopping.is_set():
            if time.monotonic() - last_success > OUTAGE_LIMIT_SECS:
                self.errors.append(f"no poll succeeded for {OUTAGE_LIMIT_SECS}s")
                self.progress.add(failures=1)
                return
            self.polls += 1
            params = {"queue_id": self.queue_id, "last_event_id": str(self.last_event_id)}
            try:
                response = self.api.session.get(
                    events_url, params=params, timeout=CLIENT_POLL_TIMEOUT_SECS
                )
            except requests.RequestException:
                self.connection_errors += 1
                self.retries.connection += 1
                self._back_off()
                continue
            if response.status_code in RETRY_STATUSES:
                self.retries.add_status(response.status_code)
                response.close()
                self._back_off()
                continue
            try:
                body = response.json()
            except ValueError:
                self.errors.append(f"poll -> {response.status_code}, not JSON: {response.text!r}")
                self.progress.add(failures=1)
                return
            validate_response("GET", "/api/v1/events", response.status_code, body)
            if response.status_code != 200 or body.get("result") != "success":
                self.errors.append(
                    f"poll(queue {self.queue_id}, last_event_id={self.last_event_id}) -> "
                    f"{response.status_code} {body.get('code', '')} {body.get('msg', '')!r}"
                )
                self.progress.add(failures=1)
                return
            last_success = time.monotonic()
            events = [e for e in body["events"] if e.get("type") != "heartbeat"]
            self.heartbeats += len(body["events"]) - len(events)
            for event in events:
                self.received.append(event)
                self.last_event_id = int(event["id"])
                if self.is_last(event):
                    self.done = True
            self.progress.add(events=len(events))

    def _back_off(self) -> None:
        # A deliberate pause before re-polling (a client's back-off), cut short at the end.
        self.stopping.wait(self.jitter(*RETRY_BACKOFF_SECS))


def check_claims(db: Database, queue_ids: Sequence[str], moves: Sequence[Move]) -> list[str]:
    """What is wrong with the ownership history of `queue_ids` (empty: nothing).

    In the database: each queue's claims have the epochs 2, 3, ... once each, and its
    descriptor is at the newest with the newest claimer as owner (the creating shard,
    its id's prefix, at epoch 1 without claims). In the logs: every move a shard logged
    is the claim of that epoch, taken from the holder of the epoch before.
    """
    with db.snapshot() as session:
        claims = session.execute(
            select(QueueClaim.queue_id, QueueClaim.epoch, QueueClaim.shard).where(
                QueueClaim.queue_id.in_(queue_ids)
            )
        ).all()
        owners = {
            queue_id: (shard, int(epoch))
            for queue_id, shard, epoch in session.execute(
                select(
                    QueueDescriptorRow.queue_id,
                    QueueDescriptorRow.owner_shard,
                    QueueDescriptorRow.owner_epoch,
                ).where(QueueDescriptorRow.queue_id.in_(queue_ids))
            )
        }
    holders: dict[str, dict[int, list[str]]] = {q: {1: [q.split(".", 1)[0]]} for q in queue_ids}
    for queue_id, epoch, shard in claims:
        holders[queue_id].setdefault(int(epoch), []).append(shard)
    problems = []
    for queue_id in queue_ids:
        by_epoch = holders[queue_id]
        newest = max(by_epoch)
        if sorted(by_epoch) != list(range(1, newest + 1)):
            problems.append(f"{queue_id}: claimed at epochs {sorted(by_epoch)[1:]}")
        twice = {epoch: shards for epoch, shards in by_epoch.items() if len(shards) > 1}
        if twice:
            problems.append(f"{queue_id}: epochs claimed twice: {twice}")
        if owners.get(queue_id) != (by_epoch[newest][0], newest):
            problems.append(
                f"{queue_id}: descriptor owned by {owners.get(queue_id)}, newest claim "
                f"{by_epoch[newest][0]} at epoch {newest}"
            )
    for queue_id, old, new, epoch in moves:
        claimed = holders.get(queue_id, {})
        if claimed.get(epoch) != [new] or claimed.get(epoch - 1) != [old]:
            problems.append(
                f"log: {queue_id} moved from {old} to {new} (epoch {epoch}), but the "
                f"claims say epoch {epoch - 1}: {claimed.get(epoch - 1)}, "
                f"epoch {epoch}: {claimed.get(epoch)}"
            )
    return problems
