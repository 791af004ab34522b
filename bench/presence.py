"""Presence pings beside message delivery, on PostgreSQL: does a realm's stream of
`POST /api/v1/users/me/presence` slow down the delivery of its messages?

A realm of 10,000 users (inserted in bulk) and a channel of 1,000 of them, each with a
queue of `message` events long-polling on its own keep-alive connection
(`bench.messages.StreamFleet`). One sender (a subscriber) sends a message a second to
the channel through `POST /api/v1/messages`, paced by a schedule. A message's deliveries
are its arrivals at the 1,000 clients; each one's latency is the arrival time minus the
moment its send request was written (one machine, one clock).

The run has two measured phases of `seconds` each, in this order, each after WARMUP_SECS
not counted: without pings, then with pings. The pings are 10,000 simulated clients, one
per user with that user's credentials, each calling the presence endpoint (`status=
active`, `ping_only=true`, Zulip's parameters) once every PING_INTERVAL_SECS, spread
evenly over the interval: 10,000 / 60 s = 166.7 pings a second, in a fixed shuffled
order of the users. Time is not compressed: the rate is the real one, and a phase
shorter than the interval reaches the first users of that order once each. The
simulated clients share PING_CONNECTIONS keep-alive connections (one per client would
cost the load generator, which shares the machine, more than the server); a ping goes
out at its due time, or at once when its connection was still busy (how late the
latest went is reported, beside how many went out in the phase).

Reported per phase: delivery p50 / p99 / max and missing deliveries, the send's own
round trip, the server's CPU (share of one core), the load generator's CPU and how busy
the whole machine was; for the pings: how many were answered 200 a second, the round
trip of every answer, and the refusals by status (a missing endpoint shows as 404s).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions
from bench.messages import StreamFleet
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
    wait_until,
    waiting_polls,
)
from bench.writes import machine_busy_secs
from models.database import Database

USERS = 10_000
SUBSCRIBERS = 1_000
CHANNEL = "presence bench"
TOPIC = "bench"
CONTENT = "A message of an ordinary length, with **some** Markdown in it."
MESSAGE_RATE = 1.0
PING_INTERVAL_SECS = 60.0
PING_RATE = USERS / PING_INTERVAL_SECS
# Enough that a ping rarely waits for the answer to the one before on its connection
# (each carries a ping every 1.5 s), so the pings stay an open loop, as 10,000 clients'
# would, even when the server answers slowly.
PING_CONNECTIONS = 250
PRESENCE_PATH = "/api/v1/users/me/presence"
# Measured seconds per phase (the CLI's --seconds), each after WARMUP_SECS not counted:
# 40 messages, 40,000 deliveries and 6,667 pings a phase.
SECONDS = 40.0
WARMUP_SECS = 5.0
PARK_TIMEOUT_SECS = 120.0
# Every delivery of the last message arrives within this once the sender is done.
DRAIN_TIMEOUT_SECS = 60.0
# Messages from a client still polling; heartbeats never come within a run.
HEARTBEAT_SECS = "85"
PHASES = ("without pings", "with pings")


@dataclass
class Phase:
    """One measured window: the messages sent in it and what the machine did."""

    name: str
    start: float = 0.0
    end: float = 0.0
    server_cpu: float = 0.0
    busy: float = 0.0
    client_cpu: float = 0.0
    # message id -> the wall time its send request was written
    sent: dict[int, float] = field(default_factory=dict)
    send_round_trips: list[float] = field(default_factory=list)
    pings_sent: int = 0
    pings_ok: int = 0
    # every answer's round trip, refusals included
    ping_latencies: list[float] = field(default_factory=list)
    ping_refusals: Counter[str] = field(default_factory=Counter)
    first_refusal: str = ""
    ping_late_max: float = 0.0


class Pinger:
    """PING_RATE presence pings a second from PING_CONNECTIONS connections, each ping
    with its own user's credentials, until `stop()`; each answer is filed under the
    phase current when it came (`phase`, None between phases)."""

    def __init__(self, port: int, auths: list[str], seed: int = 60) -> None:
        self.port = port
        order = list(range(len(auths)))
        random.Random(seed).shuffle(order)
        params = {"status": "active", "ping_only": True}
        self.requests = [build_request("POST", PRESENCE_PATH, auths[i], params) for i in order]
        self.phase: Phase | None = None
        self.stopping = False
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        connections = await open_many(self.port, PING_CONNECTIONS)
        begin = time.time()
        self.tasks = [
            asyncio.create_task(self._worker(w, begin, connection))
            for w, connection in enumerate(connections)
        ]

    async def _worker(self, worker: int, begin: float, connection: HttpConnection) -> None:
        index = worker
        try:
            while not self.stopping:
                due = begin + index / PING_RATE
                delay = due - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # the ping's turn in the even spread
                phase = self.phase
                if phase is not None:
                    phase.pings_sent += 1
                    phase.ping_late_max = max(phase.ping_late_max, -delay)
                request = self.requests[index % len(self.requests)]
                index += PING_CONNECTIONS
                began = time.perf_counter()
                try:
                    answer = await connection.request(request, timeout=60.0)
                except (ConnectionError, TimeoutError) as error:
                    self._refused(type(error).__name__, str(error))
                    connection = await self._reconnect()
                    continue
                took = time.perf_counter() - began
                if self.phase is not None:
                    self.phase.ping_latencies.append(took)
                if answer.status == 200:
                    if self.phase is not None:
                        self.phase.pings_ok += 1
                else:
                    self._refused(str(answer.status), repr(answer.body[:200]))
        finally:
            connection.close()

    async def _reconnect(self) -> HttpConnection:
        for attempt in range(20):
            try:
                return await HttpConnection.open(self.port)
            except (ConnectionError, TimeoutError):
                await asyncio.sleep(0.05 * (attempt + 1))  # back off, then retry
        raise ConnectionError(f"could not connect to port {self.port}")

    def _refused(self, what: str, detail: str) -> None:
        if self.phase is not None:
            self.phase.ping_refusals[what] += 1
            if not self.phase.first_refusal:
                self.phase.first_refusal = f"{what} {detail}"

    async def stop(self) -> None:
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Sender:
    """MESSAGE_RATE messages a second to CHANNEL over HTTP until `stop()`, each filed
    under the phase current when it was sent (`phase`, None between phases)."""

    def __init__(self, port: int, auth: str) -> None:
        self.port = port
        self.request = build_request(
            "POST",
            "/api/v1/messages",
            auth,
            {"type": "stream", "to": CHANNEL, "topic": TOPIC, "content": CONTENT},
        )
        self.phase: Phase | None = None
        self.stopping = False
        self.errors: list[str] = []
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        connection = await HttpConnection.open(self.port)
        begin = time.time()
        try:
            for index in itertools.count():
                delay = begin + index / MESSAGE_RATE - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the stream to its schedule
                if self.stopping:
                    return
                phase = self.phase
                sent_at, began = time.time(), time.perf_counter()
                answer = await connection.request(self.request, timeout=60.0)
                took = time.perf_counter() - began
                if answer.status != 200:
                    self.errors.append(f"{answer.status} {answer.body[:200]!r}")
                    return
                if phase is not None:
                    phase.sent[int(answer.json()["id"])] = sent_at
                    phase.send_round_trips.append(took)
        finally:
            connection.close()

    async def stop(self) -> None:
        self.stopping = True
        if self.task is not None:
            await self.task


class Arrivals:
    """Every message event's arrival times, by message id."""

    def __init__(self) -> None:
        self.at: dict[int, array[float]] = {}

    def add(self, message_id: int, now: float) -> None:
        times = self.at.get(message_id)
        if times is None:
            times = self.at[message_id] = array("d")
        times.append(now)

    def complete(self, message_ids: list[int]) -> bool:
        return all(len(self.at.get(m, ())) >= SUBSCRIBERS for m in message_ids)


