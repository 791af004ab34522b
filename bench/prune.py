"""Pruning 1,000,000 outbox_recipient rows on PostgreSQL while a server is polled.

The history is built with SQL: 5,000 events two days old, each addressed to all 200
users of the realm (`generate_series`), and the realm's `last_event_seq` set to match.
A server runs with 200 queues (one per user), registered after the history so that
no checkpoint holds it back, and its own sweep kept off the history (a minimum age of
ten days), while:

* 100 clients poll with `dont_block=true` in a loop (a pause of 0.25-0.75 s between
  polls): the round trip of each poll is its latency;
* 100 clients long-poll, and a writer process commits a channel creation (which every
  user receives) every 0.5 s: the delay from each commit to each answer is a delivery
  latency, and the writer's own wait (action start to commit) is reported too.

After a baseline window, `eventq prune-outbox --older-than 0 --json` runs; it prints
`{"events": N, "recipients": M, "seconds": T}`. The figures are its rows per second
and the latencies answered during the prune, beside the same latencies in the window
before it. Rate limiting is off on this server: the `dont_block` loop is load, not
abuse.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

from sqlalchemy import text

from bench.support import (
    EVENTQ,
    PollFleet,
    ServerProcess,
    Writer,
    basic_auth,
    build_request,
    create_realm_with_users,
    fresh_database,
    percentile_ms,
    register_queues,
)
from models.database import Database

USERS = 200
HISTORY_EVENTS = 5000  # x 200 recipients = 1,000,000 outbox_recipient rows
HISTORY_AGE = "2 days"
DONT_BLOCK_CLIENTS = 100
DONT_BLOCK_PAUSE_SECS = 0.5  # mean pause between one client's polls
WRITER_INTERVAL_SECS = 0.5
WARMUP_SECS = 3.0
BASELINE_SECS = 10.0
AFTER_SECS = 2.0
PRUNE_TIMEOUT_SECS = 900.0
EVENT_TYPES = ["stream", "realm_user", "subscription"]


def _build_history(db: Database, realm_id: int) -> int:
    """HISTORY_EVENTS old events to every user; returns the recipient rows written."""
    with db.write() as session:
        base = session.execute(
            text("SELECT last_event_seq FROM realm WHERE id = :realm FOR UPDATE"),
            {"realm": realm_id},
        ).scalar_one()
        user_ids = list(
            session.execute(
                text("SELECT id FROM user_profile WHERE realm_id = :realm ORDER BY id"),
                {"realm": realm_id},
            ).scalars()
        )
        session.execute(
            text(
                "INSERT INTO outbox_event "
                "(realm_id, seq, event, user_ids, legacy_skip, cut_off_user_id, created_at) "
                "SELECT :realm, :base + s, "
                '\'{"type":"realm_user","op":"update","person":{"user_id":\' '
                "|| CAST(:first_user + s % :users AS text) "
                "|| ',\"full_name\":\"History ' || CAST(s AS text) || '\"}}', "
                ":user_ids, false, NULL, "
                f"now() - interval '{HISTORY_AGE}' + s * interval '1 millisecond' "
                "FROM generate_series(1, :events) AS s"
            ),
            {
                "realm": realm_id,
                "base": base,
                "first_user": user_ids[0],
                "users": len(user_ids),
                "user_ids": json.dumps(user_ids, separators=(",", ":")),
                "events": HISTORY_EVENTS,
            },
        )
        recipients = session.execute(
            text(
                "INSERT INTO outbox_recipient (realm_id, user_id, seq) "
                "SELECT :realm, u.id, :base + s FROM generate_series(1, :events) AS s "
                "CROSS JOIN (SELECT id FROM user_profile WHERE realm_id = :realm) AS u"
            ),
            {"realm": realm_id, "base": base, "events": HISTORY_EVENTS},
        ).rowcount  # type: ignore[attr-defined]
        session.execute(
            text("UPDATE realm SET last_event_seq = :seq WHERE id = :realm"),
            {"realm": realm_id, "seq": base + HISTORY_EVENTS},
        )
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("ANALYZE outbox_event, outbox_recipient")
        )
    return int(recipients)


def _recipient_rows(db: Database) -> int:
    with db.snapshot() as session:
        return int(session.execute(text("SELECT count(*) FROM outbox_recipient")).scalar_one())


async def _prune(url: str) -> tuple[dict[str, Any], float, float, str]:
    """Run the operator command; returns its JSON, wall start/end, and its stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTQ_")}
    started = time.time()
    process = await asyncio.create_subprocess_exec(
        EVENTQ,
        "--database-url",
        url,
        "prune-outbox",
        "--older-than",
        "0",
        "--json",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        async with asyncio.timeout(PRUNE_TIMEOUT_SECS):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    ended = time.time()
    if process.returncode != 0:
        return {}, started, ended, err.decode(errors="replace").strip()
    return json.loads(out), started, ended, ""


def _window(samples: list[tuple[float, float]], start: float, end: float) -> list[float]:
    return [value for at, value in samples if start <= at <= end]


async def _measure(url: str, port: int, writer: Writer, auths: list[str]) -> dict[str, Any]:
    queue_ids = await register_queues(
        port, auths, {"event_types": EVENT_TYPES, "fetch_event_types": []}
    )
    prefixes = [f"/api/v1/events?queue_id={q}&last_event_id=" for q in queue_ids]
    spinners = [
        f"/api/v1/events?dont_block=true&queue_id={q}&last_event_id="
        for q in queue_ids[:DONT_BLOCK_CLIENTS]
    ]
    waiters = prefixes[DONT_BLOCK_CLIENTS:]
    waiter_auths = auths[DONT_BLOCK_CLIENTS:]
    polling = PollFleet(
        port,
        len(spinners),
        lambda i, last: build_request("GET", f"{spinners[i]}{last}", auths[i]),
        dont_block_pause=DONT_BLOCK_PAUSE_SECS,
        record_poll_times=True,
    )
    answers: list[tuple[str, float]] = []  # (channel name, answered at)
    waiting = PollFleet(
        port,
        len(waiters),
        lambda i, last: build_request("GET", f"{waiters[i]}{last}", waiter_auths[i]),
    )
    waiting.on_event = lambda _i, event, at: answers.append((event["streams"][0]["name"], at))
    commits: dict[str, tuple[float, float]] = {}
    stop_writing = asyncio.Event()

    async def write_loop() -> None:
        index = 0
        while not stop_writing.is_set():
            began = time.monotonic()
            commits[f"bench {writer.process.pid}-{index}"] = await writer.commit()
            index += 1
            await asyncio.sleep(max(0.0, WRITER_INTERVAL_SECS - (time.monotonic() - began)))

    await polling.start()
    await waiting.start()
    writing = asyncio.create_task(write_loop())
    try:
        await asyncio.sleep(WARMUP_SECS)
        baseline_start = time.time()
        await asyncio.sleep(BASELINE_SECS)
        baseline_end = time.time()
        result, prune_start, prune_end, error = await _prune(url)
        await asyncio.sleep(AFTER_SECS)
    finally:
        stop_writing.set()
        await asyncio.gather(writing, return_exceptions=True)
        await polling.stop()
        await waiting.stop()
    deliveries = [
        (at, at - commits[name][1]) for name, at in answers if name in commits
    ]  # keyed by answer time
    waits = [(committed, committed - started) for started, committed in commits.values()]

    def figures(start: float, end: float) -> dict[str, Any]:
        polls = _window(polling.poll_times, start, end)
        delivered = _window(deliveries, start, end)
        commit_waits = _window(waits, start, end)
        return {
            "polls": len(polls),
            "poll_p50_ms": percentile_ms(polls, 0.5),
            "poll_p99_ms": percentile_ms(polls, 0.99),
            "poll_max_ms": percentile_ms(polls, 1.0),
            "deliveries": len(delivered),
            "delivery_p50_ms": percentile_ms(delivered, 0.5),
            "delivery_p99_ms": percentile_ms(delivered, 0.99),
            "action_p99_ms": percentile_ms(commit_waits, 0.99),
        }

    errors = polling.errors + waiting.errors
    return {
        "prune": result,
        "prune_error": error,
        "prune_wall_secs": prune_end - prune_start,
        "before": figures(baseline_start, baseline_end),
        "during": figures(prune_start, prune_end),
        "client_errors": len(errors),
        "first_client_error": errors[0] if errors else "",
        "refused_429": polling.refused_429 + waiting.refused_429,
    }


def run() -> dict[str, Any]:
    with fresh_database("postgresql") as url:
        db = Database(url)
        realm_id, credentials = create_realm_with_users(db, "prune", USERS)
        started = time.monotonic()
        written = _build_history(db, realm_id)
        build_secs = time.monotonic() - started
        server = ServerProcess(
            url,
            {
                "EVENTQ_HEARTBEAT_SECS": "85",
                "EVENTQ_RATE_LIMITING": "off",
                "EVENTQ_OUTBOX_MIN_AGE_SECS": str(10 * 24 * 3600),
            },
        )
        writer = Writer(url, realm_id)
        try:
            auths = [basic_auth(email, key) for _, email, key in credentials]
            figures = asyncio.run(_measure(url, server.port, writer, auths))
            figures["server_errors"] = server.log_count(r" (ERROR|WARNING) ")
        finally:
            writer.close()
            server.stop()
        figures["history_recipients"] = written
        figures["history_build_secs"] = build_secs
        figures["recipients_left"] = _recipient_rows(db)
        db.dispose()
        result = figures["prune"]
        if result.get("seconds"):
            figures["recipients_per_sec"] = result["recipients"] / result["seconds"]
        return figures


if __name__ == "__main__":
    json.dump(run(), sys.stdout, indent=2)
    print()
