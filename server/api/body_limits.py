"""Request bodies, bounded before they are read: a limit per route, and a budget for all.

Tornado reads a request's whole body into memory before any handler runs, so a limit
checked in a handler comes too late: a client that announces a large body and sends it
slowly has already made the server hold it. Here the decision is taken when the header
has arrived and nothing of the body has been read (`BodyBoundedApplication`, through
Tornado's `headers_received`):

* **Per route.** Every request may send at most `DEFAULT_BODY_LIMIT` (16 KiB); only the
  operations whose authenticated use needs more may send more (`ROUTE_BODY_LIMITS`).
  A `Content-Length` over the route's limit is answered at once with a JSON 413
  (`BAD_REQUEST`, Zulip's error envelope) and `Connection: close`, without reading the
  body: the connection is taken from Tornado, answered, and closed after a short
  linger that discards what the client still sends (closing at once could reset the
  connection and destroy the answer before the client reads it). A chunked body has
  no announced length: Tornado counts it as it arrives and, past the route's limit,
  answers a bare `400 Bad Request` and closes the connection, having held no more
  than the limit.
* **For all connections together.** A process-wide budget of body bytes in flight
  (`EVENTQ_MAX_BODY_BYTES_IN_FLIGHT`): each request reserves its announced length (a
  chunked one, its route's whole limit) before its body is read, and gives it back
  exactly once, when the body has been received and handed to the handler or when
  the connection closes first (the client went away, the body timeout, a malformed
  body). A request whose reservation does not fit is refused before its body is read,
  with a 503 JSON answer and `Retry-After`, then the connection is closed as above.
  503, not 413: the body is within its limit and the same request succeeds once
  others have finished sending, which is what 503 with `Retry-After` tells a client
  (a 413 tells it never to send that body again). Requests without a body reserve
  nothing and are never refused by the budget.

Refusals are counted and logged by `server.engine.abuse` (`refused.body_size` per client
address, `refused.body_budget` under one name, each at most once a minute), and so
appear in `/metrics` as `eventq_refusals{kind=...}`.

Runs on the event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Awaitable
from typing import Any

import orjson
import tornado.httputil
import tornado.web
from tornado.http1connection import HTTP1Connection

from server.api.access_log import FORWARDED_REQUEST_ID, REQUEST_ID_HEADER, new_request_id
from server.api.connections import refuse_and_close
from server.engine.abuse import AbuseMonitor
from server.engine.errors import ApiError

# No request of this API needs a larger body. Each route has its own limit, at most this
# one, which refuses a larger body before it is read (`server.api.body_limits`).
MAX_BODY_BYTES = 256 * 1024


class PayloadTooLarge(ApiError):
    """The request body is over its route's limit (the OpenAPI document's 413)."""

    status = 413

    def __init__(self, limit: int = MAX_BODY_BYTES) -> None:
        super().__init__(f"The request body is larger than {limit} bytes.")


# -- per route ----------------------------------------------------------------------------

# Percent-encoding takes up to 12 bytes for one character (4 UTF-8 bytes, 3 each), 3 for
# an ASCII punctuation mark, 1 for a letter or digit.
#
# Every other request: no other operation has a parameter that can be long. `DELETE
# /events` sends a queue id (at most 57 characters), `POST /users` an email (254 ASCII)
# and a full name (100 characters: 1,200 bytes at worst), the others ids and booleans,
# GET and HEAD nothing (their parameters are in the query string, bounded by the header
# limit). 16 KiB is ten times the largest of them.
DEFAULT_BODY_LIMIT = 16 * 1024
# `POST /register`: `event_types` and `fetch_event_types` (Zulip has about 60 event
# types: 1.5 KiB as a JSON list), `client_capabilities` (a dozen flags) and a `narrow`
# of at most 16 terms (`models.messages.narrows.MAX_NARROW_TERMS`), each a channel or topic
# name (60 characters), an email (254), a search text or a list of direct-message
# participants. 16 terms of 300 characters at the worst encoding take 56 KiB; real
# registers send 1-3 KiB.
REGISTER_BODY_LIMIT = 64 * 1024
# `POST /messages`: `content` of up to Zulip's 10,000 characters is 120,000 bytes at the
# worst encoding, plus a topic (60 characters) and `to`, which for a direct message is
# a JSON list of emails (1,000 of 40 characters: 50 KiB). `POST` and `DELETE
# /users/me/subscriptions`: up to 1,000 channels (`server.api.quotas.MAX_SUBSCRIPTION_
# CHANNELS`; POST names them in objects: 57 KiB for names of 30 ASCII characters) and
# 1,000 `principals` (emails or ids; 50 KiB as above). 256 KiB (`server.api.request.
# MAX_BODY_BYTES`) is the most any request of this API may send.
LARGE_BODY_LIMIT = MAX_BODY_BYTES

# (method, path) -> the most its body may hold; the path as routed, without the query.
ROUTE_BODY_LIMITS: dict[tuple[str, str], int] = {
    ("POST", "/api/v1/messages"): LARGE_BODY_LIMIT,
    # A preview of a message as large as a sent one.
    ("POST", "/api/v1/messages/render"): LARGE_BODY_LIMIT,
    ("POST", "/api/v1/users/me/subscriptions"): LARGE_BODY_LIMIT,
    ("DELETE", "/api/v1/users/me/subscriptions"): LARGE_BODY_LIMIT,
    ("POST", "/api/v1/register"): REGISTER_BODY_LIMIT,
}
# The largest limit of any route: Tornado's own cap for the server (`server.api.app`), which
# the per-route limit lowers for each request.
LARGEST_BODY_LIMIT = max(DEFAULT_BODY_LIMIT, *ROUTE_BODY_LIMITS.values())


# `PATCH /messages/{id}`: a new `content`, as large as a sent one.
_MESSAGE_EDIT_PATH = re.compile(r"/api/v1/messages/[0-9]+")


def body_limit(method: str, path: str) -> int:
    """The most a body of `method path` may hold (`path` may carry a query string)."""
    route = path.partition("?")[0]
    if method == "PATCH" and _MESSAGE_EDIT_PATH.fullmatch(route):
        return LARGE_BODY_LIMIT
    return ROUTE_BODY_LIMITS.get((method, route), DEFAULT_BODY_LIMIT)


# -- for all connections ------------------------------------------------------------------

# The budget of body bytes in flight, 32 MiB unless `EVENTQ_MAX_BODY_BYTES_IN_FLIGHT` says
# otherwise: 128 bodies at the largest route limit, or 2,048 at the default one, received
# at the same moment. Clients send their bodies within a round trip: even a whole
# organization sending messages at once holds a few hundred KiB. It bounds what slow or
# hostile senders make the process hold (Tornado's buffering about doubles a body while
# it is joined). `server.ops.config` repeats the figure (it must not import Tornado);
# tests/test_body_bounds.py checks that they agree.
DEFAULT_BODY_BYTES_IN_FLIGHT = 128 * LARGEST_BODY_LIMIT
# What a client refused by the budget is told to wait: bodies in flight are received
# within a round trip, or closed by the body timeout.
BUDGET_RETRY_AFTER_SECS = 5
# Refusals: the `server.engine.abuse` kinds.
REFUSED_BODY_SIZE = "refused.body_size"
REFUSED_BODY_BUDGET = "refused.body_budget"
# Digits of a Content-Length worth parsing: 18 are already an exabyte.
MAX_LENGTH_DIGITS = 18
# How much of a refused request's path the log repeats.
MAX_LOGGED_PATH = 100


class BodyBudget:
    """The process's budget of request-body bytes in flight."""

    def __init__(
        self, limit: int = DEFAULT_BODY_BYTES_IN_FLIGHT, monitor: AbuseMonitor | None = None
    ) -> None:
        if limit < LARGEST_BODY_LIMIT:
            raise ValueError(
                f"the body budget ({limit} bytes) must hold the largest body a route "
                f"allows ({LARGEST_BODY_LIMIT} bytes)"
            )
        self.limit = limit
        self.monitor = monitor
        # Bytes reserved by requests whose bodies are being received.
        self.in_flight = 0
        # Requests holding a reservation (with a body, not yet received or closed).
        self.requests = 0
        # Refused connections still lingering (`_refuse`).
        self.lingering: set[asyncio.Task[None]] = set()

    def reserve(self, size: int) -> bool:
        """Reserve `size` bytes; False (nothing reserved) when they do not fit."""
        if self.in_flight + size > self.limit:
            return False
        self.in_flight += size
        self.requests += 1
        return True

    def release(self, size: int) -> None:
        """Give back a reservation of `size` bytes (once per successful `reserve`)."""
        self.in_flight -= size
        self.requests -= 1
        assert self.in_flight >= 0 and self.requests >= 0, "a body reservation was released twice"

    def record(self, kind: str, offender: str, detail: str) -> None:
        if self.monitor is not None:
            self.monitor.record(kind, offender, detail)


