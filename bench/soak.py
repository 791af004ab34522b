"""A soak (not part of the default run): `python -m bench --only soak --minutes N`.

10,000 queues (100 users, 100 queues each) long-poll on PostgreSQL, each client on its
own keep-alive connection and re-polling at once, for N minutes (default 10), while a
writer process commits a steady stream of actions at fixed times, whatever the server
does:

* every FANOUT_INTERVAL_SECS a public channel creation, which all 10,000 queues get;
* every SMALL_INTERVAL_SECS a private channel creation, which only the administrator's
  100 queues get (many small events: the per-event paths run all the time too).

Heartbeats come at Zulip's 45-55 s. The outbox's minimum age is set to 60 s, so the
server's own sweep (every minute) bounds the outbox within the run. Reported: the
server's RSS after the warm-up (a fifth of the run, 10 to 60 s) and at the end (growth
in %), and per minute the RSS, the outbox's event and recipient rows, the actions and
deliveries, and the commit-to-answer latency (median and p99) of the minute's actions.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from array import array
from typing import Any

from sqlalchemy import text

from bench.support import (
    PollFleet,
    ServerProcess,
    Writer,
    basic_auth,
    build_request,
    cpu_secs,
    create_realm_with_users,
    fresh_database,
    percentile_ms,
    register_queues,
    wait_until,
    waiting_polls,
)
from models.database import Database

USERS = 100
QUEUES_PER_USER = 100
FANOUT_INTERVAL_SECS = 30.0
SMALL_INTERVAL_SECS = 2.0
OUTBOX_MIN_AGE_SECS = 60
PARK_TIMEOUT_SECS = 240.0
# After the last action, wait this long for its answers before counting.
TAIL_SECS = 20.0
EVENT_TYPES = ["stream", "realm_user", "subscription"]


def _outbox_rows(db: Database) -> tuple[int, int]:
    with db.snapshot() as session:
        events = session.execute(text("SELECT count(*) FROM outbox_event")).scalar_one()
        recipients = session.execute(text("SELECT count(*) FROM outbox_recipient")).scalar_one()
    return int(events), int(recipients)


async def _soak(
    server: ServerProcess,
    db: Database,
    writer: Writer,
    credentials: list[tuple[int, str, str]],
    minutes: float,
) -> dict[str, Any]:
    port = server.port
    auths = [basic_auth(email, key) for _, email, key in credentials]
    owners = [auths[i % USERS] for i in range(USERS * QUEUES_PER_USER)]
    queue_ids = await register_queues(
        port, owners, {"event_types": EVENT_TYPES, "fetch_event_types": []}
    )
    prefixes = [f"/api/v1/events?queue_id={q}&last_event_id=" for q in queue_ids]
    fleet = PollFleet(
        port,
        len(queue_ids),
        lambda i, last: build_request("GET", f"{prefixes[i]}{last}", owners[i]),
    )
    answers: dict[str, array[float]] = {}

    def on_event(_index: int, event: dict[str, Any], at: float) -> None:
        if event["type"] == "stream":
            answers.setdefault(event["streams"][0]["name"], array("d")).append(at)

    fleet.on_event = on_event
    await fleet.start()
    loop = asyncio.get_running_loop()
    try:
        parked = await wait_until(
            lambda: waiting_polls(port, auths[0]), len(queue_ids), PARK_TIMEOUT_SECS, 1.0
        )
        if parked < len(queue_ids):
            raise RuntimeError(f"only {parked} of {len(queue_ids)} polls parked")
        total_secs = 60.0 * minutes
        warmup_secs = max(10.0, min(60.0, 0.2 * total_secs))
        commits: list[tuple[str, float, bool]] = []  # (channel name, committed at, private)
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        wall_started = time.time()
        next_fanout = next_small = started
        next_sample = started + min(60.0, total_secs)
        rss_warm: int | None = None

        cpu = [cpu_secs(server.pid), time.process_time(), started]

        async def sample(now: float) -> None:
            events, recipients = await loop.run_in_executor(None, _outbox_rows, db)
            server_cpu, client_cpu = cpu_secs(server.pid), time.process_time()
            elapsed = now - cpu[2]
            samples.append(
                {
                    "minute": round((now - started) / 60.0, 2),
                    "server_cpu_pct": 100 * (server_cpu - cpu[0]) / elapsed,
                    "client_cpu_pct": 100 * (client_cpu - cpu[1]) / elapsed,
                    "load_average": os.getloadavg()[0],
                    "rss_mb": server.rss_kb() / 1024,
                    "outbox_events": events,
                    "outbox_recipients": recipients,
                }
            )
            cpu[:] = [server_cpu, client_cpu, now]

        while True:
            now = time.monotonic()
            if rss_warm is None and now - started >= warmup_secs:
                rss_warm = server.rss_kb()
            if now >= next_sample:
                await sample(now)
                next_sample += 60.0
            if now - started >= total_secs:
                break
            for private in (False, True):
                due = next_small if private else next_fanout
                if now >= due:
                    _, committed = await writer.commit(private)
                    commits.append(
                        (f"bench {writer.process.pid}-{len(commits)}", committed, private)
                    )
                    if private:
                        next_small += SMALL_INTERVAL_SECS
                    else:
                        next_fanout += FANOUT_INTERVAL_SECS
            wake = min(next_fanout, next_small, next_sample, started + total_secs)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))
        if not samples or samples[-1]["minute"] < minutes - 0.01:
            await sample(time.monotonic())
        rss_end = server.rss_kb()
        await asyncio.sleep(TAIL_SECS)  # the last actions' answers, for the latencies
    finally:
        await fleet.stop()
    # Delivery latency per minute of the run, by the minute each action committed in.
    per_minute: dict[int, list[float]] = {}
    per_minute_small: dict[int, list[float]] = {}
    actions: dict[int, int] = {}
    expected = delivered = 0
    slowest: list[dict[str, Any]] = []
    for name, committed, private in commits:
        got = answers.get(name, array("d"))
        if got:
            slowest.append(
                {
                    "at_secs": round(committed - wall_started, 1),
                    "private": private,
                    "answers": len(got),
                    "first_ms": round(1000 * (min(got) - committed)),
                    "last_ms": round(1000 * (max(got) - committed)),
                }
            )
    slowest.sort(key=lambda e: -e["last_ms"])
    for name, committed, private in commits:
        minute = int((committed - wall_started) // 60)
        actions[minute] = actions.get(minute, 0) + 1
        got = answers.get(name, array("d"))
        expected += QUEUES_PER_USER if private else len(queue_ids)
        delivered += len(got)
        (per_minute_small if private else per_minute).setdefault(minute, []).extend(
            at - committed for at in got
        )
    for minute, row in enumerate(samples):
        fanout = per_minute.get(minute, [])
        small = per_minute_small.get(minute, [])
        row["actions"] = actions.get(minute, 0)
        row["deliveries"] = len(fanout) + len(small)
        row["fanout_p50_ms"] = percentile_ms(fanout, 0.5)
        row["fanout_p99_ms"] = percentile_ms(fanout, 0.99)
        row["small_p99_ms"] = percentile_ms(small, 0.99)
    warm = rss_warm or rss_end
    return {
        "queues": len(queue_ids),
        "minutes": minutes,
        "fanout_interval_secs": FANOUT_INTERVAL_SECS,
        "small_interval_secs": SMALL_INTERVAL_SECS,
        "actions": len(commits),
        "delivered": delivered,
        "expected_deliveries": expected,
        "rss_after_warmup_mb": warm / 1024,
        "rss_end_mb": rss_end / 1024,
        "rss_growth_pct": 100.0 * (rss_end - warm) / warm,
        "warmup_secs": warmup_secs,
        "heartbeats": fleet.heartbeats,
        "refused_429": fleet.refused_429,
        "reconnects": fleet.reconnects,
        "client_errors": len(fleet.errors),
        "per_minute": samples,
        "slowest_events": slowest[:5],
    }


def run(minutes: float = 10.0) -> dict[str, Any]:
    with fresh_database("postgresql") as url:
        db = Database(url)
        realm_id, credentials = create_realm_with_users(db, "soak", USERS)
        server = ServerProcess(url, {"EVENTQ_OUTBOX_MIN_AGE_SECS": str(OUTBOX_MIN_AGE_SECS)})
        writer = Writer(url, realm_id)
        try:
            figures = asyncio.run(_soak(server, db, writer, credentials, minutes))
            figures["server_errors"] = server.log_count(r" (ERROR|WARNING) ")
            return figures
        finally:
            writer.close()
            server.stop()
            db.dispose()


if __name__ == "__main__":
    json.dump(run(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0), sys.stdout, indent=2)
    print()
