"""Log output of the `eventq` command: human-readable lines, or one JSON object per line.

`EVENTQ_LOG_FORMAT=json` (`server.ops.config`) is for log shippers (journald, Loki, an ELK
stack): every record, the server's and its libraries', becomes one JSON object on one
line, with its time (UTC, ISO 8601), level, logger and message, the fields a record
carries in `extra={"eventq": {...}}` (the access log's request id, method, path, status,
duration, user id and queue id: `server.api.access_log.log_request`), and a traceback, if any,
as one string. The default, `text`, stays the readable line it always was.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

TEXT = "text"
JSON = "json"
LOG_FORMATS = (TEXT, JSON)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The attribute of a log record holding its structured fields (`extra={"eventq": ...}`).
FIELDS_ATTRIBUTE = "eventq"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: newlines inside are escaped by JSON."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, FIELDS_ATTRIBUTE, None)
        if isinstance(fields, dict):
            # The record's own keys win: a field cannot disguise the level or the message.
            entry.update({key: value for key, value in fields.items() if key not in entry})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field of a type JSON lacks is logged as text, never lost.
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: int, log_format: str) -> None:
    """Send every log record to stderr in `log_format` (`text` or `json`) from `level` up."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == JSON else logging.Formatter(TEXT_FORMAT))
    # force: replace what an earlier call (or a library) installed, so no record is
    # written twice in two formats.
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if log_format == JSON:
        # warnings.warn output would otherwise reach stderr as bare text lines.
        logging.captureWarnings(True)
