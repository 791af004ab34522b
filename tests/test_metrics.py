"""`/metrics`, `/healthz` and `/readyz` of a real `eventq serve`, and its JSON log format.

A known sequence of requests (registers, polls with events, a heartbeat, refused polls,
a deleted queue, a restart that leaves a queue cold) is followed by a scrape whose
counters must say exactly that, with a delivery-lag histogram holding one sample per
event handed out; `promtool check metrics` must accept the scrape. On SQLite and
PostgreSQL. Waits are long-polls answered at once or by a 0.3 s heartbeat, never sleeps.

Without promtool a developer's run skips that one check; under `CI=true` it fails
(`.ci/apt-packages` installs Debian's prometheus package, which ships it).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers.api import ApiClient
from tests.helpers.databases import skip_or_fail
from tests.helpers.openapi import validate_response
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer, live_server
from tests.helpers.sqlite_realm import sqlite_sample_realm

# The server answers an idle poll with a heartbeat this soon, so a test never idles.
HEARTBEAT = {"EVENTQ_HEARTBEAT_SECS": "0.3"}
REQUEST_TIMEOUT_SECS = 10.0
_METRICS_LISTENING = re.compile(r"eventq metrics on http://[\d.]+:(\d+)/metrics")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: LiveServer, base_url: str | None = None) -> tuple[str, Samples]:
    """The text of one scrape and its samples by (name, labels)."""
    response = requests.get((base_url or server.url) + "/metrics", timeout=REQUEST_TIMEOUT_SECS)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain; version="), response.headers
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return response.text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"no sample {name}{labels}"
    return samples[key]


def require_promtool() -> str:
    path = shutil.which("promtool")
    if path is not None:
        return path
    skip_or_fail("promtool", "promtool is missing: install Debian's prometheus package")


@pytest.fixture
def quick_server(database_url: str, realm: SampleRealm) -> Iterator[LiveServer]:
    with live_server(database_url, env=HEARTBEAT) as running:
        yield running


@pytest.fixture
def sqlite_realm(tmp_path: Path) -> Iterator[tuple[str, SampleRealm]]:
    """For what does not depend on the database: run once, on SQLite."""
    with sqlite_sample_realm(tmp_path) as pair:
        yield pair


def test_a_scrape_counts_a_known_sequence_of_requests(
    quick_server: LiveServer, realm: SampleRealm
) -> None:
    server = quick_server
    owner = ApiClient(server.url, realm.emails["owner"], realm.api_keys["owner"])
    member = ApiClient(server.url, realm.emails["member"], realm.api_keys["member"])
    kept = owner.register(event_types=["stream", "subscription"])["queue_id"]
    deleted = member.register(event_types=["stream", "subscription"])["queue_id"]
    refused = owner.call("POST", "/register", {"event_types": "not json"})
    assert refused.status == 400

    # One action: the owner gets `subscription add`, the member `stream create`.
    owner.ok("POST", "/users/me/subscriptions", {"subscriptions": [{"name": "metrics"}]})
    owner_events = owner.poll(kept, -1).body["events"]
    member_events = member.poll(deleted, -1).body["events"]
    handed_out = len(owner_events) + len(member_events)
    assert handed_out >= 2 and all(e["type"] != "heartbeat" for e in owner_events)
    heartbeat = owner.poll(kept, owner_events[-1]["id"]).body["events"]
    assert [event["type"] for event in heartbeat] == ["heartbeat"]

    unknown = owner.poll("no-such-queue", -1)
    assert unknown.status == 400 and unknown.body["code"] == "BAD_EVENT_QUEUE_ID"
    member.ok("DELETE", "/events", {"queue_id": deleted})
    gone = member.poll(deleted, member_events[-1]["id"])
    assert gone.body["code"] == "BAD_EVENT_QUEUE_ID"

    text, samples = scrape(server)
    assert value(samples, "eventq_registers_total", outcome="success") == 2
    assert value(samples, "eventq_registers_total", outcome="BAD_REQUEST") == 1
    assert value(samples, "eventq_polls_total", outcome="events") == 2
    assert value(samples, "eventq_polls_total", outcome="heartbeat") == 1
    assert value(samples, "eventq_polls_total", outcome="BAD_EVENT_QUEUE_ID") == 2
    # Neither queue was known to this process any more: never registered, or deleted
    # (its descriptor is gone, so nothing tells it from a queue that never existed).
    assert value(samples, "eventq_bad_event_queue_id_total", cause="unknown") == 2
    assert value(samples, "eventq_bad_event_queue_id_total", cause="expired") == 0
    assert value(samples, "eventq_queue_drops_total", cause="deleted") == 1
    assert value(samples, "eventq_queue_drops_total", cause="expired") == 0
    assert value(samples, "eventq_queues", state="live") == 1
    assert value(samples, "eventq_queues", state="cold") == 0

    # One lag sample per event handed out, each a fraction of a second after its commit.
    count = value(samples, "eventq_delivery_lag_seconds_count")
    assert count == handed_out
    assert 0 < value(samples, "eventq_delivery_lag_seconds_sum") < count * 5.0
    buckets = [
        (float(dict(labels)["le"]), sample)
        for (name, labels), sample in samples.items()
        if name == "eventq_delivery_lag_seconds_bucket"
    ]
    buckets.sort()
    assert [sample for _, sample in buckets] == sorted(sample for _, sample in buckets)
    assert buckets[-1] == (float("inf"), count)
    assert value(samples, "eventq_delivery_lag_seconds_bucket", le="5.0") == count

    assert value(samples, "eventq_database_up") == 1
    assert value(samples, "eventq_outbox_rows") > 0  # the sample realm's history
    assert value(samples, "eventq_outbox_oldest_row_age_seconds") >= 0
    assert value(samples, "eventq_outbox_unrouted_rows") == 0
    assert value(samples, "eventq_consumer_lag_seconds") == 0
    assert value(samples, "eventq_consumer_failures_total") == 0
    assert value(samples, "eventq_database_wait_seconds_count") > 0
    assert value(samples, "process_resident_memory_bytes") > 0

    promtool = require_promtool()
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # After a restart the kept queue is a descriptor only: cold until its next poll.
    assert server.stop() == 0
    server.start()
    owner = ApiClient(server.url, realm.emails["owner"], realm.api_keys["owner"])  # new port
    _, samples = scrape(server)
    assert value(samples, "eventq_queues", state="live") == 0
    assert value(samples, "eventq_queues", state="cold") == 1
    again = owner.poll(kept, heartbeat[-1]["id"])
    assert again.ok
    _, samples = scrape(server)
    assert value(samples, "eventq_queues", state="live") == 1
    assert value(samples, "eventq_queues", state="cold") == 0


def test_openmetrics_when_the_scraper_asks_for_it(sqlite_realm: tuple[str, SampleRealm]) -> None:
    with live_server(sqlite_realm[0]) as server:
        response = requests.get(
            server.url + "/metrics",
            headers={"Accept": "application/openmetrics-text; version=1.0.0"},
            timeout=REQUEST_TIMEOUT_SECS,
        )
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        assert response.text.endswith("# EOF\n")
        assert "eventq_delivery_lag_seconds_bucket" in response.text


def test_probes_answer_json_fit_for_load_balancers(quick_server: LiveServer) -> None:
    for path in ("/healthz", "/readyz"):
        response = requests.get(quick_server.url + path, timeout=REQUEST_TIMEOUT_SECS)
        assert response.status_code == 200
        body = response.json()
        validate_response("GET", path, response.status_code, body)
        assert "ETag" not in response.headers  # never a 304 to a prober
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-Id"])
    ready = requests.get(quick_server.url + "/readyz", timeout=REQUEST_TIMEOUT_SECS).json()
    assert ready["ready"] is True
    assert ready["checks"]["database"] == {"ok": True}
    assert ready["checks"]["consumer"]["ok"] is True
    assert ready["checks"]["consumer"]["unrouted_rows"] == 0
    # Probes are answered however many there are: no rate limit (the proxy restricts).
    statuses = {
        requests.get(quick_server.url + "/healthz", timeout=REQUEST_TIMEOUT_SECS).status_code
        for _ in range(120)
    }
    assert statuses == {200}
    refused = requests.post(quick_server.url + "/healthz", timeout=REQUEST_TIMEOUT_SECS)
    assert refused.status_code == 405
    assert refused.json()["result"] == "error"


def test_metrics_on_a_listener_of_their_own(sqlite_realm: tuple[str, SampleRealm]) -> None:
    env = {"EVENTQ_METRICS_ADDRESS": "127.0.0.1:0"}
    with live_server(sqlite_realm[0], env=env) as server:
        match = _METRICS_LISTENING.search(server.wait_for_log(_METRICS_LISTENING, 5))
        assert match is not None
        metrics_url = f"http://127.0.0.1:{match.group(1)}"
        _, samples = scrape(server, metrics_url)
        assert value(samples, "eventq_database_up") == 1
        for path in ("/healthz", "/readyz"):
            assert requests.get(metrics_url + path, timeout=REQUEST_TIMEOUT_SECS).ok
            assert requests.get(server.url + path, timeout=REQUEST_TIMEOUT_SECS).ok
        # Not on the API's address, and nothing of the API on the metrics address.
        api_metrics = requests.get(server.url + "/metrics", timeout=REQUEST_TIMEOUT_SECS)
        assert api_metrics.status_code == 404
        assert requests.get(metrics_url + "/", timeout=REQUEST_TIMEOUT_SECS).status_code == 404


def test_json_logs_one_object_per_line(sqlite_realm: tuple[str, SampleRealm]) -> None:
    database_url, realm = sqlite_realm
    env = {"EVENTQ_LOG_FORMAT": "json", **HEARTBEAT}
    server = LiveServer(database_url, env).start()
    try:
        owner = ApiClient(server.url, realm.emails["owner"], realm.api_keys["owner"])
        queue_id = owner.register(event_types=["realm_user"])["queue_id"]
        poll = owner.session.get(
            server.url + "/api/v1/events",
            params={"queue_id": queue_id, "last_event_id": "-1", "dont_block": "true"},
            # No answer has an ETag, so a conditional poll is answered in full, never 304.
            headers={"X-Request-Id": "nginx-0123456789abcdef", "If-None-Match": "*"},
            timeout=REQUEST_TIMEOUT_SECS,
        )
        assert poll.headers["X-Request-Id"] == "nginx-0123456789abcdef"
        assert poll.status_code == 200 and poll.json()["result"] == "success"
        assert int(poll.headers["Content-Length"]) == len(poll.content)
        # Answered polls are logged at DEBUG; a deletion names its queue at INFO.
        deleted = owner.session.delete(
            server.url + "/api/v1/events",
            data={"queue_id": queue_id},
            headers={"X-Request-Id": "nginx-fedcba9876543210"},
            timeout=REQUEST_TIMEOUT_SECS,
        )
        assert deleted.ok and deleted.headers["X-Request-Id"] == "nginx-fedcba9876543210"
        missing = owner.call("GET", "/events", {})
        assert missing.body["code"] == "REQUEST_VARIABLE_MISSING"
    finally:
        assert server.stop() == 0
    records: list[dict[str, Any]] = []
    for line in server.lines:
        record = json.loads(line)  # every line, the server's and its libraries'
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    access = [r for r in records if r["logger"] == "eventq.access"]
    assert not [r for r in access if r.get("request_id") == "nginx-0123456789abcdef"]
    polled = [r for r in access if r.get("request_id") == "nginx-fedcba9876543210"]
    assert len(polled) == 1
    expected = {
        "method": "DELETE",
        "path": "/api/v1/events",
        "status": 200,
        "user_id": realm.users["owner"],
        "queue_id": queue_id,
    }
    assert {key: polled[0].get(key) for key in expected} == expected
    assert isinstance(polled[0]["duration_ms"], int | float) and polled[0]["duration_ms"] >= 0
    refused = [r for r in access if r.get("code") == "REQUEST_VARIABLE_MISSING"]
    assert len(refused) == 1 and refused[0]["status"] == 400
    assert re.fullmatch(r"[0-9a-f]{32}", refused[0]["request_id"])
    assert any("eventq listening on" in r["message"] for r in records)
