"""The write path: how many channel messages a second eventq commits from 8 concurrent
senders, beside 8 processes writing the same rows straight to PostgreSQL.

Two scenarios, each measured twice in the same run (the baseline, then eventq), on
PostgreSQL:

* (a) "own channels": 8 senders, each to its own channel of 100 subscribers;
* (b) "one channel": the same 8 senders, all to one channel of 800 subscribers.

The baseline is 8 processes (this module run with `baseline`), each a closed loop on one
psycopg connection, with no lock between them and one transaction per message: the
`message` row, one `user_message` row per recipient, one `outbox_event` row (the same
JSON eventq stores, its sequence number from a PostgreSQL sequence, since nothing reads
it in order) and one `outbox_recipient` row per recipient. The tables are eventq's, in a
schema of their own, set up like eventq's (same realm, users, channels, first message).
The baseline sends no NOTIFY and writes one event, where eventq also writes the sender's
own event, advances the realm's counter under the realm lock and notifies its consumer.

eventq is a real `eventq serve` process with `EVENTQ_RATE_LIMITING=off`; the 8 senders
call `POST /api/v1/messages` in a closed loop, each on its own keep-alive connection,
all on one asyncio loop in the benchmark process (one process takes less CPU from the
server than 8 would; each request is a few bytes to write and one small answer to read).
A send's latency is from writing the request to reading its answer.

Each measurement runs WARMUP_SECS, then `seconds` measured: only the messages whose
transaction (or answer) ended inside the measured window count. Reported: messages/s,
latency p50 / p99, the server's CPU (share of one core, from /proc/<pid>/stat), the load
generator's CPU, and how busy the whole machine was (PostgreSQL, the server, the load
generator and anything else running share its cores). Also scenario (a) against
`eventq serve` on a SQLite file: a ceiling (SQLite takes one writer at a time), no
baseline.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg

from actions.messages import ChannelTarget, check_send_message
from actions.streams import do_create_streams
from actions.subscriptions import bulk_add_subscriptions
from bench.support import (
    HttpConnection,
    ServerProcess,
    basic_auth,
    build_request,
    cpu_secs,
    create_realm_with_users,
    fresh_database,
    percentile_ms,
)
from models.database import Database
from models.messages.wire import load_message_views, message_event

SENDERS = 8
CHANNEL_SUBSCRIBERS = 100
USERS = SENDERS * CHANNEL_SUBSCRIBERS
SHARED_CHANNEL = "everyone"
# Measured seconds per measurement (the CLI's --seconds), after the warm-up: connections
# and prepared statements warm, the planner's statistics settled.
SECONDS = 10.0
WARMUP_SECS = 2.0
TOPIC = "bench"
CONTENT = "A message of an ordinary length, with **some** Markdown in it."
# A measurement stops early once this many sends were refused: something is broken.
MAX_ERRORS = 100
# The baseline's outbox sequence starts past every seq the set-up wrote.
BASELINE_SEQ_START = 1_000_000
# How long the baseline processes may take to start and connect.
BASELINE_READY_TIMEOUT_SECS = 60.0

_INSERT_MESSAGE = (
    "INSERT INTO message (realm_id, sender_id, recipient_id, subject, content, "
    "rendered_content, date_sent, sending_client) "
    "VALUES (%s, %s, %s, %s, %s, %s, now(), %s) RETURNING id"
)
_INSERT_USER_MESSAGES = (
    "INSERT INTO user_message (user_profile_id, message_id, flags) "
    "SELECT u, %s, CASE WHEN u = %s THEN 1 ELSE 0 END FROM unnest(%s::integer[]) AS u"
)
_INSERT_EVENT = (
    "INSERT INTO outbox_event (realm_id, seq, event, user_ids, legacy_skip, created_at) "
    "VALUES (%s, nextval('bench_outbox_seq'), %s, %s, false, now()) RETURNING seq"
)
_INSERT_RECIPIENTS = (
    "INSERT INTO outbox_recipient (realm_id, user_id, seq) "
    "SELECT %s, u, %s FROM unnest(%s::integer[]) AS u"
)


def channel_name(index: int) -> str:
    return f"channel {index}"


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    # The channel each of the SENDERS sends to, in sender order.
    channels: tuple[str, ...]


OWN_CHANNELS = Scenario(
    "a",
    f"{SENDERS} senders, each to its own channel of {CHANNEL_SUBSCRIBERS} subscribers",
    tuple(channel_name(i) for i in range(SENDERS)),
)
ONE_CHANNEL = Scenario(
    "b",
    f"{SENDERS} senders, all to one channel of {USERS} subscribers",
    (SHARED_CHANNEL,) * SENDERS,
)
SCENARIOS = (OWN_CHANNELS, ONE_CHANNEL)


@dataclass(frozen=True, slots=True)
class Layout:
    """What `_populate` built: the realm, the senders' credentials, and per channel the
    baseline's template of a message to it (the rows eventq wrote for the first one)."""

    realm_id: int
    sender_ids: list[int]
    sender_auths: list[str]
    # channel name -> the row values and event of its first message, and its recipients
    templates: dict[str, dict[str, Any]]


