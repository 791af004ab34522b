"""The serving process: `run_server` starts the event service and the HTTP server with
the settings in force, and on SIGTERM or SIGINT stops accepting, answers every waiting
poll, saves every queue checkpoint and exits; queues are durable, so clients resume
after a restart with the same `queue_id`.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Awaitable, Callable

import tornado.httpserver
import tornado.netutil
import tornado.web

from migrations import check_schema
from models.database import Database
from queues.descriptor import parse_legacy_rules
from server.api.app import make_app, make_ops_app
from server.api.body_limits import LARGEST_BODY_LIMIT, BodyBudget
from server.api.connections import GuardedHTTPServer, connection_cap
from server.api.metrics import FigureReader
from server.api.ratelimit import RateLimiter
from server.engine.service import HEARTBEAT_MAX_SECS, HEARTBEAT_MIN_SECS, EventService
from server.ops import native_heap
from server.ops.config import Settings

log = logging.getLogger("eventq.server")

# Pending connections the kernel queues for us: after a restart every client of a large
# realm reconnects at once, and Tornado's default (128) would reset most of them.
LISTEN_BACKLOG = 4096
# The collector's thresholds for a serving process: a first generation of 50,000
# allocations instead of 700 (`_tune_garbage_collector`). The older generations keep
# CPython's factors of 10: a parked poll's handler outlives young collections, so its
# garbage is freed only by an older one. (Factors of 20 and 100 made no difference to
# the soak's memory; these are the safer choice.)
GC_THRESHOLDS = (50_000, 10, 10)
# Request bodies are small; headers of more than this are not from a real client.
MAX_HEADER_BYTES = 64 * 1024


def _tune_garbage_collector() -> None:
    """Collect cyclic garbage less often, and never re-examine what start-up built.

    A register answer builds thousands of short-lived objects; at CPython's default
    first threshold (700 allocations) each one set off several collections, and every
    collection that reaches the older generations walks all the live queues. Measured
    with `python -m bench --only register`: about 15 % more registers a second. The
    objects allocated at start-up (modules, tables, compiled SQL) are frozen: they live
    as long as the process, so no collection needs to look at them.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def run_server(
    settings: Settings,
    host: str,
    port: int,
    on_ready: Callable[[EventService, int], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    # Before any thread starts: arenas made earlier would stay (server.ops.native_heap).
    native_heap.limit_arenas()
    db = Database(settings.database_url)
    check_schema(db.url)
    heartbeat = settings.heartbeat_secs
    service = EventService(
        db,
        legacy_rules=parse_legacy_rules(settings.legacy_clients),
        heartbeat_secs=(heartbeat, heartbeat)
        if heartbeat is not None
        else (HEARTBEAT_MIN_SECS, HEARTBEAT_MAX_SECS),
        outbox_min_age_secs=settings.outbox_min_age_secs,
        max_queues_per_user=settings.max_queues_per_user,
        shard=settings.shard,
    )
    await service.start()
    rate_limiter = RateLimiter(settings.rate_limits, service.abuse)
    # One budget for both listeners: it bounds what every connection of the process holds.
    body_budget = BodyBudget(settings.max_body_bytes_in_flight, service.abuse)
    # One reader for both listeners: their scrapes and probes share one database read.
    figures = FigureReader(service)
    app = make_app(
        service,
        rate_limiter,
        serve_metrics=settings.metrics_address is None,
        figures=figures,
        ready_max_lag_secs=settings.ready_max_lag_secs,
        body_budget=body_budget,
    )
    # Tornado's idle_connection_timeout is its header timeout: it bounds the wait for a
    # request's whole header, on a new connection and between keep-alive requests
    # (server.api.connections). Neither timeout runs while a poll is parked.
    server = GuardedHTTPServer(
        app,
        # Bodies are bounded before they are read (`server.api.body_limits`): each request's
        # route lowers this cap (16 KiB for most), and a budget bounds all of them.
        max_body_size=LARGEST_BODY_LIMIT,
        max_header_size=MAX_HEADER_BYTES,
        # Behind nginx every connection comes from the proxy: its X-Real-IP (or
        # X-Forwarded-For) names the client, for the rate limits and the logs.
        xheaders=settings.trusted_proxy,
        idle_connection_timeout=settings.header_timeout_secs,
        body_timeout=settings.body_timeout_secs,
    )
    max_connections = connection_cap(settings.max_connections)
    server.limit_connections(max_connections, service.abuse)
    _log_limits(settings, max_connections)
    ops_server = None
    if settings.metrics_address is not None:
        ops_server = _listen_for_ops(
            make_ops_app(service, rate_limiter, figures, settings.ready_max_lag_secs, body_budget),
            settings,
            *settings.metrics_address,
        )
    _tune_garbage_collector()
    sockets = tornado.netutil.bind_sockets(port, address=host, backlog=LISTEN_BACKLOG)
    server.add_sockets(sockets)
    bound_port = sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Where `eventq queues` reaches this process: a wildcard address is reached on the
    # loopback (the admin commands run beside the server); IPv6 goes in brackets.
    own_host = host if host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    shown_host = f"[{own_host}]" if ":" in own_host else own_host
    await service.announce(f"http://{shown_host}:{bound_port}")
    log.info(
        "eventq listening on http://%s:%d (database %s, shard %s)",
        host,
        bound_port,
        "SQLite" if db.is_sqlite else "PostgreSQL",
        service.shard,
    )
    heap_trimmer = loop.create_task(native_heap.trim_periodically(), name="heap-trim")
    if on_ready is not None:
        await on_ready(service, bound_port)
    await stop.wait()
    log.info("shutting down: answering waiting polls and saving queue checkpoints")
    heap_trimmer.cancel()
    await asyncio.gather(heap_trimmer, return_exceptions=True)
    server.stop()
    if ops_server is not None:
        ops_server.stop()
    await service.stop()
    await server.close_all_connections()
    if ops_server is not None:
        await ops_server.close_all_connections()
    db.dispose()
    log.info("stopped; %d queues will resume after the next start", len(service.registry))


def _listen_for_ops(
    app: tornado.web.Application, settings: Settings, host: str, port: int
) -> tornado.httpserver.HTTPServer:
    """Serve the operational endpoints on their own address (port 0: any free one)."""
    ops_server = tornado.httpserver.HTTPServer(
        app,
        max_body_size=LARGEST_BODY_LIMIT,
        max_header_size=MAX_HEADER_BYTES,
        xheaders=False,
        idle_connection_timeout=settings.header_timeout_secs,
        body_timeout=settings.body_timeout_secs,
    )
    sockets = tornado.netutil.bind_sockets(port, address=host)
    ops_server.add_sockets(sockets)
    shown = f"[{host}]" if ":" in host else host
    log.info("eventq metrics on http://%s:%d/metrics", shown, sockets[0].getsockname()[1])
    return ops_server


def _log_limits(settings: Settings, max_connections: int) -> None:
    limits = settings.rate_limits
    rules = (
        ("user", limits.user),
        ("polls", limits.polls),
        ("address", limits.address),
        ("auth failures/address", limits.auth_failures_address),
        ("auth failures/email", limits.auth_failures_email),
    )
    log.info(
        "limits: header timeout %gs, body timeout %gs, %d connections, %d body bytes in "
        "flight, %d queues per user; rate limits %s",
        settings.header_timeout_secs,
        settings.body_timeout_secs,
        max_connections,
        settings.max_body_bytes_in_flight,
        settings.max_queues_per_user,
        ", ".join(f"{name} {','.join(map(str, r)) or 'off'}" for name, r in rules)
        if limits.enabled
        else "off",
    )
