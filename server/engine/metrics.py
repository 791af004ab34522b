"""What the event engine counts for its metrics, beyond what its parts already keep.

Most figures are not kept for metrics at all: the exposition (`server.api.metrics`)
reads, when scraped, the counters the parts already keep (`LiveQueues.drops`,
`OutboxConsumer.routed` and `failure_counts`, `Maintenance.last_prune_secs`,
`AbuseMonitor.counts`). Only what no part counted has bookkeeping of its own here,
each costing the hot path an increment or one bisect, never a label per queue or user:

* delivery lag (`ServiceMetrics.handed_out`): one histogram observation per event a
  poll hands out, from the commit of its outbox row (`created_at`) to that moment;
* polls and registers by outcome (`ServiceMetrics.count_request`), counted by
  `server.api.access_log.log_request` when the request has been answered;
* `BAD_EVENT_QUEUE_ID` answers by cause, counted where `EventService` raises them;
* the wait for a database thread (`DatabaseThreads`), from submit to the call's start.

This module imports nothing of the service: the service and its parts import it.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import (
    HistogramMetricFamily,
)
from prometheus_client.utils import floatToGoString

from queues.queue import QueuedEvent
from server.engine.live_queues import DropCause

# Delivery lag: a poll parked on a warm queue is answered within milliseconds of the
# commit; a client that polls again after an answer adds its round trip; a queue that
# was cold or a consumer that was behind adds seconds. Buckets span all three.
DELIVERY_LAG_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# Waiting for a database thread: nothing while threads are free; a queue of registers
# or rebuilds behind a slow database shows as tens or hundreds of milliseconds.
DATABASE_WAIT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
# The paths whose answers are counted by outcome (`ServiceMetrics.count_request`).
EVENTS_PATH = "/api/v1/events"
REGISTER_PATH = "/api/v1/register"
# The causes of a BAD_EVENT_QUEUE_ID answer besides the `DropCause` of a dropped queue:
# no such queue for this user, its descriptor idle past its lifespan, or a queue dropped
# whose cause is no longer known (its deletion is in flight).
UNKNOWN_QUEUE = "unknown"
EXPIRED_QUEUE = "expired"
DROPPED_QUEUE = "dropped"
POLL_EVENTS = "events"
POLL_HEARTBEAT = "heartbeat"
SUCCESS = "success"


class Histogram:
    """Bucket counts and the sum of observations, exposed as a Prometheus histogram.

    Cheaper than `prometheus_client.Histogram` on the event loop: one bisect and two
    additions, no lock (the loop is one thread). `counts[i]` counts the observations in
    (bounds[i-1], bounds[i]]; the last slot those above every bound.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(self.bounds, tuple(self.counts), self.sum)


class LockedHistogram(Histogram):
    """A `Histogram` observed from several threads (the database threads)."""

    __slots__ = ("_lock",)

    def __init__(self, bounds: Sequence[float]) -> None:
        super().__init__(bounds)
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            super().observe(value)

    def snapshot(self) -> HistogramSnapshot:
        with self._lock:
            return super().snapshot()


@dataclass(frozen=True, slots=True)
class HistogramSnapshot:
    """A histogram's state at one moment."""

    bounds: tuple[float, ...]
    counts: tuple[int, ...]
    sum: float

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, count)."""
        total = 0
        buckets = []
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append((bound, total))
        return buckets

    def quantile(self, q: float) -> float | None:
        """An estimate as PromQL's `histogram_quantile` makes it: linear within the
        bucket holding the q-th observation; the highest bound if it is above them all."""
        total = self.count
        if total == 0:
            return None
        rank = q * total
        lower = 0.0
        below = 0
        for bound, cumulative in self.cumulative():
            if cumulative >= rank and cumulative > below:
                if bound == float("inf"):
                    return self.bounds[-1]
                return lower + (bound - lower) * (rank - below) / (cumulative - below)
            lower, below = bound, cumulative
        return self.bounds[-1]

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        return HistogramMetricFamily(
            name,
            documentation,
            buckets=[(floatToGoString(bound), count) for bound, count in self.cumulative()],
            sum_value=self.sum,
        )

    def to_json(self) -> dict[str, Any]:
        """For the operator page: counts per bucket and the usual quantiles."""
        return {
            "count": self.count,
            "sum_secs": self.sum,
            "buckets": [
                {"le": None if bound == float("inf") else bound, "count": count}
                for bound, count in self.cumulative()
            ],
            "p50_secs": self.quantile(0.5),
            "p90_secs": self.quantile(0.9),
            "p99_secs": self.quantile(0.99),
        }


class ServiceMetrics:
    """What the event service counts for metrics that no part of it counted already."""

    def __init__(self) -> None:
        self.delivery_lag = Histogram(DELIVERY_LAG_BUCKETS)
        self.polls: Counter[str] = Counter({POLL_EVENTS: 0, POLL_HEARTBEAT: 0})
        self.registers: Counter[str] = Counter({SUCCESS: 0})
        # Every cause from the start, so that a rate over them is defined at once.
        self.bad_queue_ids: Counter[str] = Counter(
            dict.fromkeys(
                [UNKNOWN_QUEUE, EXPIRED_QUEUE, DROPPED_QUEUE]
                + [cause.value for cause in DropCause if cause is not DropCause.DEACTIVATED],
                0,
            )
        )

    def handed_out(self, entries: Iterable[QueuedEvent]) -> None:
        """A poll answers with these events: observe each one's delivery lag.

        Wall-clock time, as `created_at` is the writer's wall clock; a clock behind the
        writer's (another host) would give a negative lag, counted as none.
        """
        now = time.time()
        observe = self.delivery_lag.observe
        for entry in entries:
            created = entry.event.created_at
            if created:  # 0.0: an event that never went through the outbox
                observe(max(0.0, now - created))

    def count_request(
        self, method: str | None, path: str, status: int, code: str | None, heartbeat: bool
    ) -> None:
        """Count a long-poll or register by its outcome: events, heartbeat, success, or
        the error code of its refusal (a fixed set: `server.engine.errors`, HTTP_<status>)."""
        if path == EVENTS_PATH and method == "GET":
            counter = self.polls
            success = POLL_HEARTBEAT if heartbeat else POLL_EVENTS
        elif path == REGISTER_PATH and method == "POST":
            counter = self.registers
            success = SUCCESS
        else:
            return
        if status == 200:
            counter[success] += 1
        else:
            counter[code or f"HTTP_{status}"] += 1
