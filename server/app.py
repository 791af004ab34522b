"""The Tornado application: routes, limits and the process that serves it.

`run_server` starts the event service and the HTTP server, and on SIGTERM or SIGINT
stops accepting, answers every waiting poll, saves every queue checkpoint and exits;
queues are durable, so clients resume after a restart with the same `queue_id`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import tornado.httpserver
import tornado.netutil
import tornado.web

from migrations import check_schema
from models.database import Database
from queues.descriptor import parse_legacy_rules
from server.config import Settings
from server.handlers_events import (
    EventsHandler,
    OpenApiHandler,
    RegisterHandler,
    ServerSettingsHandler,
)
from server.http import MAX_BODY_BYTES, NotFoundHandler, log_request
from server.service import HEARTBEAT_MAX_SECS, HEARTBEAT_MIN_SECS, EventService

log = logging.getLogger("eventq.server")

# Tornado reads bodies up to this size, so that one over MAX_BODY_BYTES (256 KiB) still
# gets a JSON 413 from ApiHandler.prepare; a body over this hard cap is not read at all
# (the connection is closed), which bounds the memory one request can take.
MAX_READ_BODY_BYTES = 8 * 1024 * 1024
assert MAX_READ_BODY_BYTES > MAX_BODY_BYTES, "oversized bodies must be read to be answered"
# Pending connections the kernel queues for us: after a restart every client of a large
# realm reconnects at once, and Tornado's default (128) would reset most of them.
LISTEN_BACKLOG = 4096
# Request bodies are small; headers of more than this are not from a real client.
MAX_HEADER_BYTES = 64 * 1024


def make_app(service: EventService) -> tornado.web.Application:
    """The application with every route of DESIGN.md §6."""
    from server.handlers_page import PAGE_ROUTES
    from server.handlers_rest import REST_ROUTES

    routes: list[tuple[str, type[tornado.web.RequestHandler]]] = [
        (r"/api/v1/server_settings", ServerSettingsHandler),
        (r"/api/v1/openapi.json", OpenApiHandler),
        (r"/api/v1/register", RegisterHandler),
        (r"/api/v1/events", EventsHandler),
        *REST_ROUTES,
        *PAGE_ROUTES,
    ]
    return tornado.web.Application(
        routes,
        service=service,
        default_handler_class=NotFoundHandler,
        log_function=log_request,
        compress_response=False,
    )


async def run_server(
    settings: Settings,
    host: str,
    port: int,
    on_ready: Callable[[EventService, int], Awaitable[None]] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
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
    )
    await service.start()
    app = make_app(service)
    server = tornado.httpserver.HTTPServer(
        app, max_body_size=MAX_READ_BODY_BYTES, max_header_size=MAX_HEADER_BYTES, xheaders=False
    )
    sockets = tornado.netutil.bind_sockets(port, address=host, backlog=LISTEN_BACKLOG)
    server.add_sockets(sockets)
    bound_port = sockets[0].getsockname()[1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "eventq listening on http://%s:%d (database %s)",
        host,
        bound_port,
        "SQLite" if db.is_sqlite else "PostgreSQL",
    )
    if on_ready is not None:
        await on_ready(service, bound_port)
    await stop.wait()
    log.info("shutting down: answering waiting polls and saving queue checkpoints")
    server.stop()
    await service.stop()
    await server.close_all_connections()
    db.dispose()
    log.info("stopped; %d queues will resume after the next start", len(service.registry))
