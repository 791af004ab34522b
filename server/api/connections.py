"""Connection hygiene for the HTTP server, which must hold up without a proxy in front.

Owns `GuardedHTTPServer`, Tornado's HTTP server with a cap on simultaneous connections,
and the sizing of that cap from the process's file-descriptor limit. The timeouts that
close slow clients are Tornado's own (`server.api.app` sets them from the settings):

* the header timeout (Tornado's `idle_connection_timeout`) runs from the moment the
  server waits for a request, on a new connection or between two requests of a
  keep-alive connection, until the request's whole header has arrived. So it bounds
  a connection that sends half a header and stops, and an idle keep-alive connection;
* the body timeout runs while the body is read.

Neither runs while a request is being answered, so a long-poll parked on the server
for up to its heartbeat (55 s) is never cut by them.

Past the cap, a new connection gets a 503 JSON answer with `Retry-After` and is closed
at once, without its request being read; it never reaches the application.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
from typing import Any

import tornado.httpserver
from tornado.iostream import IOStream, StreamClosedError

from server.engine.abuse import REFUSED_CONNECTION, AbuseMonitor

log = logging.getLogger("eventq.connections")

# File descriptors kept free for everything that is not a client connection: database
# connections (a pool per database thread), the listening sockets, log files, the
# wakeup listener, and the refused connections lingering below.
RESERVED_FDS = 256
# The cap when the descriptor limit is unlimited; far beyond what one process serves.
MAX_CONNECTIONS_CEILING = 1_000_000
# What a refused client is told to wait: connections free up as polls end (within a
# heartbeat) and idle or slow ones reach their timeouts.
CONNECTION_RETRY_AFTER_SECS = 5
# A refused connection is kept this long after its answer, reading and discarding what
# the client still sends, so that closing does not reset the connection (a reset can
# destroy the answer before the client reads it).
REFUSAL_LINGER_SECS = 1.0
# Refused connections lingering at once (inside RESERVED_FDS); past this, a refused
# connection is closed right after its answer is written.
MAX_LINGERING_REFUSALS = 64
# Read size while lingering; the data is discarded.
LINGER_READ_BYTES = 16 * 1024

_REFUSAL_BODY = json.dumps(
    {
        "result": "error",
        "msg": "The server has too many open connections; retry shortly.",
        "code": "BAD_REQUEST",
    }
).encode()
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Cache-Control: no-store\r\n"
    b"Retry-After: %d\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n%s" % (CONNECTION_RETRY_AFTER_SECS, len(_REFUSAL_BODY), _REFUSAL_BODY)
)


def descriptor_limit() -> int | None:
    """The process's soft limit on open file descriptors (None: unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def connection_cap(configured: int | None) -> int:
    """The cap to use: `configured` (None: as many as the descriptor limit allows),
    never more than the descriptor limit leaves after `RESERVED_FDS`, and at least 1."""
    limit = descriptor_limit()
    available = MAX_CONNECTIONS_CEILING if limit is None else limit - RESERVED_FDS
    available = max(1, available)
    if configured is None:
        return available
    if configured > available:
        log.warning(
            "EVENTQ_MAX_CONNECTIONS=%d is more than the file descriptor limit (%s) allows; "
            "using %d",
            configured,
            limit,
            available,
        )
        return available
    return configured


class GuardedHTTPServer(tornado.httpserver.HTTPServer):
    """Tornado's HTTP server, refusing connections past `max_connections`."""

    max_connections = MAX_CONNECTIONS_CEILING
    monitor: AbuseMonitor | None = None

    def limit_connections(self, max_connections: int, monitor: AbuseMonitor) -> None:
        """Set the cap (Tornado's `Configurable` servers take no extra constructor
        arguments) and where refusals are counted."""
        self.max_connections = max_connections
        self.monitor = monitor
        self._lingering: set[asyncio.Task[None]] = set()

    @property
    def open_connections(self) -> int:
        """Connections being served (refused ones are not counted)."""
        return len(self._connections)

    def handle_stream(self, stream: IOStream, address: Any) -> None:
        if len(self._connections) < self.max_connections:
            _without_nagle(stream)
            super().handle_stream(stream, address)
            return
        peer = address[0] if isinstance(address, tuple) and address else str(address)
        if self.monitor is not None:
            self.monitor.record(
                REFUSED_CONNECTION,
                "connection cap",
                f"{self.max_connections} connections open; refused {peer}",
            )
        refuse_and_close(stream, REFUSAL, getattr(self, "_lingering", None))


def _without_nagle(stream: IOStream) -> None:
    """Turn on TCP_NODELAY once, for the connection's whole life.

    Tornado turns it on at the end of every answer and off again afterwards: two
    `setsockopt` calls per request, which on a fan-out to 10,000 polls are 20,000 system
    calls. Every eventq answer is written whole (header and body in one write), so
    Nagle's algorithm could only delay it; the stream's own `set_nodelay` is made a
    no-op so that the flag stays on.
    """
    stream.set_nodelay(True)
    stream.set_nodelay = _keep_nodelay  # type: ignore[method-assign]


def _keep_nodelay(value: bool) -> None:
    """The per-request toggle of TCP_NODELAY, left out (`_without_nagle`)."""


def refuse_and_close(
    stream: IOStream, answer: bytes, lingering: set[asyncio.Task[None]] | None
) -> None:
    """Answer a connection Tornado no longer serves with `answer` (a whole HTTP answer
    that says `Connection: close`), then close it: after a linger that reads and discards
    what the client still sends, so that closing does not reset the connection and
    destroy the answer, while fewer than MAX_LINGERING_REFUSALS linger in `lingering`
    (the caller's set of them); at once past that, or with no set."""
    if lingering is None or len(lingering) >= MAX_LINGERING_REFUSALS:
        _write_and_close(stream, answer)
        return
    task = asyncio.get_running_loop().create_task(_linger(stream, answer))
    lingering.add(task)
    task.add_done_callback(lingering.discard)


def _write_and_close(stream: IOStream, answer: bytes) -> None:
    try:
        # A few hundred bytes: a socket's send buffer takes the whole answer at once.
        stream.write(answer)
    except StreamClosedError:
        pass
    stream.close()


async def _linger(stream: IOStream, answer: bytes) -> None:
    """Write the answer, stop sending, and read and discard what the client still sends
    for up to REFUSAL_LINGER_SECS."""
    try:
        await stream.write(answer)
        stream.socket.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(REFUSAL_LINGER_SECS):
            while True:
                await stream.read_bytes(LINGER_READ_BYTES, partial=True)
    except (StreamClosedError, TimeoutError, OSError):
        pass  # the client closed, or lingered long enough
    finally:
        stream.close()
