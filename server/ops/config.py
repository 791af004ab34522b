"""Configuration from the environment (`EVENTQ_*`), overridable by CLI options.

| variable | default | meaning |
|---|---|---|
| `EVENTQ_DATABASE_URL` | the checkout's `var/eventq.sqlite3` | SQLAlchemy URL of the database |
| `EVENTQ_HOST` | `127.0.0.1` | address `eventq serve` listens on |
| `EVENTQ_PORT` | `9993` | port `eventq serve` listens on |
| `EVENTQ_LEGACY_CLIENTS` | empty | client versions that predate deactivation peer events |
| `EVENTQ_HEARTBEAT_SECS` | 45-55 random | seconds before an idle long-poll gets a heartbeat |
| `EVENTQ_OUTBOX_MIN_AGE_SECS` | 3600 | outbox rows are kept at least this long |
| `EVENTQ_HEADER_TIMEOUT_SECS` | 20 | to receive a request's header; keep-alive idle limit |
| `EVENTQ_BODY_TIMEOUT_SECS` | 30 | seconds to receive a request's body |
| `EVENTQ_MAX_CONNECTIONS` | fd limit - 256 | connections per process; past it a 503 |
| `EVENTQ_MAX_BODY_BYTES_IN_FLIGHT` | 33554432 | body bytes being received at once; past it a 503 |
| `EVENTQ_RATE_LIMITING` | `on` | `off` turns every rate limit off |
| `EVENTQ_RATE_LIMIT_USER` | `60:200` | API requests per user (polls excepted) |
| `EVENTQ_RATE_LIMIT_POLLS` | `60:200` | wasted long-polls per user |
| `EVENTQ_RATE_LIMIT_ADDRESS` | `60:100` | requests without credentials per address |
| `EVENTQ_RATE_LIMIT_AUTH_FAILURES_ADDRESS` | `60:30` | failed authentications per address |
| `EVENTQ_RATE_LIMIT_AUTH_FAILURES_EMAIL` | `60:10` | failed authentications per email |
| `EVENTQ_MAX_QUEUES_PER_USER` | 100 | live queues per user (past it: LRU one dropped) |
| `EVENTQ_METRICS_ADDRESS` | empty | `HOST:PORT` serving /metrics (and probes) apart from the API |
| `EVENTQ_LOG_FORMAT` | `text` | `json`: one JSON object per log line (`server.ops.logs`) |
| `EVENTQ_READY_MAX_LAG_SECS` | 10 | /readyz fails when a committed row waits longer to be routed |
| `EVENTQ_SHARD` | `main` | this process's shard name: the prefix of its queue ids |
| `EVENTQ_TRUSTED_PROXY` | `off` | `on`: the client address comes from X-Real-IP / X-Forwarded-For |

Rate-limit rules are Zulip's `SECONDS:REQUESTS[,SECONDS:REQUESTS...]`, or `off`.

What a client sees past each limit, and why the defaults are what they are:
`server.api.connections`, `server.api.ratelimit`, `server.engine.quotas`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from models.database import default_database_url
from models.ownership import DEFAULT_SHARD_NAME, check_shard_name
from server.api.metrics import DEFAULT_READY_MAX_LAG_SECS
from server.api.ratelimit import RateLimits
from server.api.windows import Rule, parse_rules
from server.engine.maintenance import DEFAULT_OUTBOX_MIN_AGE_SECS
from server.engine.quotas import DEFAULT_MAX_QUEUES_PER_USER, MAX_QUEUES_PER_USER_CEILING
from server.ops.logs import LOG_FORMATS, TEXT

# A year: an audit trail longer than that belongs in a log store, not the outbox.
MAX_OUTBOX_MIN_AGE_SECS = 365 * 24 * 3600.0

DEFAULT_HOST = "127.0.0.1"
# Zulip's Tornado listens on 9993 behind its proxy; eventq takes the same port.
DEFAULT_PORT = 9993
# A real client sends its whole header in one write, within a round trip. 20 s still
# covers a stalled mobile link (TCP retransmits after 1, 2, 4 and 8 s: four losses in a
# row take 15 s), while a connection that sends half a header and stops is closed 180
# times sooner than with Tornado's default of an hour. The same wait is Tornado's idle
# limit between two requests of a keep-alive connection: clients reopen a closed one.
DEFAULT_HEADER_TIMEOUT_SECS = 20.0
# Bodies are at most 256 KiB (`server.api.body_limits.MAX_BODY_BYTES`): 21 s at 100 kbit/s.
DEFAULT_BODY_TIMEOUT_SECS = 30.0
# Timeouts outside this range are typos: under 0.1 s a real client on a slow link
# could not send a header, and over an hour is Tornado's default, i.e. no bound.
MIN_TIMEOUT_SECS = 0.1
MAX_TIMEOUT_SECS = 3600.0
# Lower caps leave the server unable to park its own clients' polls.
MIN_MAX_CONNECTIONS = 16
# Request-body bytes all connections may be sending at once (`server.api.body_limits`).
# 32 MiB is 128 bodies of the largest size a route allows, received at the same moment.
# The minimum is that largest size, or such a body could never be received: it is
# `server.api.body_limits.LARGEST_BODY_LIMIT`; both figures are repeated here because this
# module must not import Tornado (tests/test_body_bounds.py checks that they agree).
DEFAULT_MAX_BODY_BYTES_IN_FLIGHT = 32 * 1024 * 1024
MIN_MAX_BODY_BYTES_IN_FLIGHT = 256 * 1024
MAX_PORT = 65535


@dataclass(frozen=True)
class Settings:
    """Everything the server and the CLI read from the environment."""

    database_url: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    legacy_clients: str = ""
    # None: Zulip's 45-55 s. Shorter behind proxies with short idle timeouts, and in tests.
    heartbeat_secs: float | None = None
    # Outbox rows younger than this are never pruned: an audit trail of every action.
    outbox_min_age_secs: float = DEFAULT_OUTBOX_MIN_AGE_SECS
    header_timeout_secs: float = DEFAULT_HEADER_TIMEOUT_SECS
    body_timeout_secs: float = DEFAULT_BODY_TIMEOUT_SECS
    # None: as many as the process's file descriptor limit allows (server.api.connections).
    max_connections: int | None = None
    # Past this many request-body bytes being received at once, a request with a body
    # gets a 503 before it is read (`server.api.body_limits`).
    max_body_bytes_in_flight: int = DEFAULT_MAX_BODY_BYTES_IN_FLIGHT
    max_queues_per_user: int = DEFAULT_MAX_QUEUES_PER_USER
    rate_limits: RateLimits = RateLimits()
    # (host, port) of a listener of its own for /metrics, /healthz and /readyz; None:
    # they are served on the API's address (`server.api.app`).
    metrics_address: tuple[str, int] | None = None
    log_format: str = TEXT
    # /readyz answers 503 once a committed outbox row has waited this long to be routed.
    ready_max_lag_secs: float = DEFAULT_READY_MAX_LAG_SECS
    # This process's name among the shards of one database (docs/deployment.md).
    shard: str = DEFAULT_SHARD_NAME
    # Behind a reverse proxy: take the client's address from the proxy's headers, so rate
    # limits and logs see clients, not the proxy. Off by default: a client talking to
    # the server directly could otherwise claim any address.
    trusted_proxy: bool = False

    @classmethod
    def from_env(cls, database_url: str | None = None) -> Settings:
        """Settings from `EVENTQ_*` variables; `database_url` (from `--database-url`) wins."""
        port_text = os.environ.get("EVENTQ_PORT", str(DEFAULT_PORT))
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"EVENTQ_PORT must be a port number, not {port_text!r}") from None
        heartbeat_text = os.environ.get("EVENTQ_HEARTBEAT_SECS", "")
        heartbeat = None
        if heartbeat_text:
            try:
                heartbeat = float(heartbeat_text)
            except ValueError:
                heartbeat = -1.0
            if not 0.1 <= heartbeat <= 85:
                raise ValueError(
                    "EVENTQ_HEARTBEAT_SECS must be a number of seconds from 0.1 "
                    f"to 85 (Zulip clients give up after 90), not {heartbeat_text!r}"
                )
        return cls(
            heartbeat_secs=heartbeat,
            outbox_min_age_secs=_seconds(
                "EVENTQ_OUTBOX_MIN_AGE_SECS",
                DEFAULT_OUTBOX_MIN_AGE_SECS,
                0,
                MAX_OUTBOX_MIN_AGE_SECS,
            ),
            database_url=database_url or default_database_url(),
            host=os.environ.get("EVENTQ_HOST", DEFAULT_HOST),
            port=port,
            legacy_clients=os.environ.get("EVENTQ_LEGACY_CLIENTS", ""),
            header_timeout_secs=_seconds("EVENTQ_HEADER_TIMEOUT_SECS", DEFAULT_HEADER_TIMEOUT_SECS),
            body_timeout_secs=_seconds("EVENTQ_BODY_TIMEOUT_SECS", DEFAULT_BODY_TIMEOUT_SECS),
            max_connections=_count("EVENTQ_MAX_CONNECTIONS", MIN_MAX_CONNECTIONS, None),
            max_body_bytes_in_flight=_count(
                "EVENTQ_MAX_BODY_BYTES_IN_FLIGHT", MIN_MAX_BODY_BYTES_IN_FLIGHT, None
            )
            or DEFAULT_MAX_BODY_BYTES_IN_FLIGHT,
            max_queues_per_user=_count("EVENTQ_MAX_QUEUES_PER_USER", 1, MAX_QUEUES_PER_USER_CEILING)
            or DEFAULT_MAX_QUEUES_PER_USER,
            rate_limits=_rate_limits(),
            metrics_address=parse_address(
                "EVENTQ_METRICS_ADDRESS", os.environ.get("EVENTQ_METRICS_ADDRESS", "")
            ),
            log_format=log_format_from_env(),
            ready_max_lag_secs=_seconds("EVENTQ_READY_MAX_LAG_SECS", DEFAULT_READY_MAX_LAG_SECS),
            shard=_shard_name(),
            trusted_proxy=_switch("EVENTQ_TRUSTED_PROXY", "off") == "on",
        )


def parse_address(name: str, text: str) -> tuple[str, int] | None:
    """`HOST:PORT` (`[v6 address]:PORT` for IPv6) as (host, port); None when empty."""
    text = text.strip()
    if not text:
        return None
    host, sep, port_text = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not host or not 0 <= port <= MAX_PORT:
        raise ValueError(f"{name} must be HOST:PORT, like 127.0.0.1:9994, not {text!r}")
    return host, port


def log_format_from_env() -> str:
    """`EVENTQ_LOG_FORMAT`: `text` (the default) or `json`."""
    text = os.environ.get("EVENTQ_LOG_FORMAT", "").strip().lower() or TEXT
    if text not in LOG_FORMATS:
        raise ValueError(f"EVENTQ_LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {text!r}")
    return text


def _seconds(
    name: str, default: float, low: float = MIN_TIMEOUT_SECS, high: float = MAX_TIMEOUT_SECS
) -> float:
    """A setting in seconds within [low, high], `default` when unset."""
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not low <= value <= high:
        raise ValueError(
            f"{name} must be a number of seconds from {low:g} to {high:g}, not {text!r}"
        )
    return value


def _count(name: str, low: int, high: int | None) -> int | None:
    """An integer setting from `low` to `high` (None: no upper bound); None when unset."""
    text = os.environ.get(name, "")
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low or (high is not None and value > high):
        bound = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise ValueError(f"{name} must be a whole number {bound}, not {text!r}")
    return value


def _shard_name() -> str:
    text = os.environ.get("EVENTQ_SHARD", "").strip() or DEFAULT_SHARD_NAME
    try:
        return check_shard_name(text)
    except ValueError as error:
        raise ValueError(f"EVENTQ_SHARD: {error}") from None


def _switch(name: str, default: str) -> str:
    """An `on`/`off` setting."""
    value = os.environ.get(name, default).strip().lower() or default
    if value not in ("on", "off"):
        raise ValueError(f"{name} must be 'on' or 'off', not {value!r}")
    return value


def _rate_limits() -> RateLimits:
    """The rate-limit rules: Zulip's notation per budget, and a switch for all of them."""
    defaults = RateLimits()
    switch = _switch("EVENTQ_RATE_LIMITING", "on")

    def rules(name: str, default: tuple[Rule, ...]) -> tuple[Rule, ...]:
        text = os.environ.get(name, "")
        return parse_rules(name, text) if text else default

    return RateLimits(
        enabled=switch == "on",
        user=rules("EVENTQ_RATE_LIMIT_USER", defaults.user),
        polls=rules("EVENTQ_RATE_LIMIT_POLLS", defaults.polls),
        address=rules("EVENTQ_RATE_LIMIT_ADDRESS", defaults.address),
        auth_failures_address=rules(
            "EVENTQ_RATE_LIMIT_AUTH_FAILURES_ADDRESS", defaults.auth_failures_address
        ),
        auth_failures_email=rules(
            "EVENTQ_RATE_LIMIT_AUTH_FAILURES_EMAIL", defaults.auth_failures_email
        ),
    )
