"""The access log, and the request ids that name each request in it and in its answer.

One line per request (`log_request`, Tornado's `log_function`): method, path, status,
user and duration, at INFO; long-polls answered with events or a heartbeat, and
rate-limit refusals, at DEBUG (polls are most of the traffic: `eventq_polls_total`
counts them instead). Its fields also travel with the record for the JSON log format
(`server.ops.logs`).
"""

from __future__ import annotations

import itertools
import logging
import re
import secrets
from typing import Any

import tornado.httputil
import tornado.web

from server.engine.service import EventService

access_log = logging.getLogger("eventq.access")

# Every answer of the API names its request, as the access log does, so a client's report
# or a proxy's log line leads to the server's. A proxy's own id (nginx: `proxy_set_header
# X-Request-Id $request_id;`) is kept when it looks like one; otherwise one is made up.
REQUEST_ID_HEADER = "X-Request-Id"
FORWARDED_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,64}")
# The longest queue id the log repeats from a request (ids are a shard name, a dot and 32
# hex digits: at most 57 characters).
MAX_LOGGED_QUEUE_ID = 64

# Request ids: 16 random hex digits per process, then a counter in 16 hex digits. Unique
# without a random draw per request; the ids are names, not secrets.
_REQUEST_ID_PREFIX = secrets.token_hex(8)
_request_numbers = itertools.count()


def new_request_id() -> str:
    """A new request id: 32 hex digits, unique in this process's lifetime."""
    return f"{_REQUEST_ID_PREFIX}{next(_request_numbers):016x}"


def log_request(handler: tornado.web.RequestHandler) -> None:
    """One line per request: method, path, status, user, duration; long-polls answered
    with events or a heartbeat at DEBUG.

    The line's fields also travel with the record (`extra`), with the request id, the
    error code and the queue id when the request names one, for the JSON log format
    (`server.ops.logs`). Long-polls and registers are counted by outcome for the metrics.
    """
    request = handler.request
    status = handler.get_status()
    code = getattr(handler, "error_code", None)
    quiet = bool(getattr(handler, "quiet", False))
    service = handler.application.settings.get("service")
    if isinstance(service, EventService):
        # A long-poll answered 200 is quiet exactly when its answer was a heartbeat.
        service.metrics.count_request(request.method, request.path, status, code, quiet)
    level = logging.INFO
    if quiet or (status == 200 and getattr(handler, "routine", False)):
        level = logging.DEBUG
    elif status >= 500:
        level = logging.ERROR
    if not access_log.isEnabledFor(level):
        return  # an answered poll at INFO: no fields to build for a line nobody writes
    duration_ms = 1000.0 * request.request_time()
    user = getattr(handler, "user", None)
    who = f"user {user.id}" if user is not None else "anonymous"
    fields: dict[str, Any] = {
        "request_id": getattr(handler, "request_id", None) or new_request_id(),
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": round(duration_ms, 1),
        "user_id": user.id if user is not None else None,
        "queue_id": _queue_id_of(request),
    }
    if code is not None:
        fields["code"] = code
    access_log.log(
        level,
        "%s %s %d %s %.1fms",
        request.method,
        request.path,
        status,
        who,
        duration_ms,
        extra={"eventq": fields},
    )


def _queue_id_of(request: tornado.httputil.HTTPServerRequest) -> str | None:
    """The `queue_id` parameter of a poll or a queue deletion, for the log."""
    values = request.query_arguments.get("queue_id") or request.body_arguments.get("queue_id")
    if not values:
        return None
    return values[-1][:MAX_LOGGED_QUEUE_ID].decode("utf-8", "replace")
