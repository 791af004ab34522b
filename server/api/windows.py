"""Budgets as exact sliding windows, as Zulip's own limiter keeps them.

A rule (T, N), written `T:N` in a setting (`parse_rules`), refuses a request when N
requests were already admitted in the last T seconds; `retry-after` is when the oldest
of them leaves the window. `SlidingWindows` keeps, per key, the times of its newest
admitted requests in a ring, and answers with a `Verdict`: admitted or not, and what
the `X-RateLimit-*` headers say. `server.api.ratelimit` builds its budgets from these.

Runs on the event loop; not thread-safe.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

# A rule allows at most this many requests per window: each budget key keeps the times
# of up to this many requests (8 bytes each), so it bounds the memory of one key.
MAX_RULE_REQUESTS = 10_000
# Windows longer than a day are not rate limits but bans; and a key is remembered for
# its longest window.
MAX_RULE_SECS = 86_400.0
# Rules per budget: Zulip's defaults use one or two (a burst rule and a sustained one).
MAX_RULES = 4  # Keys (users, addresses, emails) one budget remembers at once. Past this the least
# recently seen is forgotten, which can only let that key through early; it bounds memory
# when an attacker rotates through many addresses or emails (at most 10,000 x 8 bytes x
# the largest rule's requests: 16 MB for the default address rule).
MAX_TRACKED_KEYS = 10_000


@dataclass(frozen=True, slots=True)
class Rule:
    """At most `requests` requests in any `seconds` seconds."""

    seconds: float
    requests: int

    def __str__(self) -> str:
        return f"{self.seconds:g}:{self.requests}"


def parse_rules(name: str, text: str) -> tuple[Rule, ...]:
    """`SECS:REQUESTS[,SECS:REQUESTS...]` (Zulip's notation) as rules; `off` for none.

    Raises ValueError naming the setting `name` when the text is not such a list.
    """
    text = text.strip()
    if text.lower() in ("off", "none", "0"):
        return ()
    rules = []
    for part in text.split(","):
        secs_text, sep, requests_text = part.strip().partition(":")
        try:
            seconds = float(secs_text)
            requests = int(requests_text)
        except ValueError:
            seconds, requests = -1.0, -1
        if (
            not sep
            or not math.isfinite(seconds)
            or not 0 < seconds <= MAX_RULE_SECS
            or not 1 <= requests <= MAX_RULE_REQUESTS
        ):
            raise ValueError(
                f"{name} must be SECONDS:REQUESTS pairs separated by commas (seconds up to "
                f"{MAX_RULE_SECS:g}, requests from 1 to {MAX_RULE_REQUESTS}), or 'off'; "
                f"not {text!r}"
            )
        rules.append(Rule(seconds, requests))
    if len(rules) > MAX_RULES:
        raise ValueError(f"{name} has more than {MAX_RULES} rules: {text!r}")
    return tuple(rules)


@dataclass(frozen=True, slots=True)
class Verdict:
    """A budget's answer for one key: admitted or not, and what the headers say."""

    allowed: bool
    limit: int
    remaining: int
    # Seconds until a refused request would be admitted (0 when admitted).
    retry_after: float
    # Seconds until every rule's window is empty again.
    reset_after: float

    def headers(self, wall_now: float) -> dict[str, str]:
        """Zulip's `X-RateLimit-*` headers, and `Retry-After` (whole seconds, rounded
        up, as HTTP wants) on a refusal."""
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(max(0, self.remaining)),
            "X-RateLimit-Reset": str(math.ceil(wall_now + self.reset_after)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers


class _Times:
    """The times of a key's newest admitted requests, oldest first, in a ring."""

    __slots__ = ("times", "head", "capacity")

    def __init__(self, capacity: int) -> None:
        # Grows to `capacity` only for keys that make that many requests.
        self.times = array("d")
        self.head = 0  # index of the oldest entry once the ring is full
        self.capacity = capacity

    def __len__(self) -> int:
        return len(self.times)

    def at(self, index: int) -> float:
        """The `index`-th oldest time (0: the oldest)."""
        return self.times[(self.head + index) % len(self.times)]

    def newest(self) -> float:
        return self.at(len(self.times) - 1)

    def add(self, now: float) -> None:
        if len(self.times) < self.capacity:
            self.times.append(now)
        else:
            self.times[self.head] = now
            self.head = (self.head + 1) % self.capacity

    def count_after(self, cutoff: float) -> int:
        """How many times are later than `cutoff` (binary search: they are sorted)."""
        low, high = 0, len(self.times)
        while low < high:
            middle = (low + high) // 2
            if self.at(middle) > cutoff:
                high = middle
            else:
                low = middle + 1
        return len(self.times) - low


class SlidingWindows:
    """One budget: exact sliding windows for each of its rules, per key."""

    def __init__(self, rules: Sequence[Rule], capacity: int = MAX_TRACKED_KEYS) -> None:
        if not rules:
            raise ValueError("a budget needs at least one rule")
        self.rules = tuple(rules)
        self.capacity = capacity
        # Every rule looks at the same admitted requests, so one ring holding as many
        # as the largest rule allows serves all of them.
        self._depth = max(rule.requests for rule in self.rules)
        self._horizon = max(rule.seconds for rule in self.rules)
        self._keys: OrderedDict[Hashable, _Times] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, key: Hashable, now: float) -> Verdict:
        """Whether a request of `key` would be admitted now (nothing is recorded)."""
        return self._verdict(self._keys.get(key), now, admitting=False)

    def hit(self, key: Hashable, now: float) -> Verdict:
        """Admit and record a request of `key` if every rule allows it."""
        verdict = self._verdict(self._keys.get(key), now, admitting=True)
        if verdict.allowed:
            self._times(key, now).add(now)
        return verdict

    def record(self, key: Hashable, now: float) -> None:
        """Record a request of `key` whatever the rules say (a failure that happened)."""
        self._times(key, now).add(now)

    def _times(self, key: Hashable, now: float) -> _Times:
        times = self._keys.get(key)
        if times is None:
            self._forget_idle(now)
            times = self._keys[key] = _Times(self._depth)
            if len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key)
        return times

    def _forget_idle(self, now: float) -> None:
        # Keys are in least-recently-recorded order: drop the front ones whose every
        # window has emptied, a few per new key, so memory follows the active keys.
        for _ in range(2):
            if not self._keys:
                return
            key, times = next(iter(self._keys.items()))
            if times.newest() > now - self._horizon:
                return
            del self._keys[key]

    def _verdict(self, times: _Times | None, now: float, *, admitting: bool) -> Verdict:
        refused: list[tuple[float, Rule]] = []
        strictest: tuple[int, Rule] | None = None
        for rule in self.rules:
            used = 0 if times is None else times.count_after(now - rule.seconds)
            if used >= rule.requests:
                assert times is not None
                # The rule's N-th newest request leaves the window first.
                leaves = times.at(len(times) - rule.requests) + rule.seconds
                refused.append((leaves - now, rule))
                continue
            remaining = rule.requests - used - (1 if admitting else 0)
            if strictest is None or remaining < strictest[0]:
                strictest = (remaining, rule)
        if refused:
            retry_after, rule = max(refused, key=lambda item: item[0])
            reset = times.newest() + self._horizon - now if times is not None else 0.0
            return Verdict(False, rule.requests, 0, max(0.0, retry_after), max(0.0, reset))
        assert strictest is not None
        if admitting:
            reset = self._horizon
        else:
            reset = times.newest() + self._horizon - now if times else 0.0
        return Verdict(True, strictest[1].requests, strictest[0], 0.0, max(0.0, reset))
