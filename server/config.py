"""Configuration from the environment (`EVENTQ_*`), overridable by CLI options.

| variable | default | meaning |
|---|---|---|
| `EVENTQ_DATABASE_URL` | `sqlite:///var/eventq.sqlite3` | SQLAlchemy URL of the database |
| `EVENTQ_HOST` | `127.0.0.1` | address `eventq serve` listens on |
| `EVENTQ_PORT` | `9993` | port `eventq serve` listens on |
| `EVENTQ_LEGACY_CLIENTS` | empty | client versions that predate deactivation peer events |
| `EVENTQ_HEARTBEAT_SECS` | 45-55 random | seconds before an idle long-poll gets a heartbeat |
| `EVENTQ_OUTBOX_MIN_AGE_SECS` | 3600 | outbox rows are kept at least this long |
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from models.database import default_database_url

# Kept here, not imported from the server, so the CLI reads settings without Tornado.
DEFAULT_OUTBOX_MIN_AGE_SECS = 3600.0

DEFAULT_HOST = "127.0.0.1"
# Zulip's Tornado listens on 9993 behind its proxy; eventq takes the same port.
DEFAULT_PORT = 9993


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
        min_age_text = os.environ.get("EVENTQ_OUTBOX_MIN_AGE_SECS", "")
        min_age = DEFAULT_OUTBOX_MIN_AGE_SECS
        if min_age_text:
            try:
                min_age = float(min_age_text)
            except ValueError:
                min_age = -1.0
            if not 0 <= min_age < float("inf"):
                raise ValueError(
                    "EVENTQ_OUTBOX_MIN_AGE_SECS must be a number of seconds, 0 or more, "
                    f"not {min_age_text!r}"
                )
        return cls(
            heartbeat_secs=heartbeat,
            outbox_min_age_secs=min_age,
            database_url=database_url or default_database_url(),
            host=os.environ.get("EVENTQ_HOST", DEFAULT_HOST),
            port=port,
            legacy_clients=os.environ.get("EVENTQ_LEGACY_CLIENTS", ""),
        )
