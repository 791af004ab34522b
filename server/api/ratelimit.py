"""Rate limits the way Zulip's clients expect them: request budgets per user and per
client address, refused with HTTP 429, `code: RATE_LIMIT_HIT`, a `retry-after` field
(seconds, a number) and the `Retry-After` and `X-RateLimit-*` headers.

This module owns the rules (`Rule`, parsed from `SECS:REQUESTS[,...]` settings), the
budgets (`SlidingWindows`), the ledger that tells a long-poll that did work from a
wasted one (`PollLedger`), and `RateLimiter`, the one object the HTTP layer asks.

The budgets, each a list of rules that a request must all fit:

* user: every authenticated API request of a user except `GET /events`;
* polls: the *wasted* `GET /events` of a user (below);
* address: requests that carry no credentials, and every request to an endpoint that
  needs none, per client address;
* authentication failures, per address and per email: a wrong key (or malformed
  credentials) counts against both. While either is spent, requests presenting that
  email, or coming from that address, are refused before their key is even looked at,
  so guessing is slowed and the database is spared. The email budget is kept for any
  email presented, whether or not an account has it, so the answer never tells one
  apart. A keep-alive connection that has already authenticated successfully with an
  email is exempt from both budgets for that email (until it presents a wrong key):
  behind a shared address (a NAT, or a proxy that does not forward client addresses)
  one guesser must not cut off everyone's long-polls, and one guessing a victim's key
  must not cut off the victim's open connections. An attacker cannot use the
  exemption, which holds only on the connection that proved the key.

A rule (T, N) is an exact sliding window, as Zulip's own limiter: a request is refused
when N requests were already admitted in the last T seconds, and `retry-after` is when
the oldest of them leaves the window. `X-RateLimit-Limit` and `-Remaining` describe the
strictest rule, and `X-RateLimit-Reset` is the Unix time at which every rule's window
will be empty again.

Long-polls. A `GET /events` never counts against the user budget. It counts against the
polls budget only when it was wasted: it handed the client no event it had not been
handed before, acknowledged nothing new, and was not held by the server until its
heartbeat. So a client keeping up with a busy queue (every poll acknowledges the last
batch and gets new events) and an idle one (every poll waits for an event or the
heartbeat) are never counted, and a poll that acknowledges new events is never refused:
the queue is drained however busy it is, and heartbeats arrive on time. A client that
spins (`dont_block` on an empty queue, re-polling without acknowledging, polling an
unknown queue, replacing its own poll) spends the budget and is refused.

State is in memory, per process, and starts empty at every start: each server process
counts only the requests it serves, so with several processes behind a proxy every
process has its own budgets.

Runs on the event loop; not thread-safe.
"""

from __future__ import annotations

import hashlib
import math
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from server.engine.abuse import (
    RATE_LIMIT_ADDRESS,
    RATE_LIMIT_AUTH_ADDRESS,
    RATE_LIMIT_AUTH_EMAIL,
    RATE_LIMIT_POLLS,
    RATE_LIMIT_USER,
    AbuseMonitor,
)
from server.engine.errors import RateLimited

# A rule allows at most this many requests per window: each budget key keeps the times
# of up to this many requests (8 bytes each), so it bounds the memory of one key.
MAX_RULE_REQUESTS = 10_000
# Windows longer than a day are not rate limits but bans; and a key is remembered for
# its longest window.
MAX_RULE_SECS = 86_400.0
# Rules per budget: Zulip's defaults use one or two (a burst rule and a sustained one).
MAX_RULES = 4
# Keys (users, addresses, emails) one budget remembers at once. Past this the least
# recently seen is forgotten, which can only let that key through early; it bounds memory
# when an attacker rotates through many addresses or emails (at most 10,000 x 8 bytes x
# the largest rule's requests: 16 MB for the default address rule).
MAX_TRACKED_KEYS = 10_000
# Queues whose polls the ledger remembers; a forgotten queue's next poll is judged as a
# new queue's first poll (counted only if wasted), so this only bounds memory.
MAX_TRACKED_QUEUES = 50_000


@dataclass(frozen=True, slots=True)
class Rule:
    """At most `requests` requests in any `seconds` seconds."""

    seconds: float
    requests: int

    def __str__(self) -> str:
        return f"{self.seconds:g}:{self.requests}"


