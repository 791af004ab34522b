"""The pieces of the operability work that need no server: histograms and their
quantiles, the metrics listen address, the log format and the JSON log lines."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from server.engine.metrics import Histogram, LockedHistogram
from server.ops.config import log_format_from_env, parse_address
from server.ops.logs import JsonFormatter


def test_histogram_buckets_are_upper_bounds_and_cumulative() -> None:
    histogram = Histogram([0.1, 1.0])
    for value in (0.05, 0.1, 0.5, 2.0):
        histogram.observe(value)
    snapshot = histogram.snapshot()
    # 0.1 falls in the bucket "le 0.1", as Prometheus counts it.
    assert snapshot.cumulative() == [(0.1, 2), (1.0, 3), (float("inf"), 4)]
    assert snapshot.count == 4 and snapshot.sum == pytest.approx(2.65)
    family = snapshot.family("x_seconds", "x")
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("x_seconds_bucket", "+Inf")] == 4
    assert samples[("x_seconds_count", None)] == 4


def test_quantiles_interpolate_within_a_bucket_as_promql_does() -> None:
    histogram = LockedHistogram([0.01, 0.1, 1.0])
    assert histogram.snapshot().quantile(0.5) is None
    for _ in range(10):
        histogram.observe(0.05)  # all in (0.01, 0.1]
    snapshot = histogram.snapshot()
    assert snapshot.quantile(0.5) == pytest.approx(0.055)
    assert snapshot.quantile(1.0) == pytest.approx(0.1)
    histogram.observe(30.0)  # above every bound: reported as the highest bound
    assert histogram.snapshot().quantile(0.99) == 1.0
    summary = histogram.snapshot().to_json()
    assert summary["buckets"][-1] == {"le": None, "count": 11}
    assert summary["p50_secs"] == pytest.approx(0.0595)  # rank 5.5 of 11


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("", None),
        ("127.0.0.1:9994", ("127.0.0.1", 9994)),
        ("[::1]:0", ("::1", 0)),
        (" metrics.internal:9100 ", ("metrics.internal", 9100)),
    ],
)
def test_metrics_address(text: str, address: tuple[str, int] | None) -> None:
    assert parse_address("EVENTQ_METRICS_ADDRESS", text) == address


@pytest.mark.parametrize("text", ["9994", ":9994", "host:", "host:port", "host:70000"])
def test_a_bad_metrics_address_is_refused_by_name(text: str) -> None:
    with pytest.raises(ValueError, match="EVENTQ_METRICS_ADDRESS must be HOST:PORT"):
        parse_address("EVENTQ_METRICS_ADDRESS", text)


def test_log_format(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVENTQ_LOG_FORMAT", raising=False)
    assert log_format_from_env() == "text"
    monkeypatch.setenv("EVENTQ_LOG_FORMAT", "JSON")
    assert log_format_from_env() == "json"
    monkeypatch.setenv("EVENTQ_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match="EVENTQ_LOG_FORMAT must be one of text, json"):
        log_format_from_env()


def test_a_json_log_line_is_one_object_with_its_fields_and_traceback() -> None:
    try:
        raise RuntimeError("broken\non two lines")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "eventq.access", logging.ERROR, __file__, 1, "GET %s %d", ("/x", 500), exc_info
    )
    record.eventq = {"request_id": "abc", "status": 500, "message": "not this one"}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "GET /x 500"  # a field cannot replace the message
    assert entry["level"] == "ERROR" and entry["logger"] == "eventq.access"
    assert entry["request_id"] == "abc" and entry["status"] == 500
    assert entry["time"].endswith("+00:00")
    assert "RuntimeError: broken\non two lines" in entry["exception"]
