"""A steady stream of messages to one channel whose 1,000 subscribers all long-poll, on
PostgreSQL: the rate achieved, commit-to-delivery latency at that rate, deliveries/s; at
the goal's RATE, and first at CALM_RATE, which the machine sustains, for comparison.

A writer process (this module run with `writer`, as Zulip's Django process writes while
Tornado delivers) sends `rate` messages a second for WARMUP_SECS + SECONDS, each through
`check_send_message` in its own transaction, paced by a schedule (never faster; when an
action runs late the next one starts at once). After each commit it prints the message
id and the wall-clock time of the commit. Each subscriber has a queue of `message`
events (HTML rendering) and long-polls it on its own keep-alive connection, re-polling
with its newest id at once (`StreamFleet`: it reads the message ids and the newest event
id out of each answer's bytes instead of decoding every event, so the client process,
which shares the machine, takes as little CPU from the server as it can).

A message's deliveries are its arrivals at the 1,000 clients (the sender's own included);
its latency on each is the arrival time minus the commit time (one machine, one clock).
Only messages committed after the warm-up count. Reported: messages/s achieved, latency
p50 / p99 / max over every (message, subscriber) pair, deliveries/s, and the writer's
action time p50 / p99 (its transaction: message, 1,000 `user_message` rows, the outbox).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import subprocess
import sys
import threading
import time
from array import array
from collections.abc import Callable
from typing import Any

from actions.messages import ChannelTarget, check_send_message
from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions
from bench.support import (
    HttpConnection,
    ServerProcess,
    basic_auth,
    build_request,
    cpu_secs,
    create_realm_with_users,
    fresh_database,
    open_many,
    percentile_ms,
    register_queues,
    retry_after,
    wait_until,
    waiting_polls,
)
from models.database import Database

SUBSCRIBERS = 1000
# The goal's rate (p99 under 100 ms at 100 messages a second), after a rate this machine
# sustains with room to spare, for the latency of a stream that is not backlogged.
RATE = 100.0
CALM_RATE = 10.0
RATES = (CALM_RATE, RATE)
# Long enough for a stable p99 (about 1.5 million deliveries at the goal's rate).
SECONDS = 15.0
# Connections warm, the planner's statistics and the server's caches settled.
WARMUP_SECS = 3.0
CHANNEL = "stream of messages"
PARK_TIMEOUT_SECS = 120.0
# Every delivery of the last message arrives within this once the writer is done.
DRAIN_TIMEOUT_SECS = 60.0
CONTENT = "A message of an ordinary length, with **some** Markdown in it."
CLIENT = "eventq-bench"
# In an answer's bytes: a message event's message id (its message object starts with it,
# `models.messages.wire.message_to_api`), and each event's queue id (always its last key).
# Both are outside any string: JSON escapes every quote inside one.
_MESSAGE_ID = re.compile(rb'"message":\{"id":(\d+)')
_EVENT_ID = re.compile(rb',"id":(-?\d+)\}')
# A client whose connection broke reconnects after a random pause up to this long.
RECONNECT_PAUSE_SECS = 0.05


def writer_main(database_url: str, realm_id: int, sender_id: int, rate: float, count: int) -> None:
    """The writer process: `count` messages at `rate` a second; one line per commit,
    `message_id commit_time action_seconds`."""
    db = Database(database_url)
    start = time.time() + 0.2
    for index in range(count):
        due = start + index / rate
        delay = due - time.time()
        if delay > 0:
            time.sleep(delay)  # pacing the stream to its schedule
        began = time.perf_counter()
        with db.write() as session:
            message_id = check_send_message(
                session, realm_id, sender_id, ChannelTarget(CHANNEL), "bench", CONTENT, CLIENT
            )
        committed = time.time()
        print(f"{message_id} {committed:.6f} {time.perf_counter() - began:.6f}", flush=True)
    db.dispose()


class StreamFleet:
    """One long-polling client per queue, each on its own keep-alive connection; calls
    `on_arrival(message_id, wall_time)` for every message event received."""

    def __init__(
        self,
        port: int,
        requests: list[Callable[[int], bytes]],
        on_arrival: Callable[[int, float], None],
    ) -> None:
        self.port = port
        self.requests = requests
        self.on_arrival = on_arrival
        self.connections: list[HttpConnection] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        self.polls = 0
        self.heartbeats = 0
        self.errors: list[str] = []

    async def start(self) -> None:
        self.connections = await open_many(self.port, len(self.requests))
        self.tasks = [asyncio.create_task(self._client(i)) for i in range(len(self.requests))]

    async def _client(self, index: int) -> None:
        last = -1
        while not self.stopping:
            try:
                self.polls += 1
                answer = await self.connections[index].send(self.requests[index](last))
            except (ConnectionError, RuntimeError):
                if self.stopping:
                    return
                await asyncio.sleep(RECONNECT_PAUSE_SECS * random.random())
                try:
                    self.connections[index] = await HttpConnection.open(self.port)
                except (ConnectionError, TimeoutError):
                    pass
                continue
            now = time.time()
            if answer.status == 429:
                await asyncio.sleep(retry_after(answer))
                continue
            if answer.status != 200:
                self.errors.append(f"client {index}: {answer.status} {answer.body[:200]!r}")
                return
            found = _MESSAGE_ID.findall(answer.body)
            if not found:
                self.heartbeats += 1
            for message_id in found:
                self.on_arrival(int(message_id), now)
            last = max([last, *(int(i) for i in _EVENT_ID.findall(answer.body))])

    async def stop(self) -> None:
        self.stopping = True
        for connection in self.connections:
            connection.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Commits:
    """The writer's lines, read on a thread as they come: commit time per message id."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.at: dict[int, float] = {}
        self.action_secs: list[float] = []
        self.order: list[int] = []
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        if process.stdout is None:
            raise RuntimeError("the writer's output is not piped")
        for line in process.stdout:
            message_id, committed, took = line.split()
            self.at[int(message_id)] = float(committed)
            self.action_secs.append(float(took))
            self.order.append(int(message_id))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class Stream:
    """The fleet of 1,000 long-polls, and what arrived, shared by the rates measured."""

    def __init__(self, server: ServerProcess, url: str, realm_id: int, sender_id: int) -> None:
        self.server = server
        self.url = url
        self.realm_id = realm_id
        self.sender_id = sender_id
        self.arrivals: dict[int, array[float]] = {}
        self.delivered = 0

    def on_arrival(self, message_id: int, now: float) -> None:
        times = self.arrivals.get(message_id)
        if times is None:
            times = self.arrivals[message_id] = array("d")
        times.append(now)
        self.delivered += 1

    async def phase(self, fleet: StreamFleet, rate: float) -> dict[str, Any]:
        """Send at `rate` for the warm-up and the measured seconds; the figures."""
        count = int(rate * (WARMUP_SECS + SECONDS))
        writer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.messages",
                "writer",
                self.url,
                str(self.realm_id),
                str(self.sender_id),
                str(rate),
                str(count),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        commits = Commits(writer)
        delivered, polls, heartbeats = self.delivered, fleet.polls, fleet.heartbeats
        server_cpu, started = cpu_secs(self.server.pid), time.time()
        client_cpu = time.process_time()
        await asyncio.get_running_loop().run_in_executor(None, writer.wait)
        commits.join(30.0)
        if writer.returncode != 0 or len(commits.order) != count:
            raise RuntimeError(
                f"the writer failed ({writer.returncode}), {len(commits.order)} commits"
            )
        expected = delivered + count * SUBSCRIBERS
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECS
        while self.delivered < expected and time.monotonic() < deadline and not fleet.errors:
            await asyncio.sleep(0.1)  # the last deliveries drain; nothing to await on
        server_cpu = cpu_secs(self.server.pid) - server_cpu
        client_cpu = time.process_time() - client_cpu
        wall = time.time() - started
        if fleet.errors:
            raise RuntimeError(f"{len(fleet.errors)} clients failed: {fleet.errors[0]}")
        figures = self.figures(commits, rate)
        figures.update(
            server_cpu_pct=100.0 * server_cpu / wall,
            client_cpu_pct=100.0 * client_cpu / wall,
            polls=fleet.polls - polls,
            heartbeats=fleet.heartbeats - heartbeats,
        )
        return figures

    def figures(self, commits: Commits, rate: float) -> dict[str, Any]:
        measured = commits.order[int(rate * WARMUP_SECS) :]
        first, last = commits.at[measured[0]], commits.at[measured[-1]]
        latencies: list[float] = []
        missing = 0
        deliveries = 0
        latest = last
        for message_id in measured:
            times = self.arrivals.get(message_id, array("d"))
            missing += SUBSCRIBERS - len(times)
            committed = commits.at[message_id]
            latencies.extend(t - committed for t in times)
            deliveries += len(times)
            if times:
                latest = max(latest, max(times))
        return {
            "subscribers": SUBSCRIBERS,
            "target_rate": rate,
            "messages": len(measured),
            "messages_per_sec": (len(measured) - 1) / (last - first) if last > first else 0.0,
            "deliveries": deliveries,
            "missing_deliveries": missing,
            "deliveries_per_sec": deliveries / (latest - first) if latest > first else 0.0,
            "latency_p50_ms": percentile_ms(latencies, 0.50),
            "latency_p99_ms": percentile_ms(latencies, 0.99),
            "latency_max_ms": percentile_ms(latencies, 1.0),
            "action_p50_ms": percentile_ms(commits.action_secs, 0.50),
            "action_p99_ms": percentile_ms(commits.action_secs, 0.99),
        }


