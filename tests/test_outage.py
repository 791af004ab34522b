"""PostgreSQL restarted under a running server: parked polls keep getting heartbeats,
actions fail cleanly and write nothing, and once the database is back the server
reconnects by itself and delivers every committed event."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from actions.streams import do_create_stream
from migrations import upgrade
from models.database import Database
from models.outbox import outbox_count
from tests.helpers.api import ApiClient
from tests.helpers.cli import run_eventq
from tests.helpers.databases import IN_CI, postgres_schema_url, require_postgres
from tests.helpers.realms import make_sample_realm
from tests.helpers.server import live_server

CLUSTER = ["pg_ctlcluster", "--skip-systemctl-redirect"]


def _cluster(action: str) -> None:
    """Stop or start the local cluster; pg_ctlcluster waits until it is done."""
    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir())
    command = [*CLUSTER, versions[-1], "main", action]
    if action == "stop":
        command += ["-m", "fast"]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    require_postgres()
    if not Path("/etc/postgresql").is_dir():
        if IN_CI:
            pytest.fail("CI=true requires the local PostgreSQL cluster this test restarts")
        pytest.skip("no local PostgreSQL cluster to restart")
    with postgres_schema_url() as url:
        upgrade(url)
        yield url


def test_postgres_restart_under_a_running_server(postgres_url: str) -> None:
    db = Database(postgres_url)
    realm = make_sample_realm(db)
    with live_server(postgres_url, env={"EVENTQ_HEARTBEAT_SECS": "1"}) as server:
        api = ApiClient(server.url, realm.emails["owner"], realm.api_keys["owner"])
        queue_id = api.register(event_types=["stream"])["queue_id"]
        with db.snapshot() as session:
            before = outbox_count(session, realm.realm_id)
        with ThreadPoolExecutor(1) as pool:
            parked = pool.submit(api.poll, queue_id, -1)
            _cluster("stop")
            try:
                beat = parked.result(timeout=30)
                assert beat.ok and beat.body["events"] == [{"type": "heartbeat", "id": -1}]
                failed = run_eventq(postgres_url, "create-stream", "zulip", "during outage")
                assert failed.returncode == 1 and "Traceback" not in failed.stderr
                assert failed.stderr.startswith("eventq: error: database")
                refused = api.call(
                    "POST",
                    "/users/me/subscriptions",
                    {"subscriptions": [{"name": "during outage"}]},
                )
                assert refused.status == 503 and refused.body["result"] == "error"
            finally:
                _cluster("start")
        db.dispose()  # its pooled connections died with the server
        with db.snapshot() as session:
            assert outbox_count(session, realm.realm_id) == before, "the outage wrote nothing"
        with db.write() as session:
            do_create_stream(session, realm.realm_id, "after outage")
        # The server reconnects by itself: the next polls succeed and deliver the event.
        received = []
        for _ in range(60):
            answer = api.poll(queue_id, -1)
            if answer.status == 503:
                continue  # its pool is reconnecting; the client retries, as Zulip's do
            assert answer.ok, answer.body
            received = [e for e in answer.body["events"] if e["type"] == "stream"]
            if received:
                break
        assert [e["streams"][0]["name"] for e in received] == ["after outage"]
    db.dispose()