# Zulip's defaults (its `RATE_LIMITING_RULES`): 200 API requests a minute per user, 100
# a minute per address for requests without a logged-in user.
DEFAULT_USER_RULES = (Rule(60, 200),)
DEFAULT_ADDRESS_RULES = (Rule(60, 100),)
# Wasted long-polls get the same allowance as any other API call: a real client wastes
# one after an error or a restart, never hundreds a minute.
DEFAULT_POLL_RULES = (Rule(60, 200),)
# A client with a wrong key in its configuration retries a few times a minute; ten
# failures a minute for one email lock it out until a minute after the last of them,
# which holds a guesser to 14,400 guesses a day against keys of 190 random bits.
DEFAULT_AUTH_EMAIL_RULES = (Rule(60, 10),)
# An address is allowed more failures than an email: several people behind one NAT can
# each mistype a key, and a spent address budget refuses all of them (except on
# connections that already authenticated).
DEFAULT_AUTH_ADDRESS_RULES = (Rule(60, 30),)


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
class RateLimits:
    """The rules of every budget (`server.ops.config.Settings.rate_limits`)."""

    enabled: bool = True
    user: tuple[Rule, ...] = DEFAULT_USER_RULES
    polls: tuple[Rule, ...] = DEFAULT_POLL_RULES
    address: tuple[Rule, ...] = DEFAULT_ADDRESS_RULES
    auth_failures_address: tuple[Rule, ...] = DEFAULT_AUTH_ADDRESS_RULES
    auth_failures_email: tuple[Rule, ...] = DEFAULT_AUTH_EMAIL_RULES


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


@dataclass(slots=True)
class _QueueRecord:
    acknowledged: int
    delivered: int


class PollLedger:
    """Per queue, the newest event id its polls acknowledged and the newest delivered:
    what tells a poll that did work for its client from a wasted one."""

    def __init__(self, capacity: int = MAX_TRACKED_QUEUES) -> None:
        self.capacity = capacity
        self._queues: OrderedDict[str, _QueueRecord] = OrderedDict()

    def __len__(self) -> int:
        return len(self._queues)

    def acknowledges_new(self, queue_id: str, last_event_id: int | None) -> bool:
        """Whether this poll acknowledges events that an earlier answer handed out and
        no earlier poll of the queue acknowledged.

        Only ids up to the newest one handed out count: the service refuses any other
        acknowledgement, so a client can make such polls only as fast as its queue
        receives events (an id beyond what it was given is not progress, whatever the
        service answers). `RateLimiter.end_poll` still counts the poll as wasted if the
        service refused it.
        """
        record = self._queues.get(queue_id)
        return (
            record is not None
            and last_event_id is not None
            and record.acknowledged < last_event_id <= record.delivered
        )

    def answered(self, queue_id: str, last_event_id: int | None, newest_event: int | None) -> bool:
        """Record a successful answer; True if it handed out an event not handed out by
        an earlier answer (`newest_event`: the newest event id it carried, if any)."""
        record = self._queues.get(queue_id)
        acknowledged = -1 if last_event_id is None else last_event_id
        if record is None:
            delivered = -1 if newest_event is None else newest_event
            self._queues[queue_id] = _QueueRecord(acknowledged, delivered)
            if len(self._queues) > self.capacity:
                self._queues.popitem(last=False)
            return newest_event is not None
        self._queues.move_to_end(queue_id)
        record.acknowledged = max(record.acknowledged, acknowledged)
        if newest_event is not None and newest_event > record.delivered:
            record.delivered = newest_event
            return True
        return False

    def forget(self, queue_id: str) -> None:
        """The queue was deleted."""
        self._queues.pop(queue_id, None)


@dataclass(slots=True)
class PollTicket:
    """What `RateLimiter.begin_poll` learned, for `end_poll`."""

    user_id: int
    queue_id: str | None
    last_event_id: int | None
    acknowledges_new: bool


# The attribute of a connection (its stream) that names the email it authenticated as:
# exempt from the failure budgets for that email, for as long as the connection lives.
# An attribute, not a weak dictionary keyed by connection: it is read on every request,
# and a weak dictionary's lookup builds a weak reference each time.
_TRUSTED_EMAIL = "_eventq_trusted_email"


def _trusted_email(connection: object | None) -> str | None:
    """The email (exactly as sent) this connection authenticated as, if any."""
    return getattr(connection, _TRUSTED_EMAIL, None) if connection is not None else None


def _email_key(email: str) -> bytes:
    # The email as authentication matches it, hashed: an attacker's 60 KB "emails"
    # must not cost 60 KB each to remember.
    return hashlib.blake2b(email.strip().lower().encode(), digest_size=16).digest()


def _show(email: str) -> str:
    return repr(email.strip().lower()[:100])


