"""What the server refused and why: counters an admin (or a later metrics endpoint) can
read, and a log that names each offender at most once a minute.

Every rate-limit hit, refused connection and quota refusal or quota drop goes through
`AbuseMonitor.record(kind, offender, detail)`. The counters (`snapshot()`) count every
occurrence; the log says the first one at once and folds the rest into one line per
offender and kind per `LOG_INTERVAL_SECS` (written with the offender's first occurrence
after the interval, carrying how many were folded), so a flood of 10,000 refused
requests costs a handful of log lines, not 10,000.

In memory, per process; runs on the event loop, not thread-safe.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

log = logging.getLogger("eventq.abuse")

# One line per offender and kind per minute: an operator watching the log sees who is
# being refused and how often, and a sustained attack cannot flood the log (or the disk).
LOG_INTERVAL_SECS = 60.0
# Offenders remembered for log folding. Past this many at once the least recently
# refused are forgotten, which at worst logs one of them again before its minute is up;
# it bounds memory when an attacker rotates through many addresses or emails.
MAX_TRACKED_OFFENDERS = 10_000

# The kinds `record` is called with, as the counters name them.
RATE_LIMIT_USER = "rate_limit.user"
RATE_LIMIT_POLLS = "rate_limit.polls"
RATE_LIMIT_ADDRESS = "rate_limit.address"
RATE_LIMIT_AUTH_ADDRESS = "rate_limit.auth_failures_address"
RATE_LIMIT_AUTH_EMAIL = "rate_limit.auth_failures_email"
REFUSED_CONNECTION = "refused.connection"
REFUSED_SUBSCRIPTION_SIZE = "refused.subscription_size"
QUEUE_CAP_DROP = "quota.queue_dropped"
REGISTER_SHED = "load.register_shed"


class _Pending:
    """Occurrences of one (kind, offender) since its last log line."""

    __slots__ = ("logged_at", "since", "detail")

    def __init__(self, logged_at: float, detail: str) -> None:
        self.logged_at = logged_at
        self.since = 0
        self.detail = detail


class AbuseMonitor:
    """Counters of refusals by kind, and the once-a-minute log of offenders."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._offenders: OrderedDict[tuple[str, str], _Pending] = OrderedDict()

    def record(self, kind: str, offender: str, detail: str = "") -> None:
        """Count one occurrence of `kind` by `offender`; log it unless this offender
        was already logged for this kind within the last minute."""
        self.counts[kind] += 1
        now = self.clock()
        key = (kind, offender)
        pending = self._offenders.get(key)
        if pending is not None and now - pending.logged_at < LOG_INTERVAL_SECS:
            pending.since += 1
            pending.detail = detail
            self._offenders.move_to_end(key)
            return
        folded = pending.since if pending is not None else 0
        extra = f" ({folded} more in the last minute)" if folded else ""
        log.warning("%s: %s%s%s", kind, offender, f": {detail}" if detail else "", extra)
        self._offenders[key] = _Pending(now, detail)
        self._offenders.move_to_end(key)
        while len(self._offenders) > MAX_TRACKED_OFFENDERS:
            self._offenders.popitem(last=False)

    def snapshot(self) -> dict[str, int]:
        """Every counter, for an admin view or a metrics endpoint."""
        return dict(self.counts)