def _populate(url: str) -> Layout:
    """A realm of USERS users; channel i holds users 100i..100i+99, SHARED_CHANNEL holds
    everyone; sender i is the first subscriber of channel i. Each channel gets one
    message through eventq's action, so both schemas start alike (the recipient rows
    exist) and the baseline can copy that message's rows."""
    db = Database(url)
    realm_id, credentials = create_realm_with_users(db, "writes", USERS)
    user_ids = [user_id for user_id, _, _ in credentials]
    names = [*(channel_name(i) for i in range(SENDERS)), SHARED_CHANNEL]
    with db.write() as session:
        streams = do_create_streams(session, realm_id, names)
    members = {
        **{
            channel_name(i): user_ids[i * CHANNEL_SUBSCRIBERS : (i + 1) * CHANNEL_SUBSCRIBERS]
            for i in range(SENDERS)
        },
        SHARED_CHANNEL: user_ids,
    }
    for stream in streams:
        with db.write() as session:
            bulk_add_subscriptions(session, realm_id, members[stream.name], [stream.id])
    sender_ids = [user_ids[i * CHANNEL_SUBSCRIBERS] for i in range(SENDERS)]
    first: dict[str, int] = {}
    for name in names:
        sender = sender_ids[0] if name == SHARED_CHANNEL else members[name][0]
        with db.write() as session:
            first[name] = check_send_message(
                session, realm_id, sender, ChannelTarget(name), TOPIC, CONTENT, "eventq-bench"
            )
    with db.snapshot() as session:
        views = load_message_views(session, list(first.values()))
    db.dispose()
    templates = {}
    for name, message_id in first.items():
        view = views[message_id]
        templates[name] = {
            "recipient_id": view.recipient_id,
            "subject": view.subject,
            "content": view.content,
            "rendered_content": view.rendered_content,
            "client": view.client,
            "event": message_event(view, []),
            "user_ids": sorted(members[name]),
        }
    by_id = {user_id: (email, key) for user_id, email, key in credentials}
    return Layout(
        realm_id,
        sender_ids,
        [basic_auth(*by_id[user_id]) for user_id in sender_ids],
        templates,
    )


