"""Steady state: 1,000 queues long-polling in a loop on PostgreSQL, one event to all of
them each time every client has re-polled; deliveries per second, beside a bare Tornado
long-poll loop driven the same way.

Each client has its own keep-alive connection and re-polls with its newest event id as
soon as it is answered. A round: the event is sent (eventq: a channel created by a
writer process, which every user receives; bare: `POST /event`), every client receives
it and re-polls; then the next round starts. Deliveries per second are the events
received over the measured rounds divided by their wall time.

Both servers run at once, each with its 1,000 polls parked, and the measured rounds
alternate between them in blocks of ROUNDS_PER_BLOCK: the load of a shared machine
changes over a minute, and alternating gives both the same conditions. The eventq
server is `bench.counted_server`, so SQL statements and transactions per poll come
with it, and each server's CPU per poll is read from /proc. With a py-spy path, the
eventq server is sampled for PROFILE_SECS of further eventq rounds.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import profile
from bench.support import (
    BareTornado,
    HttpConnection,
    PollFleet,
    ServerProcess,
    SqlCounters,
    Writer,
    bare_parked,
    basic_auth,
    build_request,
    cpu_secs,
    create_realm_with_users,
    fresh_database,
    register_queues,
    wait_until,
    waiting_polls,
)
from models.database import Database

QUEUES = 1000
WARMUP_ROUNDS = 3
ROUNDS = 20
ROUNDS_PER_BLOCK = 5
ROUND_TIMEOUT_SECS = 120.0
PARK_TIMEOUT_SECS = 120.0
PROFILE_SECS = 20.0
EVENT_TYPES = ["stream", "realm_user", "subscription"]


@dataclass
class Side:
    """One server under test: its fleet, how to send it an event, and what was measured."""

    fleet: PollFleet
    send_event: Callable[[], Awaitable[float]]
    pid: int
    counters: SqlCounters | None = None
    deliveries: int = 0
    polls: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    sql: dict[str, int] = field(default_factory=dict)
    last_answers: list[float] = field(default_factory=list)
    median_answers: list[float] = field(default_factory=list)

    async def rounds(self, count: int, measure: bool = True) -> None:
        """Run `count` rounds; when measuring, add their figures to the totals."""
        fleet = self.fleet
        delivered, sent = fleet.deliveries, fleet.sent
        sql = self.counters.read() if self.counters is not None else {}
        started, server_cpu, client_cpu = time.time(), cpu_secs(self.pid), time.process_time()
        last_answers, medians = [], []
        for _ in range(count):
            fleet.start_round()
            event_time = await self.send_event()
            await fleet.wait_round(ROUND_TIMEOUT_SECS)
            last_answers.append(max(fleet.round_answers) - event_time)
            medians.append(statistics.median(fleet.round_answers) - event_time)
        if not measure:
            return
        self.seconds += time.time() - started
        self.server_cpu += cpu_secs(self.pid) - server_cpu
        self.client_cpu += time.process_time() - client_cpu
        self.deliveries += fleet.deliveries - delivered
        self.polls += fleet.sent - sent
        self.last_answers += last_answers
        self.median_answers += medians
        if self.counters is not None:
            for name, value in self.counters.read().items():
                self.sql[name] = self.sql.get(name, 0) + value - sql[name]

    def figures(self) -> dict[str, Any]:
        figures = {
            "deliveries": self.deliveries,
            "polls": self.polls,
            "seconds": self.seconds,
            "deliveries_per_sec": self.deliveries / self.seconds,
            "round_last_ms": 1000 * statistics.median(self.last_answers),
            "round_median_ms": 1000 * statistics.median(self.median_answers),
            "server_cpu_ms_per_poll": 1000 * self.server_cpu / self.polls,
            "client_cpu_ms_per_poll": 1000 * self.client_cpu / self.polls,
            "heartbeats": self.fleet.heartbeats,
        }
        for name, value in self.sql.items():
            figures[f"{name}_per_poll"] = value / self.polls
        return figures


async def _eventq_side(
    server: ServerProcess,
    credentials: list[tuple[int, str, str]],
    writer: Writer,
    counters: SqlCounters,
) -> Side:
    port = server.port
    auths = [basic_auth(email, key) for _, email, key in credentials[:QUEUES]]
    queue_ids = await register_queues(
        port, auths, {"event_types": EVENT_TYPES, "fetch_event_types": []}
    )
    prefixes = [f"/api/v1/events?queue_id={q}&last_event_id=" for q in queue_ids]

    def poll(index: int, last: int) -> bytes:
        return build_request("GET", f"{prefixes[index]}{last}", auths[index])

    fleet = PollFleet(port, QUEUES, poll)
    await fleet.start()
    parked = await wait_until(lambda: waiting_polls(port, auths[0]), QUEUES, PARK_TIMEOUT_SECS)
    if parked < QUEUES:
        raise RuntimeError(f"only {parked} of {QUEUES} polls parked")

    async def send_event() -> float:
        _, committed = await writer.commit()
        return committed

    return Side(fleet, send_event, server.pid, counters)


async def _bare_side(bare: BareTornado, control: HttpConnection) -> Side:
    auth = basic_auth("user0@steady.example.com", "x" * 32)
    fake_queue = "0123456789abcdef0123456789abcdef"

    def poll(index: int, last: int) -> bytes:
        return build_request("GET", f"/poll?queue_id={fake_queue}&last_event_id={last}", auth)

    fleet = PollFleet(bare.port, QUEUES, poll)
    await fleet.start()
    parked = await wait_until(lambda: bare_parked(bare.port), QUEUES, PARK_TIMEOUT_SECS)
    if parked < QUEUES:
        raise RuntimeError(f"only {parked} of {QUEUES} polls parked (bare)")

    async def send_event() -> float:
        sent = time.time()
        answer = await control.request(build_request("POST", "/event"))
        if answer.status != 200:
            raise RuntimeError(f"bare /event: {answer.status}")
        return sent

    return Side(fleet, send_event, bare.pid)


async def _profile(side: Side, py_spy: str) -> str:
    """Keep eventq's rounds going while py-spy samples its server for PROFILE_SECS."""
    out = Path(f"/tmp/eventq-steady-profile-{side.pid}.txt")
    recorder = profile.start_recording(side.pid, PROFILE_SECS, out, py_spy)
    deadline = time.monotonic() + PROFILE_SECS + 60
    while recorder.poll() is None and time.monotonic() < deadline:
        await side.rounds(1, measure=False)
    if recorder.poll() is None:
        recorder.kill()
    _, errors = recorder.communicate()
    if not out.exists():
        return f"py-spy failed: {errors.decode(errors='replace').strip()}"
    return f"(raw stacks: {out})\n" + profile.summarize(out)