async def _measure(
    server: ServerProcess, credentials: list[tuple[int, str, str]], url: str, realm_id: int
) -> dict[str, Any]:
    port = server.port
    auths = [basic_auth(email, key) for _, email, key in credentials]
    queue_ids = await register_queues(
        port, auths, {"event_types": ["message"], "fetch_event_types": []}
    )
    prefixes = [f"/api/v1/events?queue_id={q}&last_event_id=" for q in queue_ids]

    def poller(index: int) -> Callable[[int], bytes]:
        def poll(last: int) -> bytes:
            return build_request("GET", f"{prefixes[index]}{last}", auths[index])

        return poll

    stream = Stream(server, url, realm_id, credentials[0][0])
    fleet = StreamFleet(port, [poller(i) for i in range(SUBSCRIBERS)], stream.on_arrival)
    await fleet.start()
    try:
        parked = await wait_until(
            lambda: waiting_polls(port, auths[0]), SUBSCRIBERS, PARK_TIMEOUT_SECS
        )
        if parked < SUBSCRIBERS:
            raise RuntimeError(f"only {parked} of {SUBSCRIBERS} polls parked")
        return {f"{rate:g}": await stream.phase(fleet, rate) for rate in RATES}
    finally:
        await fleet.stop()


def run() -> dict[str, Any]:
    """The stream's figures on a fresh PostgreSQL schema."""
    with fresh_database("postgresql") as url:
        db = Database(url)
        realm_id, credentials = create_realm_with_users(db, "messages", SUBSCRIBERS)
        with db.write() as session:
            stream_id = do_create_stream(session, realm_id, CHANNEL).id
            bulk_add_subscriptions(session, realm_id, [u for u, _, _ in credentials], [stream_id])
        db.dispose()
        server = ServerProcess(url, {"EVENTQ_HEARTBEAT_SECS": "85"})
        try:
            result = asyncio.run(_measure(server, credentials, url, realm_id))
            result["server_errors"] = server.log_count(r" (ERROR|WARNING) ")
        finally:
            server.stop()
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["writer"]:
        url, realm, sender, rate, count = sys.argv[2:7]
        writer_main(url, int(realm), int(sender), float(rate), int(count))
    else:
        print(json.dumps(run(), indent=2))
