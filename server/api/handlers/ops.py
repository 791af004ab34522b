"""Operational endpoints: `/healthz`, `/readyz`, `/metrics`, and the operator page's figures.

* `GET /healthz` — the process is alive and its event loop answers: 200, always, with
  no database access (a liveness probe must not restart a process for a database
  outage it cannot fix).
* `GET /readyz` — 200 when this process can serve: its event service has started, the
  database answers, and its consumer is within `EVENTQ_READY_MAX_LAG_SECS` of the
  newest committed row (no committed row has waited longer to be routed); else 503.
  Both bodies carry the checks, so a person reading the answer sees what failed.
* `GET /metrics` — the Prometheus text format (OpenMetrics if asked): `server.engine.metrics`.
* `GET /api/v1/eventq/metrics` — owners and administrators: the figures the operator
  page draws (delivery lag, polls, drops, the realm's delivery), as JSON.

The first three need no credentials and are not rate-limited, as probes and scrapers
call them on a schedule; restrict who reaches them in the proxy in front, or serve them
on a listener of their own (`EVENTQ_METRICS_ADDRESS`, `server.api.app`). Their answers
share one read of the database figures per second (`server.api.metrics.FigureReader`), so
a flood of them costs the database at most that.
"""

from __future__ import annotations

import os
import time
from typing import Any

import tornado.web

from server.api.body_limits import MAX_BODY_BYTES, PayloadTooLarge
from server.api.metrics import DatabaseFigures, DatabaseUnavailable, FigureReader, render
from server.api.request import ApiHandler
from server.engine.live_queues import DropCause

# What `/readyz` says of a database it cannot read; the reason goes to the log
# (`server.api.metrics.FigureReader`).
DATABASE_UNREACHABLE = "the database is unreachable (the server's log says why)"
# Process start, for /healthz's uptime.
_STARTED = time.monotonic()


class OpsHandler(ApiHandler):
    """Base of the unauthenticated operational endpoints: JSON errors and the body cap
    of every API answer, but no rate limit (see the module docstring)."""

    public = True

    @property
    def figures(self) -> FigureReader:
        reader: FigureReader = self.application.settings["figures"]
        return reader

    def prepare(self) -> None:
        if len(self.request.body) > MAX_BODY_BYTES:
            raise PayloadTooLarge()

    def compute_etag(self) -> None:
        # Every answer is of this moment: a 304 to a prober's If-None-Match would be wrong.
        return None


class HealthHandler(OpsHandler):
    """`GET /healthz`: alive."""

    def get(self) -> None:
        self.send_success(
            {
                "status": "alive",
                "pid": os.getpid(),
                "uptime_secs": round(time.monotonic() - _STARTED, 3),
            }
        )


class ReadyHandler(OpsHandler):
    """`GET /readyz`: ready to serve, or 503 with what is wrong."""

    async def get(self) -> None:
        service = self.service
        max_lag = float(self.application.settings["ready_max_lag_secs"])
        problems = [] if service.started else ["the event service has not started"]
        checks: dict[str, Any] = {}
        figures: DatabaseFigures | None = None
        try:
            figures = await self.figures.read()
            checks["database"] = {"ok": True}
        except DatabaseUnavailable:
            # Generic on the wire: the driver's text names the database's host, port and
            # role, and this endpoint needs no credentials. The log has the reason.
            checks["database"] = {"ok": False, "error": DATABASE_UNREACHABLE}
            problems.append(DATABASE_UNREACHABLE)
        failing = sum(
            1
            for realm_id in service.consumer.routed
            if service.consumer.status(realm_id)["failing"]
        )
        consumer: dict[str, Any] = {"max_lag_secs": max_lag, "failing_realms": failing}
        if figures is None:
            consumer.update(ok=False, error="unknown while the database is unreachable")
        else:
            lag = figures.consumer_lag_secs(time.time())
            consumer.update(
                ok=lag <= max_lag, lag_secs=round(lag, 3), unrouted_rows=figures.unrouted_rows
            )
            if lag > max_lag:
                problems.append(
                    f"the consumer is {lag:.1f}s behind the newest committed row "
                    f"(at most {max_lag:g}s)"
                )
        checks["consumer"] = consumer
        if not problems:
            self.send_success({"ready": True, "checks": checks})
            return
        self.set_status(503)
        self.error_code = "BAD_REQUEST"
        self.finish(
            {
                "result": "error",
                "msg": "Not ready: " + "; ".join(problems) + ".",
                "code": self.error_code,
                "ready": False,
                "checks": checks,
            }
        )


class MetricsHandler(OpsHandler):
    """`GET /metrics`: every metric of this process, for Prometheus."""

    async def get(self) -> None:
        try:
            figures: DatabaseFigures | None = await self.figures.read()
        except DatabaseUnavailable:
            figures = None  # eventq_database_up 0; the in-memory metrics still show
        body, content_type = render(self.service, figures, self.request.headers.get("Accept"))
        self.set_header("Content-Type", content_type)
        self.finish(body)


class MetricsSummaryHandler(ApiHandler):
    """`GET /api/v1/eventq/metrics`: what the operator page draws (administrators)."""

    async def get(self) -> None:
        user = await self.authenticate()
        self.require_admin()
        service = self.service
        metrics = service.metrics
        self.send_success(
            {
                "delivery_lag": metrics.delivery_lag.snapshot().to_json(),
                "polls": dict(metrics.polls),
                "queue_drops": {cause.value: service.live.drops[cause] for cause in DropCause},
                "delivery": service.delivery_status(user.realm_id),
            }
        )


# Appended to the API application's routes by `server.api.app.make_app`; `/metrics` only
# when no listener of its own serves it (`METRICS_ROUTES`).
PROBE_ROUTES: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/healthz", HealthHandler),
    (r"/readyz", ReadyHandler),
]
METRICS_ROUTES: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/metrics", MetricsHandler),
]
ADMIN_ROUTES: list[tuple[str, type[tornado.web.RequestHandler]]] = [
    (r"/api/v1/eventq/metrics", MetricsSummaryHandler),
]