class BodiesBusy(ApiError):
    """The process holds as many request bodies as its budget allows: retry shortly."""

    status = 503
    headers = {"Retry-After": str(BUDGET_RETRY_AFTER_SECS)}

    def __init__(self) -> None:
        super().__init__("The server is receiving too many request bodies; retry shortly.")


class BodyBoundedApplication(tornado.web.Application):
    """Tornado's application, with each request's body bounded before it is read."""

    def __init__(self, *args: Any, body_budget: BodyBudget, **settings: Any) -> None:
        super().__init__(*args, **settings)
        self.body_budget = body_budget

    def start_request(
        self, server_conn: object, request_conn: tornado.httputil.HTTPConnection
    ) -> tornado.httputil.HTTPMessageDelegate:
        return _BoundedBody(
            self.body_budget, request_conn, super().start_request(server_conn, request_conn)
        )


class _BoundedBody(tornado.httputil.HTTPMessageDelegate):
    """One request: its limit set and its reservation taken before the body is read,
    the reservation given back exactly once (`_release`)."""

    def __init__(
        self,
        budget: BodyBudget,
        connection: tornado.httputil.HTTPConnection,
        delegate: tornado.httputil.HTTPMessageDelegate,
    ) -> None:
        self.budget = budget
        self.connection = connection
        self.delegate = delegate
        # The bytes this request holds in the budget; None: none.
        self.reserved: int | None = None

    def headers_received(
        self,
        start_line: tornado.httputil.RequestStartLine | tornado.httputil.ResponseStartLine,
        headers: tornado.httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        connection = self.connection
        if not isinstance(start_line, tornado.httputil.RequestStartLine) or not isinstance(
            connection, HTTP1Connection
        ):
            return self.delegate.headers_received(start_line, headers)
        limit = body_limit(start_line.method, start_line.path)
        connection.set_max_body_size(limit)
        size = _body_size(headers, limit)
        if size > limit:
            error: ApiError = PayloadTooLarge(limit)
            self._refuse(start_line, headers, error, REFUSED_BODY_SIZE, size, limit)
            return None
        if size > 0:
            if not self.budget.reserve(size):
                self._refuse(start_line, headers, BodiesBusy(), REFUSED_BODY_BUDGET, size, limit)
                return None
            self.reserved = size
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        # The body is whole and handed to the handler: no longer the client's to hold.
        try:
            self.delegate.finish()
        finally:
            self._release()

    def on_connection_close(self) -> None:
        # Closed before the body was whole (or `finish` raised): Tornado calls this at
        # most once per request, and `_release` gives back at most once anyway.
        try:
            self.delegate.on_connection_close()
        finally:
            self._release()

    def _release(self) -> None:
        reserved, self.reserved = self.reserved, None
        if reserved is not None:
            self.budget.release(reserved)

    def _refuse(
        self,
        start_line: tornado.httputil.RequestStartLine,
        headers: tornado.httputil.HTTPHeaders,
        error: ApiError,
        kind: str,
        size: int,
        limit: int,
    ) -> None:
        """Answer `error` without reading the body, and close the connection."""
        assert isinstance(self.connection, HTTP1Connection)
        context = self.connection.context
        peer = str(getattr(context, "remote_ip", None) or "unknown")
        what = f"{start_line.method} {start_line.path[:MAX_LOGGED_PATH]}"
        budget = self.budget
        if kind == REFUSED_BODY_SIZE:
            budget.record(kind, peer, f"{what} announced {size} bytes; the limit is {limit}")
        else:
            budget.record(
                kind,
                "body budget",
                f"{budget.in_flight} of {budget.limit} bytes in flight; refused {peer} "
                f"{what} announcing {size}",
            )
        answer = _answer(error, _request_id(headers))
        # Tornado stops serving the connection: no body is read, and the delegate
        # behind this one never hears of the request.
        stream = self.connection.detach()
        refuse_and_close(stream, answer, budget.lingering)


def _body_size(headers: tornado.httputil.HTTPHeaders, limit: int) -> int:
    """The bytes a request's body may take: its Content-Length, or for a chunked body
    its route's `limit`; 0 for no body, and for framing Tornado refuses itself before
    reading a byte of the body (an unparseable length, two different lengths, a length
    and a transfer encoding, an unknown transfer encoding)."""
    if "Transfer-Encoding" in headers:
        chunked = "Content-Length" not in headers
        return limit if chunked and headers["Transfer-Encoding"].lower() == "chunked" else 0
    text = headers.get("Content-Length")
    if text is None:
        return 0
    # As Tornado reads it: equal copies joined by a proxy count once; digits only.
    pieces = {piece.strip(" \t") for piece in text.split(",")}
    if len(pieces) != 1:
        return 0
    (piece,) = pieces
    if not piece.isascii() or not piece.isdigit():
        return 0
    # Longer than any real length (and than int() parses): over every limit.
    return int(piece) if len(piece) <= MAX_LENGTH_DIGITS else sys.maxsize


def _request_id(headers: tornado.httputil.HTTPHeaders) -> str:
    """The proxy's X-Request-Id when it looks like one, else a new id (as
    `server.api.request.ApiHandler.request_id`)."""
    forwarded = headers.get_list(REQUEST_ID_HEADER)
    if len(forwarded) == 1 and FORWARDED_REQUEST_ID.fullmatch(forwarded[0]):
        return forwarded[0]
    return new_request_id()


def _answer(error: ApiError, request_id: str) -> bytes:
    """The whole HTTP answer for `error`: Zulip's JSON envelope, then the close."""
    body = orjson.dumps(error.to_json())
    reason = tornado.httputil.responses.get(error.status, "Error")
    lines = [
        f"HTTP/1.1 {error.status} {reason}",
        "Content-Type: application/json",
        "Cache-Control: no-store",
        f"{REQUEST_ID_HEADER}: {request_id}",
        *(f"{name}: {value}" for name, value in error.headers.items()),
        "Connection: close",
        f"Content-Length: {len(body)}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
