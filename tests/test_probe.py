"""`eventq probe` against real servers, and `/readyz` through a database outage.

The probe exits 0 against a healthy server (on SQLite and PostgreSQL), 1 past its
warning time, 2 against a server that does not answer (SIGSTOP: its consumer and
everything else frozen) or whose database is down, 3 for an unknown realm; its probe
event reaches the probe bot alone. The outage runs on a private PostgreSQL cluster
(tests/helpers/pg_cluster.py), never the machine's own server: `/readyz` turns 503
while the database is down and 200 once it is back, while `/healthz` stays 200.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests

from migrations import upgrade
from models.database import Database
from models.outbox import read_events
from models.queries import get_user_by_email
from server.ops.probe import CRITICAL, PROBE_EVENT_TYPE, UNKNOWN, WARNING, bot_email, run_probe
from tests.helpers.cli import CliResult, run_eventq
from tests.helpers.databases import postmaster_identity
from tests.helpers.openapi import validate_response
from tests.helpers.pg_cluster import free_port, private_cluster
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.server import LiveServer, live_server
from tests.helpers.sqlite_realm import sqlite_sample_realm

OK_LINE = re.compile(r"EVENTQ OK - (\d+\.\d) ms \| delivery=\1ms;1000;5000;0")
# Readiness follows the database within a second (figures are reused for one); this
# bounds a failure, not a wait.
READY_TIMEOUT_SECS = 20.0
REQUEST_TIMEOUT_SECS = 10.0


def probe(database_url: str, server_url: str, *options: str) -> CliResult:
    return run_eventq(database_url, "probe", "zulip", "--server", server_url, *options)


@pytest.fixture
def sqlite_realm(tmp_path: Path) -> Iterator[tuple[str, SampleRealm]]:
    with sqlite_sample_realm(tmp_path) as pair:
        yield pair


def test_probe_is_ok_against_a_healthy_server(
    server: LiveServer, database_url: str, db: Database, realm: SampleRealm
) -> None:
    first = probe(database_url, server.url)
    assert first.returncode == 0, first.stdout + first.stderr
    assert OK_LINE.fullmatch(first.stdout.strip()), first.stdout

    second = probe(database_url, server.url, "--json")
    assert second.returncode == 0, second.stdout + second.stderr
    verdict = second.json()
    assert verdict["status"] == "OK" and verdict["exit_status"] == 0
    assert 0 < verdict["delivery_ms"] < verdict["warn_ms"] == 1000

    with db.snapshot() as session:
        bot = get_user_by_email(session, realm.realm_id, bot_email("zulip"))
        assert bot is not None and bot.is_bot and bot.is_active
        probes = [
            row
            for row in read_events(session, realm.realm_id, 0)
            if row.event["type"] == PROBE_EVENT_TYPE
        ]
        joined = [
            row
            for row in read_events(session, realm.realm_id, 0)
            if row.event["type"] == "realm_user" and row.event["person"]["user_id"] == bot.id
        ]
    # One probe event per run, for the bot alone; the bot was created once.
    assert [row.user_ids for row in probes] == [(bot.id,), (bot.id,)]
    assert len(joined) == 1

    # In this process (the command's exit status is its verdict's, as above).
    slow = run_probe(db, "zulip", server.url, warn_ms=0.001, crit_ms=5000)
    assert slow.status == WARNING, slow.line()
    assert slow.line().startswith("EVENTQ WARNING - ")
    assert re.search(r"\| delivery=\d+\.\dms;0\.001;5000;0$", slow.line())


def test_probe_is_critical_when_the_server_does_not_answer(
    sqlite_realm: tuple[str, SampleRealm],
) -> None:
    database_url, _ = sqlite_realm
    with live_server(database_url) as server:
        assert server.process is not None
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            frozen = probe(database_url, server.url, "--warn", "200", "--crit", "1000")
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert frozen.returncode == 2, frozen.stdout + frozen.stderr
        assert frozen.stdout.startswith("EVENTQ CRITICAL - "), frozen.stdout
        assert "|" not in frozen.stdout  # no delivery time was measured
        thawed = probe(database_url, server.url)
        assert thawed.returncode == 0, thawed.stdout + thawed.stderr


def test_probe_verdicts_without_a_server(sqlite_realm: tuple[str, SampleRealm]) -> None:
    db = Database(sqlite_realm[0])
    try:
        nobody = run_probe(db, "zulip", f"http://127.0.0.1:{free_port()}")
        assert nobody.status == CRITICAL
        assert nobody.line().startswith("EVENTQ CRITICAL - cannot reach the server at ")
        unknown = run_probe(db, "no-such-realm", "http://127.0.0.1:1")
        assert unknown.status == UNKNOWN
        assert unknown.line() == "EVENTQ UNKNOWN - no realm with subdomain 'no-such-realm'"
        backwards = run_probe(db, "zulip", "http://127.0.0.1:1", warn_ms=10, crit_ms=5)
        assert backwards.status == UNKNOWN
    finally:
        db.dispose()


def readiness(server: LiveServer) -> tuple[int, dict[str, Any]]:
    response = requests.get(server.url + "/readyz", timeout=REQUEST_TIMEOUT_SECS)
    body = response.json()
    validate_response("GET", "/readyz", response.status_code, body)
    return response.status_code, body


def await_readiness(server: LiveServer, status: int) -> dict[str, Any]:
    """The first /readyz answer with `status`; nothing announces the change, so this
    asks again (each request ends by itself) until it comes or the deadline passes."""
    deadline = time.monotonic() + READY_TIMEOUT_SECS
    while True:
        answered, body = readiness(server)
        if answered == status:
            return body
        assert time.monotonic() < deadline, f"/readyz still {answered}: {json.dumps(body)}"


@pytest.mark.timeout(300)
def test_readiness_and_probe_follow_a_database_outage() -> None:
    machine_before = postmaster_identity()
    with private_cluster() as cluster:
        upgrade(cluster.url)
        db = Database(cluster.url)
        try:
            make_sample_realm(db)
        finally:
            db.dispose()
        with live_server(cluster.url) as server:
            assert readiness(server)[0] == 200
            assert probe(cluster.url, server.url).returncode == 0

            cluster.stop()
            down = await_readiness(server, 503)
            assert down["ready"] is False and down["code"] == "BAD_REQUEST"
            assert down["checks"]["database"]["ok"] is False
            assert down["msg"].startswith("Not ready: the database is unreachable")
            # The driver's reason (host, port, role) goes to the log, never on the wire.
            port = str(urlsplit(cluster.url).port)
            answer = json.dumps(down)
            assert port not in answer and "127.0.0.1" not in answer and "postgres" not in answer
            reason = server.wait_for_log("the database cannot be read: ", READY_TIMEOUT_SECS)
            assert port in reason
            # Alive all the same: a liveness probe must not restart it for this.
            assert requests.get(server.url + "/healthz", timeout=REQUEST_TIMEOUT_SECS).ok
            metrics = requests.get(server.url + "/metrics", timeout=REQUEST_TIMEOUT_SECS)
            assert "eventq_database_up 0.0" in metrics.text
            failed = probe(cluster.url, server.url, "--crit", "2000")
            assert failed.returncode == 2, failed.stdout + failed.stderr
            assert failed.stdout.startswith("EVENTQ CRITICAL - database: "), failed.stdout

            cluster.start()
            up = await_readiness(server, 200)
            assert up["checks"]["database"] == {"ok": True}
            assert up["checks"]["consumer"]["ok"] is True
            recovered = probe(cluster.url, server.url)
            assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    if machine_before is not None:
        assert postmaster_identity() == machine_before, "the machine's PostgreSQL was restarted"
