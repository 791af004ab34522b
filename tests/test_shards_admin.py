"""Cluster-wide admin: `eventq queues` and `eventq clients` list every shard's queues.

Two real `eventq serve` processes with different shard names share one database; the
CLI finds them in the shard list and asks each, without being told where they are.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from models.database import Database
from tests.helpers.api import ApiClient
from tests.helpers.cli import run_eventq
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.server import LiveServer, live_server


@pytest.fixture
def realm(db: Database) -> SampleRealm:
    return make_sample_realm(db)


@pytest.fixture
def two_shards(database_url: str, realm: SampleRealm) -> Iterator[tuple[LiveServer, LiveServer]]:
    with (
        live_server(database_url, env={"EVENTQ_SHARD": "alpha"}) as alpha,
        live_server(database_url, env={"EVENTQ_SHARD": "beta"}) as beta,
    ):
        yield alpha, beta


def test_queues_and_clients_list_every_shard(
    two_shards: tuple[LiveServer, LiveServer], realm: SampleRealm, database_url: str
) -> None:
    alpha, beta = two_shards
    registered = {}
    for server in (alpha, beta):
        api = ApiClient(server.url, realm.emails["member"], realm.api_keys["member"])
        queue_id = api.register()["queue_id"]
        registered[queue_id] = queue_id.partition(".")[0]
    assert sorted(registered.values()) == ["alpha", "beta"]

    queues = run_eventq(database_url, "queues", "zulip", "--json")
    assert queues.returncode == 0, queues.stderr
    listed = {q["queue_id"]: q["shard"] for q in queues.json()}
    assert listed == registered

    table = run_eventq(database_url, "queues", "zulip")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["REALM", "SHARD", "QUEUE"]

    clients = run_eventq(database_url, "clients", "zulip", "--json")
    assert clients.returncode == 0, clients.stderr
    assert sorted((c["shard"], c["queues"]) for c in clients.json()) == [
        ("alpha", 1),
        ("beta", 1),
    ]

    # One server, when asked for: only its own queues.
    only = run_eventq(database_url, "queues", "zulip", "--server", beta.url, "--json")
    assert {q["shard"] for q in only.json()} == {"beta"}


def test_a_shard_that_stopped_is_reported_and_skipped(
    two_shards: tuple[LiveServer, LiveServer], realm: SampleRealm, database_url: str
) -> None:
    alpha, beta = two_shards
    api = ApiClient(alpha.url, realm.emails["member"], realm.api_keys["member"])
    queue_id = api.register()["queue_id"]
    beta.kill()  # still in the shard list: it was seen within the minute
    queues = run_eventq(database_url, "queues", "zulip", "--json")
    assert queues.returncode == 0, queues.stderr
    assert [q["queue_id"] for q in queues.json()] == [queue_id]
    assert f"cannot reach the server at {beta.url}" in queues.stderr