class RateLimiter:
    """Every budget of this process, and the decisions the HTTP layer asks for.

    Methods that can refuse raise `RateLimited` (already counted and logged) and
    otherwise return the `X-RateLimit-*` headers for the answer.
    """

    def __init__(
        self,
        limits: RateLimits,
        monitor: AbuseMonitor,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.limits = limits
        self.monitor = monitor
        self.clock = clock
        self.wall_clock = wall_clock
        on = limits.enabled

        def budget(rules: tuple[Rule, ...]) -> SlidingWindows | None:
            return SlidingWindows(rules) if on and rules else None

        self.user = budget(limits.user)
        self.polls = budget(limits.polls)
        self.address = budget(limits.address)
        self.auth_address = budget(limits.auth_failures_address)
        self.auth_email = budget(limits.auth_failures_email)
        self.ledger = PollLedger()

    def _refuse(self, verdict: Verdict, kind: str, offender: str) -> RateLimited:
        self.monitor.record(kind, offender, f"retry after {verdict.retry_after:.1f}s")
        return RateLimited(round(verdict.retry_after, 3), verdict.headers(self.wall_clock()))

    # -- requests without a user ----------------------------------------------------------

    def anonymous_request(self, address: str) -> dict[str, str]:
        """A request without credentials, or to an endpoint that needs none."""
        if self.address is None:
            return {}
        verdict = self.address.hit(address, self.clock())
        if not verdict.allowed:
            raise self._refuse(verdict, RATE_LIMIT_ADDRESS, f"address {address}")
        return verdict.headers(self.wall_clock())

    # -- authentication -------------------------------------------------------------------

    def before_authentication(
        self, address: str, email: str | None, connection: object | None
    ) -> None:
        """Refuse, before the key is looked at, credentials from a spent email or
        address. The answer depends only on the failures counted, never on whether
        the email belongs to an account."""
        if email is not None and _trusted_email(connection) == email:
            return
        key = _email_key(email) if email is not None else None
        now = self.clock()
        if self.auth_email is not None and email is not None:
            verdict = self.auth_email.check(key, now)
            if not verdict.allowed:
                raise self._refuse(verdict, RATE_LIMIT_AUTH_EMAIL, f"email {_show(email)}")
        if self.auth_address is not None:
            verdict = self.auth_address.check(address, now)
            if not verdict.allowed:
                raise self._refuse(verdict, RATE_LIMIT_AUTH_ADDRESS, f"address {address}")

    def authentication_failed(
        self, address: str, email: str | None, connection: object | None
    ) -> None:
        """Count a refused key (or malformed credentials) against both budgets; the
        connection loses any exemption (a key that was right may have been replaced)."""
        if _trusted_email(connection) is not None:
            setattr(connection, _TRUSTED_EMAIL, None)
        now = self.clock()
        if self.auth_email is not None and email is not None:
            self.auth_email.record(_email_key(email), now)
        if self.auth_address is not None:
            self.auth_address.record(address, now)

    def authenticated(self, connection: object | None, email: str) -> None:
        """The connection presented a valid key for `email`: exempt it for that email."""
        if connection is not None and _trusted_email(connection) != email:
            try:
                setattr(connection, _TRUSTED_EMAIL, email)
            except AttributeError:
                pass  # an object without attributes: no exemption, only the budgets

    # -- authenticated requests -----------------------------------------------------------

    def user_request(self, user_id: int) -> dict[str, str]:
        """An authenticated API request other than a long-poll."""
        if self.user is None:
            return {}
        verdict = self.user.hit(user_id, self.clock())
        if not verdict.allowed:
            raise self._refuse(verdict, RATE_LIMIT_USER, f"user {user_id}")
        return verdict.headers(self.wall_clock())

    def begin_poll(
        self, user_id: int, queue_id: str | None, last_event_id: int | None
    ) -> PollTicket:
        """A `GET /events`: refused only if it acknowledges nothing new and the user's
        wasted polls are spent."""
        progress = queue_id is not None and self.ledger.acknowledges_new(queue_id, last_event_id)
        ticket = PollTicket(user_id, queue_id, last_event_id, progress)
        if self.polls is None:
            return ticket
        verdict = self.polls.check(user_id, self.clock())
        if not verdict.allowed and not progress:
            raise self._refuse(verdict, RATE_LIMIT_POLLS, f"user {user_id}")
        # An answered poll carries no X-RateLimit-* headers (a refusal does): polls are
        # most of the traffic, and the wasted-poll budget is not a request budget.
        return ticket

    def end_poll(
        self, ticket: PollTicket, *, answered: bool, newest_event: int | None, held: bool
    ) -> None:
        """Count the poll if it was wasted.

        `answered`: it got a success answer; `newest_event`: the newest event id it
        handed out (None: none, or only a heartbeat); `held`: the server kept it until
        its heartbeat was due.
        """
        new_events = False
        if answered and ticket.queue_id is not None:
            new_events = self.ledger.answered(ticket.queue_id, ticket.last_event_id, newest_event)
        # Progress is judged on what the service accepted: an acknowledgement it refused
        # (an id it never handed out, or one already pruned) made no progress.
        acknowledged = ticket.acknowledges_new and answered
        wasted = not (acknowledged or new_events or held)
        if wasted and self.polls is not None:
            self.polls.record(ticket.user_id, self.clock())

    def queue_deleted(self, queue_id: str) -> None:
        self.ledger.forget(queue_id)
