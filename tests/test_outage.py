"""PostgreSQL restarted under a running server: parked polls keep getting heartbeats,
actions fail cleanly and write nothing, and once the database is back the server
reconnects by itself and delivers every committed event.

The PostgreSQL that goes down is a private cluster this test creates and removes
(tests/helpers/pg_cluster.py), never the machine's own server, which other tests and
people use meanwhile: the test checks that the latter's postmaster is the same process
before and after.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import tests.helpers.databases
import tests.helpers.pg_cluster
from actions.streams import do_create_stream
from migrations import upgrade
from models.database import Database
from models.outbox import outbox_count
from tests.helpers.api import ApiClient
from tests.helpers.cli import run_eventq
from tests.helpers.databases import postmaster_identity
from tests.helpers.pg_cluster import PrivateCluster, find_bindir, private_cluster, wait_for_exit
from tests.helpers.realms import make_sample_realm
from tests.helpers.server import live_server

# Generous bounds on conditions that hold within a second or two when all is well.
PARKED_TIMEOUT_SECS = 30.0
HEARTBEAT_TIMEOUT_SECS = 30.0
RECONNECT_TIMEOUT_SECS = 60.0


def test_postgres_restart_under_a_running_server() -> None:
    # None when no shared test PostgreSQL answers: then there is nothing to protect.
    machine_before = postmaster_identity()
    with private_cluster() as cluster:
        upgrade(cluster.url)
        restart_under_a_running_server(cluster)
        postmaster = cluster.postmaster_pid()
        assert postmaster is not None, "the private cluster runs again after the outage"
    assert not cluster.root.exists(), "the private cluster's folder is removed"
    assert wait_for_exit(postmaster, 0), "the private cluster's server is stopped"
    if machine_before is not None:
        assert postmaster_identity() == machine_before, "the machine's PostgreSQL was restarted"


def await_parked(admin: ApiClient, queue_id: str) -> None:
    """Wait until the server holds a poll on the queue (the admin listing says).

    Nothing announces it, so this asks again until it holds or the deadline passes; each
    question is a request that ends by itself.
    """
    deadline = time.monotonic() + PARKED_TIMEOUT_SECS
    while True:
        queues = admin.ok("GET", "/eventq/queues")["queues"]
        if any(q["queue_id"] == queue_id and q["waiting"] for q in queues):
            return
        assert time.monotonic() < deadline, f"no poll parked on {queue_id}: {queues}"


def restart_under_a_running_server(cluster: PrivateCluster) -> None:
    db = Database(cluster.url)
    try:
        outage_with(cluster, db)
    finally:
        db.dispose()  # before the cluster is removed, on failure too


def outage_with(cluster: PrivateCluster, db: Database) -> None:
    realm = make_sample_realm(db)
    # A 1 s heartbeat, so a parked poll answers during the outage. Rate limits off: the
    # waits below ask again as fast as answers come, and the limits are not under test.
    env = {"EVENTQ_HEARTBEAT_SECS": "1", "EVENTQ_RATE_LIMITING": "off"}
    with live_server(cluster.url, env=env) as server:
        api = ApiClient(server.url, realm.emails["owner"], realm.api_keys["owner"])
        queue_id = api.register(event_types=["stream"])["queue_id"]
        with db.snapshot() as session:
            before = outbox_count(session, realm.realm_id)
        # Its own connection: requests' sessions are not meant to be shared by threads.
        poller = ApiClient(server.url, realm.emails["owner"], realm.api_keys["owner"])
        with ThreadPoolExecutor(1) as pool:
            parked = pool.submit(poller.poll, queue_id, -1)
            # Stopping the database while the poll is still being authenticated would
            # answer it 503: the outage must find it parked.
            await_parked(api, queue_id)
            cluster.stop()
            try:
                beat = parked.result(timeout=HEARTBEAT_TIMEOUT_SECS)
                assert beat.ok and beat.body["events"] == [{"type": "heartbeat", "id": -1}]
                failed = run_eventq(cluster.url, "create-stream", "zulip", "during outage")
                assert failed.returncode == 1 and "Traceback" not in failed.stderr
                assert failed.stderr.startswith("eventq: error: database"), failed.stderr
                refused = api.call(
                    "POST",
                    "/users/me/subscriptions",
                    {"subscriptions": [{"name": "during outage"}]},
                )
                assert refused.status == 503 and refused.body["result"] == "error"
            finally:
                cluster.start()
        db.dispose()  # its pooled connections died with the server
        with db.snapshot() as session:
            assert outbox_count(session, realm.realm_id) == before, "the outage wrote nothing"
        with db.write() as session:
            do_create_stream(session, realm.realm_id, "after outage")
        # The server reconnects by itself: polls succeed again and deliver the event. Each
        # poll is an attempt that ends by itself (an answer, at worst the 1 s heartbeat);
        # the deadline, not a count of attempts, bounds how long reconnecting may take.
        received: list[dict[str, Any]] = []
        refusals = 0
        deadline = time.monotonic() + RECONNECT_TIMEOUT_SECS
        while not received:
            assert time.monotonic() < deadline, (
                f"no event {RECONNECT_TIMEOUT_SECS}s after the restart ({refusals} 503s)\n"
                + "\n".join(server.lines[-30:])
            )
            answer = api.poll(queue_id, -1)
            if answer.status == 503:
                refusals += 1
                continue  # its pool is reconnecting; the client retries, as Zulip's do
            assert answer.ok, answer.body
            received = [e for e in answer.body["events"] if e["type"] == "stream"]
        assert [e["streams"][0]["name"] for e in received] == ["after outage"]


# -- the private cluster's lookups ------------------------------------------------------------


def fake_bindir(parent: Path, version: str, programs: tuple[str, ...]) -> Path:
    bindir = parent / version / "bin"
    bindir.mkdir(parents=True)
    for name in programs:
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    return bindir


def test_the_newest_complete_server_install_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_bindir(tmp_path, "9.6", ("initdb", "pg_ctl", "postgres"))
    newest = fake_bindir(tmp_path, "15", ("initdb", "pg_ctl", "postgres"))
    fake_bindir(tmp_path, "12", ("initdb", "pg_ctl", "postgres"))
    fake_bindir(tmp_path, "17", ("pg_ctl",))  # a client-only install: no server
    monkeypatch.setattr(tests.helpers.pg_cluster, "DEBIAN_VERSIONS", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no pg_config, no initdb
    assert find_bindir() == newest


@pytest.mark.parametrize("in_ci", [True, False])
def test_missing_server_programs_fail_ci_and_skip_elsewhere(
    in_ci: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tests.helpers.pg_cluster, "DEBIAN_VERSIONS", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(tests.helpers.databases, "IN_CI", in_ci)
    expected = pytest.fail.Exception if in_ci else pytest.skip.Exception
    with pytest.raises(expected, match="initdb"), private_cluster():
        raise AssertionError("a cluster started without the server programs")
