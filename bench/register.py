"""Registering queues on PostgreSQL: the sustained rate, and a reconnect storm.

The realm has 100 users and 20 channels (each user subscribed to 5), and every register
asks for every event type and the default initial state (users, channels,
subscriptions), as a client starting up does.

* Rate: 50 clients at a time, each on a keep-alive connection, register 2,000 queues
  (after 100 not counted, to warm the server up). Beside it, the same 50 clients
  sending as many `GET /api/v1/users/me` to the same server: an authenticated request
  that reads the database once, where a register reads a snapshot and writes a
  descriptor. (`server_settings` would be the cheaper baseline, but requests without
  credentials share one per-address rate limit.)
* Storm: 5,000 clients (50 per user) connect and register at once, each on a new
  connection, as after a server restart. A client answered 429 waits the Retry-After
  it was given and tries again; one whose connection fails or times out tries again
  after a short random pause (bounded tries). The figure is the time until every client
  is registered, beside the time the measured rate would take for 5,000 registers.
  429s, 5xx answers, other refusals and connection failures are counted apart.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from collections import Counter
from typing import Any

from sqlalchemy import insert, select

from bench.support import (
    HttpConnection,
    ServerProcess,
    basic_auth,
    build_request,
    create_realm_with_users,
    fresh_database,
    retry_after,
)
from models.database import Database
from models.tables import Stream, Subscription

USERS = 100
CHANNELS = 20
SUBSCRIPTIONS_PER_USER = 5
WARMUP_REGISTERS = 100
REGISTERS = 2000
CONCURRENCY = 50
STORM_CLIENTS = 5000
STORM_MAX_TRIES = 30
STORM_DEADLINE_SECS = 600.0
STORM_REQUEST_TIMEOUT_SECS = 120.0
# A 429's Retry-After is obeyed up to this (a longer one would only slow the bench).
MAX_RETRY_AFTER_SECS = 60.0
REGISTER_PARAMS: dict[str, Any] = {}  # every event type, the default initial state


def _populate(db: Database) -> list[str]:
    """The realm's users and channels; returns every user's Basic auth header."""
    realm_id, credentials = create_realm_with_users(db, "register", USERS)
    with db.write() as session:
        session.execute(
            insert(Stream),
            [{"realm_id": realm_id, "name": f"channel {i}"} for i in range(CHANNELS)],
        )
    with db.snapshot() as session:
        stream_ids = list(session.scalars(select(Stream.id).where(Stream.realm_id == realm_id)))
    rng = random.Random(500)
    with db.write() as session:
        session.execute(
            insert(Subscription),
            [
                {"user_profile_id": user_id, "stream_id": stream_id}
                for user_id, _, _ in credentials
                for stream_id in rng.sample(stream_ids, SUBSCRIPTIONS_PER_USER)
            ],
        )
    return [basic_auth(email, key) for _, email, key in credentials]


async def _closed_loop(port: int, requests: list[bytes]) -> tuple[float, int]:
    """Send `requests` from CONCURRENCY keep-alive clients; returns requests per second
    and how many 429 answers were retried (after their Retry-After)."""
    next_index = 0
    refused = 0

    async def worker() -> None:
        nonlocal next_index, refused
        conn = await HttpConnection.open(port)
        try:
            while next_index < len(requests):
                index = next_index
                next_index += 1
                for _ in range(STORM_MAX_TRIES):
                    answer = await conn.request(requests[index])
                    if answer.status != 429:
                        break
                    refused += 1
                    wait = min(retry_after(answer), MAX_RETRY_AFTER_SECS)
                    await asyncio.sleep(wait * (1 + 0.1 * random.random()))
                if answer.status != 200:
                    raise RuntimeError(f"{answer.status} {answer.body[:200]!r}")
        finally:
            conn.close()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return len(requests) / (time.monotonic() - started), refused


def _register(auth: str) -> bytes:
    return build_request("POST", "/api/v1/register", auth, REGISTER_PARAMS)


async def _rate(port: int, auths: list[str]) -> dict[str, Any]:
    await _closed_loop(port, [_register(auths[i % USERS]) for i in range(WARMUP_REGISTERS)])
    rate, refused = await _closed_loop(
        port, [_register(auths[i % USERS]) for i in range(REGISTERS)]
    )
    baseline, _ = await _closed_loop(
        port, [build_request("GET", "/api/v1/users/me", auths[i % USERS]) for i in range(REGISTERS)]
    )
    return {"registers_per_sec": rate, "rate_429": refused, "own_user_per_sec": baseline}


async def _storm(port: int, auths: list[str]) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    done: list[float] = []
    waits: list[float] = []  # the Retry-After of every 429
    deadline = time.monotonic() + STORM_DEADLINE_SECS
    start = asyncio.Event()

    async def client(auth: str) -> None:
        await start.wait()
        for _ in range(STORM_MAX_TRIES):
            if time.monotonic() > deadline:
                outcomes["gave up (deadline)"] += 1
                return
            pause = 0.5 + random.random()  # after a failed connection: spread the retries
            try:
                conn = await HttpConnection.open(port, timeout=STORM_REQUEST_TIMEOUT_SECS)
                try:
                    answer = await conn.request(_register(auth), timeout=STORM_REQUEST_TIMEOUT_SECS)
                finally:
                    conn.close()
            except TimeoutError:
                outcomes["timeout"] += 1
                await asyncio.sleep(pause)
                continue
            except OSError:
                outcomes["connection failed"] += 1
                await asyncio.sleep(pause)
                continue
            if answer.status == 200:
                outcomes["200"] += 1
                done.append(time.monotonic())
                return
            if answer.status == 429:
                outcomes["429"] += 1
                waits.append(retry_after(answer))
                wait = min(waits[-1], MAX_RETRY_AFTER_SECS)
                # A little jitter, so the shed clients do not all come back together.
                await asyncio.sleep(wait * (1 + 0.1 * random.random()))
                continue
            outcomes["5xx" if answer.status >= 500 else f"{answer.status}"] += 1
            if answer.status >= 500:
                await asyncio.sleep(pause)
                continue
            return  # a refusal the client cannot fix by trying again
        outcomes["gave up (tries)"] += 1

    tasks = [asyncio.create_task(client(auths[i % USERS])) for i in range(STORM_CLIENTS)]
    await asyncio.sleep(0)
    started = time.monotonic()
    start.set()
    await asyncio.gather(*tasks)
    return {
        "clients": STORM_CLIENTS,
        "registered": outcomes["200"],
        "all_registered_secs": (max(done) - started) if done else float("nan"),
        "median_registered_secs": (sorted(done)[len(done) // 2] - started)
        if done
        else float("nan"),
        "answers_5xx": outcomes["5xx"],
        "answers_429": outcomes["429"],
        "connection_failures": outcomes["connection failed"],
        "timeouts": outcomes["timeout"],
        "retry_after_secs": (min(waits), statistics.median(waits), max(waits)) if waits else (),
        "outcomes": dict(outcomes),
    }


def run() -> dict[str, Any]:
    with fresh_database("postgresql") as url:
        db = Database(url)
        auths = _populate(db)
        db.dispose()
        server = ServerProcess(url)
        try:
            rate = asyncio.run(_rate(server.port, auths))
            storm = asyncio.run(_storm(server.port, auths))
            storm["server_errors"] = server.log_count(r" ERROR ")
            return {**rate, "storm": storm}
        finally:
            server.stop()


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
