"""Prometheus metrics of one server process, and the database figures `/readyz` shares
with them.

The exposition reads, when scraped, what the engine's parts keep (`MetricsSource`: the
narrow view of the service it needs), plus what lives in the database (queue
descriptors, the outbox, each realm's newest row), read in one short snapshot
(`FigureReader`): concurrent scrapes and readiness probes share one read, and a read is
reused for `FIGURES_MAX_AGE_SECS`, so a flood of unauthenticated scrapes costs the
database at most one query a second.

The names follow Prometheus conventions: base units (seconds), `_total` counters, and
labels with a small fixed set of values (a cause, an outcome, an error code, a state).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import and_, func, or_, select

from models.database import Database
from models.tables import OutboxEvent, QueueDescriptorRow, Realm
from server.engine.abuse import AbuseMonitor
from server.engine.consumer import OutboxConsumer
from server.engine.database_threads import DatabaseThreads
from server.engine.live_queues import DropCause, LiveQueues
from server.engine.maintenance import Maintenance
from server.engine.metrics import ServiceMetrics

log = logging.getLogger("eventq.metrics")

# The consumer routes a committed row within milliseconds; ten seconds behind means it
# is stuck or the database is crawling, and a load balancer should try another process
# (`/readyz`, `EVENTQ_READY_MAX_LAG_SECS`).
DEFAULT_READY_MAX_LAG_SECS = 10.0
# How long one read of the database figures is reused: Prometheus scrapes every 15 s or
# so and a readiness probe every few seconds; a second keeps both current while an
# unauthenticated flood of either costs at most one query a second.
FIGURES_MAX_AGE_SECS = 1.0
# A scrape or readiness probe that waits longer than this for the database says it is
# unreachable rather than hanging the prober (whose own timeout is typically 1-10 s).
FIGURES_TIMEOUT_SECS = 2.0


class MetricsSource(Protocol):
    """What the exposition and the figures read of the event service, and nothing more
    (`server.engine.service.EventService` is one)."""

    @property
    def metrics(self) -> ServiceMetrics: ...
    @property
    def abuse(self) -> AbuseMonitor: ...
    @property
    def consumer(self) -> OutboxConsumer: ...
    @property
    def live(self) -> LiveQueues: ...
    @property
    def maintenance(self) -> Maintenance: ...
    @property
    def threads(self) -> DatabaseThreads: ...
    @property
    def db(self) -> Database: ...


# -- what the database holds, read at scrape time ------------------------------------


class DatabaseUnavailable(Exception):
    """The figures could not be read: the database is down, or too slow to answer."""


@dataclass(frozen=True, slots=True)
class DatabaseFigures:
    """One snapshot of what the metrics and the readiness probe read from the database."""

    descriptors: int
    # Every realm: (newest committed seq, seq up to which its history was pruned).
    realms: dict[int, tuple[int, int]]
    # The consumer's positions when the snapshot was read.
    routed: dict[int, int]
    # Unix times; None when there is no such row.
    oldest_row_created: float | None
    oldest_unrouted_created: float | None

    @property
    def retained_rows(self) -> int:
        # Sequence numbers are gap-free and pruning deletes a prefix of them
        # (`models.retention`), so no COUNT over a table of up to millions of rows.
        return sum(newest - pruned for newest, pruned in self.realms.values())

    @property
    def unrouted_rows(self) -> int:
        return sum(
            max(0, newest - self.routed.get(realm_id, 0))
            for realm_id, (newest, _) in self.realms.items()
        )

    def consumer_lag_secs(self, now: float) -> float:
        """How long the oldest committed row not yet routed has waited; 0 if none."""
        if self.oldest_unrouted_created is None:
            return 0.0
        return max(0.0, now - self.oldest_unrouted_created)


def _unix_time(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite: naive, written in UTC
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def read_figures(db: Database, routed: dict[int, int]) -> DatabaseFigures:
    """The figures, in one snapshot of three or four index-served statements."""
    with db.snapshot() as session:
        descriptors = session.execute(
            select(func.count()).select_from(QueueDescriptorRow)
        ).scalar_one()
        realms = {
            int(realm_id): (int(newest), int(pruned))
            for realm_id, newest, pruned in session.execute(
                select(Realm.id, Realm.last_event_seq, Realm.outbox_pruned_seq)
            )
        }
        # Each realm's oldest retained row directly follows its pruned prefix: one
        # primary-key lookup per realm instead of a scan of created_at.
        oldest = session.execute(
            select(func.min(OutboxEvent.created_at)).join(
                Realm,
                and_(
                    Realm.id == OutboxEvent.realm_id,
                    OutboxEvent.seq == Realm.outbox_pruned_seq + 1,
                ),
            )
        ).scalar_one_or_none()
        behind = [
            and_(OutboxEvent.realm_id == realm_id, OutboxEvent.seq == routed.get(realm_id, 0) + 1)
            for realm_id, (newest, _) in realms.items()
            if newest > routed.get(realm_id, 0)
        ]
        oldest_unrouted = None
        if behind:
            oldest_unrouted = session.execute(
                select(func.min(OutboxEvent.created_at)).where(or_(*behind))
            ).scalar_one_or_none()
    return DatabaseFigures(
        descriptors=int(descriptors),
        realms=realms,
        routed=routed,
        oldest_row_created=_unix_time(oldest),
        oldest_unrouted_created=_unix_time(oldest_unrouted),
    )


class FigureReader:
    """`read_figures` for the scrapes and probes of one process: shared while in flight,
    reused (a failure too) for `max_age` seconds, bounded by `timeout`."""

    def __init__(
        self,
        service: MetricsSource,
        max_age: float = FIGURES_MAX_AGE_SECS,
        timeout: float = FIGURES_TIMEOUT_SECS,
    ) -> None:
        self.service = service
        self.max_age = max_age
        self.timeout = timeout
        self._last: DatabaseFigures | DatabaseUnavailable | None = None
        self._last_at = 0.0
        self._reading: asyncio.Task[DatabaseFigures | DatabaseUnavailable] | None = None

    async def read(self) -> DatabaseFigures:
        """The figures; raises `DatabaseUnavailable`."""
        if self._last is not None and time.monotonic() - self._last_at < self.max_age:
            outcome = self._last
        else:
            if self._reading is None:
                self._reading = asyncio.get_running_loop().create_task(self._read())
            # Shielded: a prober that hangs up does not cancel the read others await.
            outcome = await asyncio.shield(self._reading)
        if isinstance(outcome, DatabaseUnavailable):
            raise outcome
        return outcome

    async def _read(self) -> DatabaseFigures | DatabaseUnavailable:
        service = self.service
        outcome: DatabaseFigures | DatabaseUnavailable
        try:
            async with asyncio.timeout(self.timeout):
                outcome = await service.threads.run(
                    read_figures, service.db, dict(service.consumer.routed)
                )
        except TimeoutError:
            outcome = DatabaseUnavailable(f"no answer within {self.timeout:g}s")
        except Exception as error:  # whatever the driver raises for a database that is down
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            outcome = DatabaseUnavailable(first_line)
        self._log_change(self._last, outcome)
        self._last, self._last_at, self._reading = outcome, time.monotonic(), None
        return outcome

    @staticmethod
    def _log_change(
        previous: DatabaseFigures | DatabaseUnavailable | None,
        outcome: DatabaseFigures | DatabaseUnavailable,
    ) -> None:
        """Log why the database could not be read, once per new reason, and when it can
        be again. The reason (the driver's text: host, port, role) goes to the log only;
        the unauthenticated probes answer with a generic one."""
        if isinstance(outcome, DatabaseUnavailable):
            if not isinstance(previous, DatabaseUnavailable) or str(previous) != str(outcome):
                log.warning("the database cannot be read: %s", outcome)
        elif isinstance(previous, DatabaseUnavailable):
            log.info("the database can be read again")


# -- the exposition ----------------------------------------------------------------------


class EventqCollector(Collector):
    """Every eventq metric of one process, read from its parts when collected."""

    def __init__(self, service: MetricsSource, figures: DatabaseFigures | None) -> None:
        self.service = service
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        service = self.service
        metrics = service.metrics
        figures = self.figures
        now = time.time()

        yield metrics.delivery_lag.snapshot().family(
            "eventq_delivery_lag_seconds",
            "From the commit of an event's outbox row until a poll hands it out.",
        )
        queues = GaugeMetricFamily(
            "eventq_queues",
            "Event queues by state: live (in this process's memory) and cold (durable "
            "descriptors not in memory, rebuilt on their next poll).",
            labels=["state"],
        )
        live = len(service.live)
        queues.add_metric(["live"], live)
        if figures is not None:
            queues.add_metric(["cold"], max(0, figures.descriptors - live))
        yield queues
        drops = CounterMetricFamily(
            "eventq_queue_drops", "Queues removed for good, by cause.", labels=["cause"]
        )
        for cause in DropCause:
            drops.add_metric([cause.value], service.live.drops[cause])
        yield drops
        moves = CounterMetricFamily(
            "eventq_queue_moves",
            "Queues that moved between shards: claimed from another shard (in), or claimed "
            "by another from this one (out).",
            labels=["direction"],
        )
        moves.add_metric(["in"], service.live.moves_in)
        moves.add_metric(["out"], service.live.moves_out)
        yield moves
        yield _counter(
            "eventq_polls",
            "Long-polls answered, by outcome: events, heartbeat, or the error code.",
            "outcome",
            metrics.polls,
        )
        yield _counter(
            "eventq_registers",
            "Queue registrations answered, by outcome: success or the error code.",
            "outcome",
            metrics.registers,
        )
        yield _counter(
            "eventq_bad_event_queue_id",
            "BAD_EVENT_QUEUE_ID answers by cause: unknown, expired, dropped, or the drop "
            "cause of the queue.",
            "cause",
            metrics.bad_queue_ids,
        )
        yield _counter(
            "eventq_refusals",
            "Requests, connections and queues refused or dropped by a limit, by kind.",
            "kind",
            service.abuse.counts,
        )

        consumer = service.consumer
        failing = sum(1 for realm_id in consumer.routed if consumer.status(realm_id)["failing"])
        yield GaugeMetricFamily(
            "eventq_consumer_failing_realms",
            "Realms whose delivery is paused by a routing failure (retried with backoff).",
            value=failing,
        )
        yield CounterMetricFamily(
            "eventq_consumer_failures",
            "Failures to route outbox rows, every realm together.",
            value=sum(consumer.failure_counts.values()),
        )
        yield service.threads.wait.snapshot().family(
            "eventq_database_wait_seconds",
            "From submitting database work until a database thread starts it.",
        )
        maintenance = service.maintenance
        yield GaugeMetricFamily(
            "eventq_outbox_last_prune_duration_seconds",
            "How long the last outbox prune pass took.",
            value=maintenance.last_prune_secs,
        )
        yield CounterMetricFamily(
            "eventq_outbox_pruned_rows",
            "Outbox rows this process's prune passes deleted.",
            value=maintenance.pruned_rows_total,
        )

        yield GaugeMetricFamily(
            "eventq_database_up",
            "1 if this scrape could read the database figures, else 0 (and they are absent).",
            value=1 if figures is not None else 0,
        )
        if figures is None:
            return
        yield GaugeMetricFamily(
            "eventq_outbox_rows",
            "Outbox rows retained, every realm together.",
            value=figures.retained_rows,
        )
        oldest = figures.oldest_row_created
        yield GaugeMetricFamily(
            "eventq_outbox_oldest_row_age_seconds",
            "Age of the oldest retained outbox row (0 when the outbox is empty).",
            value=0.0 if oldest is None else max(0.0, now - oldest),
        )
        yield GaugeMetricFamily(
            "eventq_outbox_unrouted_rows",
            "Committed outbox rows this process's consumer has not routed yet.",
            value=figures.unrouted_rows,
        )
        yield GaugeMetricFamily(
            "eventq_consumer_lag_seconds",
            "How long the oldest committed row not yet routed has waited (0 when none).",
            value=figures.consumer_lag_secs(now),
        )


def _counter(name: str, documentation: str, label: str, counts: Counter[str]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(counts.items()):
        family.add_metric([value], count)
    return family


# prometheus_client's process, platform and garbage-collector metrics, in a registry of
# their own rather than the global one: collected through `Exposition`, which also holds
# the service's metrics, so several services in one process (tests) never collide.
_PROCESS = CollectorRegistry(auto_describe=False)
ProcessCollector(registry=_PROCESS)
PlatformCollector(registry=_PROCESS)
GCCollector(registry=_PROCESS)


class Exposition(Collector):
    """What one scrape shows: eventq's metrics and the process's."""

    def __init__(self, service: MetricsSource, figures: DatabaseFigures | None) -> None:
        self.parts: list[Collector] = [EventqCollector(service, figures), _PROCESS]

    def collect(self) -> Iterator[Metric]:
        for part in self.parts:
            yield from part.collect()


def render(
    service: MetricsSource, figures: DatabaseFigures | None, accept: str | None
) -> tuple[bytes, str]:
    """The scrape's body and content type, in the format the scraper asked for
    (OpenMetrics if its Accept header says so, else the Prometheus text format)."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(Exposition(service, figures)), content_type
