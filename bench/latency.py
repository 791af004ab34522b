"""Delivery latency: an action committed by another process to the answer of a parked
long-poll, beside the baseline of a plain request round trip to the same server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

from actions.realms import do_create_realm
from actions.users import do_create_user
from bench.support import (
    ServerProcess,
    basic_auth,
    fresh_database,
    http_request,
    median_ms,
    p95_ms,
)
from models.database import Database
from models.tables import Role

SAMPLES = 60
# Time for the poll to reach the server and park before the commit; benchmarks may
# wait, tests may not.
PARK_DELAY_SECS = 0.02


async def _measure(port: int, auth: str, writer: subprocess.Popen[str]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    _, registered = await http_request(
        port, "POST", "/api/v1/register", auth, {"event_types": ["stream"], "fetch_event_types": []}
    )
    queue_id, last = registered["queue_id"], -1
    latencies: list[float] = []
    for _ in range(SAMPLES):
        poll = asyncio.create_task(
            http_request(
                port, "GET", "/api/v1/events", auth, {"queue_id": queue_id, "last_event_id": last}
            )
        )
        await asyncio.sleep(PARK_DELAY_SECS)
        assert writer.stdin is not None and writer.stdout is not None
        writer.stdin.write("go\n")
        writer.stdin.flush()
        committed = float((await loop.run_in_executor(None, writer.stdout.readline)).split()[1])
        _, body = await poll
        latencies.append(time.time() - committed)
        last = max(event["id"] for event in body["events"])
    baseline: list[float] = []
    for _ in range(SAMPLES):
        started = time.time()
        await http_request(port, "GET", "/api/v1/server_settings", auth)
        baseline.append(time.time() - started)
    return {
        "median_ms": median_ms(latencies),
        "p95_ms": p95_ms(latencies),
        "baseline_round_trip_ms": median_ms(baseline),
    }


def run(backend: str) -> dict[str, Any]:
    """Median and 95th percentile commit-to-answer delay on `backend`."""
    with fresh_database(backend) as url:
        db = Database(url)
        with db.write() as session:
            realm_id = do_create_realm(session, "latency").id
        with db.write() as session:
            owner = do_create_user(session, realm_id, "owner@latency.example.com", role=Role.OWNER)
        db.dispose()
        server = ServerProcess(url)
        writer = subprocess.Popen(
            [sys.executable, "-m", "bench.writer", url, str(realm_id)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            return asyncio.run(
                _measure(server.port, basic_auth(owner.email, owner.api_key), writer)
            )
        finally:
            assert writer.stdin is not None
            writer.stdin.close()
            writer.wait(30)
            server.stop()