async def _window(
    phase: Phase, server: ServerProcess, seconds: float, *targets: Sender | Pinger
) -> None:
    """Let WARMUP_SECS pass uncounted, then measure `phase` for `seconds`."""
    await asyncio.sleep(WARMUP_SECS)
    phase.start = time.time()
    cpu, busy, client = cpu_secs(server.pid), machine_busy_secs(), time.process_time()
    for target in targets:
        target.phase = phase
    await asyncio.sleep(seconds)
    for target in targets:
        target.phase = None
    phase.end = time.time()
    wall = phase.end - phase.start
    phase.server_cpu = (cpu_secs(server.pid) - cpu) / wall
    phase.busy = (machine_busy_secs() - busy) / wall
    phase.client_cpu = (time.process_time() - client) / wall


def _figures(phase: Phase, arrivals: Arrivals) -> dict[str, Any]:
    latencies: list[float] = []
    missing = 0
    for message_id, sent_at in phase.sent.items():
        times = arrivals.at.get(message_id, array("d"))
        missing += SUBSCRIBERS - len(times)
        latencies.extend(t - sent_at for t in times)
    wall = phase.end - phase.start
    return {
        "messages": len(phase.sent),
        "deliveries": len(latencies),
        "missing_deliveries": missing,
        "latency_p50_ms": percentile_ms(latencies, 0.50),
        "latency_p99_ms": percentile_ms(latencies, 0.99),
        "latency_max_ms": percentile_ms(latencies, 1.0),
        "send_p50_ms": percentile_ms(phase.send_round_trips, 0.50),
        "send_p99_ms": percentile_ms(phase.send_round_trips, 0.99),
        "server_cpu_pct": 100.0 * phase.server_cpu,
        "machine_busy_pct": 100.0 * phase.busy,
        "client_cpu_pct": 100.0 * phase.client_cpu,
        "pings_sent": phase.pings_sent,
        "pings_answered": len(phase.ping_latencies),
        "pings": phase.pings_ok,
        "pings_per_sec": phase.pings_ok / wall if wall > 0 else 0.0,
        "ping_p50_ms": percentile_ms(phase.ping_latencies, 0.50),
        "ping_p99_ms": percentile_ms(phase.ping_latencies, 0.99),
        "ping_late_max_ms": 1000.0 * phase.ping_late_max,
        "ping_refusals": dict(phase.ping_refusals),
        "first_ping_refusal": phase.first_refusal,
    }


