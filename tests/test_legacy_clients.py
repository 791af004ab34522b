"""The roll-out of deactivation peer events: legacy clients get the realm_user update
alone, everyone else the full sequence, and `eventq clients` shows who gets which."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from clients.state import StateCache
from models.database import Database
from tests.helpers.api import ApiClient
from tests.helpers.cli import run_eventq
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.server import LiveServer, live_server
from tests.test_server import poll_until

LEGACY_SETTING = "ZulipMobile<27.1"
# (User-Agent, declares the capability, expected sequence)
CLIENTS = [
    ("ZulipMobile/26.0 (Android 10)", False, "legacy"),
    ("ZulipMobile/26.0 (Android 10)", True, "full"),
    ("ZulipMobile/27.1 (iOS 17)", False, "full"),
    ("ZulipPython/0.9.1", False, "full"),
]


@pytest.fixture
def realm(db: Database) -> SampleRealm:
    return make_sample_realm(db)


@pytest.fixture
def server(database_url: str, realm: SampleRealm) -> Iterator[LiveServer]:
    with live_server(database_url, env={"EVENTQ_LEGACY_CLIENTS": LEGACY_SETTING}) as running:
        yield running


def test_legacy_and_full_sequences_both_converge(
    server: LiveServer, realm: SampleRealm, database_url: str
) -> None:
    registered = []
    for agent, capable, sequence in CLIENTS:
        api = ApiClient(server.url, realm.emails["admin"], realm.api_keys["admin"], agent)
        capabilities = {"deactivation_peer_events": True} if capable else {}
        state = api.register(include_subscribers=True, client_capabilities=capabilities)
        registered.append((api, state, sequence))

    listing = run_eventq(database_url, "clients", "zulip", "--server", server.url, "--json")
    assert listing.returncode == 0, listing.stderr
    assert sorted(
        (c["client_name"], c["client_version"], c["sequence"], c["queues"]) for c in listing.json()
    ) == [
        ("ZulipMobile", "26.0", "full", 1),
        ("ZulipMobile", "26.0", "legacy", 1),
        ("ZulipMobile", "27.1", "full", 1),
        ("ZulipPython", "0.9.1", "full", 1),
    ]
    queues = run_eventq(database_url, "queues", "zulip", "--server", server.url, "--json")
    assert queues.returncode == 0, queues.stderr
    assert {q["queue_id"] for q in queues.json()} == {s["queue_id"] for _, s, _ in registered}

    member = realm.users["member"]
    result = run_eventq(database_url, "deactivate-user", "zulip", realm.emails["member"])
    assert result.returncode == 0, result.stderr
    for api, state, sequence in registered:
        events, _ = poll_until(
            api,
            state["queue_id"],
            -1,
            lambda ev: any(e["type"] == "realm_user" for e in ev),
        )
        kinds = [(e["type"], e["op"]) for e in events]
        if sequence == "legacy":
            assert kinds == [("realm_user", "update")]
        else:
            assert kinds[-1] == ("realm_user", "update") and len(kinds) > 1
            assert set(kinds[:-1]) == {("subscription", "peer_remove")}
        cache = StateCache.from_register(
            state,
            realm.users["admin"],
            removes_deactivated_users=sequence == "legacy",
            include_subscribers=True,
        )
        cache.apply_all(events)
        fresh = api.register(include_subscribers=True)
        assert cache.to_register_shape() == {k: fresh[k] for k in cache.to_register_shape()}
        assert all(member not in cache.members_of(s) for s in realm.streams.values())