def machine_busy_secs() -> float:
    """CPU seconds the whole machine has spent busy (every core), from /proc/stat: the
    server, PostgreSQL, the load generator and any other work on the machine."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# -- the baseline -------------------------------------------------------------------------


def baseline_worker() -> None:
    """One baseline process: reads its spec (a JSON line) from stdin, connects, prints
    `ready`, reads the start time, writes messages in a closed loop until the window
    ends, and prints its figures as one JSON line."""
    spec = json.loads(sys.stdin.readline())
    event: dict[str, Any] = spec["event"]
    user_ids: list[int] = spec["user_ids"]
    user_ids_json = json.dumps(user_ids, separators=(",", ":"))
    realm_id, sender_id = spec["realm_id"], spec["sender_id"]
    message_row = (
        realm_id,
        sender_id,
        spec["recipient_id"],
        spec["subject"],
        spec["content"],
        spec["rendered_content"],
        spec["client"],
    )
    latencies: list[float] = []
    with psycopg.connect(spec["url"]) as conn:
        conn.execute("SELECT 1")
        conn.commit()
        print("ready", flush=True)
        start = float(sys.stdin.readline())
        window_start = start + spec["warmup"]
        end = window_start + spec["seconds"]
        delay = start - time.time()
        if delay > 0:
            time.sleep(delay)  # every process starts at the same moment
        cpu_at_window: float | None = None
        while True:
            now = time.time()
            if now >= end:
                break
            if cpu_at_window is None and now >= window_start:
                cpu_at_window = time.process_time()
            began = time.perf_counter()
            with conn.cursor() as cursor:
                cursor.execute(_INSERT_MESSAGE, message_row)
                row = cursor.fetchone()
                assert row is not None
                message_id = int(row[0])
                cursor.execute(_INSERT_USER_MESSAGES, (message_id, sender_id, user_ids))
                event["message"]["id"] = message_id
                cursor.execute(
                    _INSERT_EVENT, (realm_id, orjson.dumps(event).decode(), user_ids_json)
                )
                row = cursor.fetchone()
                assert row is not None
                cursor.execute(_INSERT_RECIPIENTS, (realm_id, int(row[0]), user_ids))
            conn.commit()
            took = time.perf_counter() - began
            done = time.time()
            if window_start <= done < end:
                latencies.append(took)
    cpu = time.process_time() - (cpu_at_window or time.process_time())
    print(json.dumps({"latencies": latencies, "cpu_secs": cpu}), flush=True)


def _baseline(url: str, layout: Layout, scenario: Scenario, seconds: float) -> dict[str, Any]:
    """SENDERS baseline processes writing `scenario`'s messages at once; their figures."""
    processes = []
    for index, channel in enumerate(scenario.channels):
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.writes", "baseline"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        spec = {
            **layout.templates[channel],
            "url": url,
            "realm_id": layout.realm_id,
            "sender_id": layout.sender_ids[index],
            "warmup": WARMUP_SECS,
            "seconds": seconds,
        }
        assert process.stdin is not None
        process.stdin.write(json.dumps(spec) + "\n")
        process.stdin.flush()
        processes.append(process)
    try:
        for process in processes:
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError("a baseline process did not start")
        start = time.time() + 0.1
        for process in processes:
            assert process.stdin is not None
            process.stdin.write(f"{start:.6f}\n")
            process.stdin.flush()
        time.sleep(max(0.0, start + WARMUP_SECS - time.time()))  # until the window opens
        busy = machine_busy_secs()
        time.sleep(max(0.0, start + WARMUP_SECS + seconds - time.time()))
        busy = machine_busy_secs() - busy
        results = []
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise RuntimeError("a baseline process failed")
            results.append(json.loads(line))
    finally:
        for process in processes:
            if process.stdin is not None:
                process.stdin.close()
            process.wait(30)
            if process.stdout is not None:
                process.stdout.close()
    latencies = [t for r in results for t in r["latencies"]]
    return {
        "messages": len(latencies),
        "messages_per_sec": len(latencies) / seconds,
        "latency_p50_ms": percentile_ms(latencies, 0.50),
        "latency_p99_ms": percentile_ms(latencies, 0.99),
        "client_cpu_pct": 100.0 * sum(r["cpu_secs"] for r in results) / seconds,
        "machine_busy_pct": 100.0 * busy / seconds,
    }