async def _measure(
    server: ServerProcess, credentials: list[tuple[int, str, str]], seconds: float
) -> dict[str, Any]:
    port = server.port
    auths = [basic_auth(email, key) for _, email, key in credentials]
    subscriber_auths = auths[:SUBSCRIBERS]
    queue_ids = await register_queues(
        port, subscriber_auths, {"event_types": ["message"], "fetch_event_types": []}
    )
    prefixes = [f"/api/v1/events?queue_id={q}&last_event_id=" for q in queue_ids]

    def poller(index: int) -> Callable[[int], bytes]:
        def poll(last: int) -> bytes:
            return build_request("GET", f"{prefixes[index]}{last}", subscriber_auths[index])

        return poll

    arrivals = Arrivals()
    fleet = StreamFleet(port, [poller(i) for i in range(SUBSCRIBERS)], arrivals.add)
    await fleet.start()
    sender = Sender(port, auths[0])
    pinger = Pinger(port, auths)
    quiet, pinged = Phase(PHASES[0]), Phase(PHASES[1])
    try:
        parked = await wait_until(
            lambda: waiting_polls(port, auths[0]), SUBSCRIBERS, PARK_TIMEOUT_SECS
        )
        if parked < SUBSCRIBERS:
            raise RuntimeError(f"only {parked} of {SUBSCRIBERS} polls parked")
        sender.start()
        await _window(quiet, server, seconds, sender)
        await pinger.start()
        await _window(pinged, server, seconds, sender, pinger)
        await pinger.stop()
        await sender.stop()
        if sender.errors:
            raise RuntimeError(f"the sender was refused: {sender.errors[0]}")
        measured = [*quiet.sent, *pinged.sent]
        deadline = time.monotonic() + DRAIN_TIMEOUT_SECS
        while not arrivals.complete(measured) and time.monotonic() < deadline:
            if fleet.errors:
                raise RuntimeError(f"{len(fleet.errors)} clients failed: {fleet.errors[0]}")
            await asyncio.sleep(0.1)  # the last deliveries drain; nothing to await on
    finally:
        await pinger.stop()
        await fleet.stop()
    return {
        "users": USERS,
        "subscribers": SUBSCRIBERS,
        "seconds": seconds,
        "warmup_secs": WARMUP_SECS,
        "ping_rate": PING_RATE,
        PHASES[0]: _figures(quiet, arrivals),
        PHASES[1]: _figures(pinged, arrivals),
    }


def run(seconds: float = SECONDS) -> dict[str, Any]:
    """Both phases on a fresh PostgreSQL schema."""
    with fresh_database("postgresql") as url:
        db = Database(url)
        realm_id, credentials = create_realm_with_users(db, "presence", USERS)
        with db.write() as session:
            stream_id = do_create_stream(session, realm_id, CHANNEL).id
        with db.write() as session:
            subscribers = [user_id for user_id, _, _ in credentials[:SUBSCRIBERS]]
            bulk_add_subscriptions(session, realm_id, subscribers, [stream_id])
        db.dispose()
        server = ServerProcess(url, {"EVENTQ_HEARTBEAT_SECS": HEARTBEAT_SECS})
        try:
            result = asyncio.run(_measure(server, credentials, seconds))
            result["server_errors"] = server.log_count(r" (ERROR|WARNING) ")
        finally:
            server.stop()
    return result


if __name__ == "__main__":
    print(json.dumps(run(float(sys.argv[1]) if len(sys.argv) > 1 else SECONDS), indent=2))