async def _measure(
    server: ServerProcess,
    bare: BareTornado,
    credentials: list[tuple[int, str, str]],
    writer: Writer,
    counters: SqlCounters,
    rounds: int,
    profile_with: str | None,
) -> dict[str, Any]:
    control = await HttpConnection.open(bare.port)
    sides: list[Side] = []
    try:
        eventq = await _eventq_side(server, credentials, writer, counters)
        sides.append(eventq)
        baseline = await _bare_side(bare, control)
        sides.append(baseline)
        for side in sides:
            await side.rounds(WARMUP_ROUNDS, measure=False)
        done = 0
        while done < rounds:
            block = min(ROUNDS_PER_BLOCK, rounds - done)
            for side in sides:
                await side.rounds(block)
            done += block
        result = {"eventq": eventq.figures(), "bare": baseline.figures()}
        if profile_with is not None:
            result["eventq"]["profile"] = await _profile(eventq, profile_with)
        errors = eventq.fleet.errors + baseline.fleet.errors
        if errors:
            raise RuntimeError(f"{len(errors)} clients failed: {errors[0]}")
        return result
    finally:
        control.close()
        for side in sides:
            await side.fleet.stop()


def run(rounds: int = ROUNDS, profile_with: str | None = None) -> dict[str, Any]:
    """eventq's and bare Tornado's steady-state figures (`profile_with`: py-spy path)."""
    with fresh_database("postgresql") as url:
        db = Database(url)
        realm_id, credentials = create_realm_with_users(db, "steady", QUEUES)
        db.dispose()
        counters = SqlCounters()
        server = ServerProcess(
            url,
            {"EVENTQ_HEARTBEAT_SECS": "85", "BENCH_SQL_COUNTERS": counters.path},
            command=[sys.executable, "-m", "bench.counted_server"],
        )
        writer = Writer(url, realm_id)
        bare = BareTornado()
        try:
            result = asyncio.run(
                _measure(server, bare, credentials, writer, counters, rounds, profile_with)
            )
            result["eventq"]["server_errors"] = server.log_count(r" (ERROR|WARNING) ")
        finally:
            bare.stop()
            writer.close()
            server.stop()
            counters.close()
    return {"queues": QUEUES, "rounds": rounds, **result}


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