def _prepare_baseline_schema(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SEQUENCE bench_outbox_seq START WITH {BASELINE_SEQ_START}")


# -- eventq ---------------------------------------------------------------------------------


async def _senders(
    server: ServerProcess, layout: Layout, scenario: Scenario, seconds: float
) -> dict[str, Any]:
    """SENDERS closed-loop HTTP senders on one loop, each on its own connection."""
    requests = [
        build_request(
            "POST",
            "/api/v1/messages",
            auth,
            {"type": "stream", "to": channel, "topic": TOPIC, "content": CONTENT},
        )
        for auth, channel in zip(layout.sender_auths, scenario.channels, strict=True)
    ]
    connections = [await HttpConnection.open(server.port) for _ in requests]
    latencies: list[float] = []
    errors: list[str] = []
    start = time.time()
    window_start, end = start + WARMUP_SECS, start + WARMUP_SECS + seconds

    async def sender(index: int) -> None:
        while time.time() < end and len(errors) < MAX_ERRORS:
            began = time.perf_counter()
            answer = await connections[index].request(requests[index], timeout=60.0)
            took = time.perf_counter() - began
            if answer.status != 200:
                errors.append(f"{answer.status} {answer.body[:200]!r}")
                await asyncio.sleep(0.05)  # a refusal answers at once: do not spin
                continue
            if window_start <= time.time() < end:
                latencies.append(took)

    async def meter() -> dict[str, float]:
        await asyncio.sleep(max(0.0, window_start - time.time()))
        cpu, busy, client = cpu_secs(server.pid), machine_busy_secs(), time.process_time()
        await asyncio.sleep(max(0.0, end - time.time()))
        return {
            "server_cpu_pct": 100.0 * (cpu_secs(server.pid) - cpu) / seconds,
            "machine_busy_pct": 100.0 * (machine_busy_secs() - busy) / seconds,
            "client_cpu_pct": 100.0 * (time.process_time() - client) / seconds,
        }

    try:
        tasks = [asyncio.create_task(sender(i)) for i in range(len(requests))]
        usage = await meter()
        await asyncio.gather(*tasks)
    finally:
        for connection in connections:
            connection.close()
    if errors:
        raise RuntimeError(f"{len(errors)} sends refused, the first: {errors[0]}")
    return {
        "messages": len(latencies),
        "messages_per_sec": len(latencies) / seconds,
        "latency_p50_ms": percentile_ms(latencies, 0.50),
        "latency_p99_ms": percentile_ms(latencies, 0.99),
        **usage,
    }


def _server(url: str) -> ServerProcess:
    return ServerProcess(url, {"EVENTQ_RATE_LIMITING": "off"})


def run(seconds: float = SECONDS) -> dict[str, Any]:
    """Both scenarios on PostgreSQL (baseline, then eventq), then (a) on SQLite."""
    result: dict[str, Any] = {"seconds": seconds, "warmup_secs": WARMUP_SECS}
    with fresh_database("postgresql") as baseline_url, fresh_database("postgresql") as url:
        baseline_layout = _populate(baseline_url)
        _prepare_baseline_schema(baseline_url)
        layout = _populate(url)
        server = _server(url)
        try:
            for scenario in SCENARIOS:
                result[scenario.key] = {
                    "baseline": _baseline(baseline_url, baseline_layout, scenario, seconds),
                    "eventq": asyncio.run(_senders(server, layout, scenario, seconds)),
                }
            result["server_errors"] = server.log_count(r" (ERROR|WARNING) ")
        finally:
            server.stop()
    with fresh_database("sqlite") as url:
        layout = _populate(url)
        server = _server(url)
        try:
            result["sqlite"] = asyncio.run(_senders(server, layout, OWN_CHANNELS, seconds))
            result["sqlite_server_errors"] = server.log_count(r" (ERROR|WARNING) ")
        finally:
            server.stop()
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["baseline"]:
        baseline_worker()
    else:
        print(json.dumps(run(float(sys.argv[1]) if len(sys.argv) > 1 else SECONDS), indent=2))
