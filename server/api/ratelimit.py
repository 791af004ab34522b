"""Rate limits the way Zulip's clients expect them: request budgets per user and per
client address, refused with HTTP 429, `code: RATE_LIMIT_HIT`, a `retry-after` field
(seconds, a number) and the `Retry-After` and `X-RateLimit-*` headers.

This module owns the default rules of each budget (`RateLimits`) and `RateLimiter`, the
one object the HTTP layer asks. The rules and their windows are `server.api.windows`;
the ledger that tells a long-poll that did work from a wasted one is
`server.api.poll_ledger`.

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
import time
from collections.abc import Callable
from dataclasses import dataclass

from server.api.poll_ledger import PollLedger, PollTicket
from server.api.windows import Rule, SlidingWindows, Verdict
from server.engine.abuse import (
    RATE_LIMIT_ADDRESS,
    RATE_LIMIT_AUTH_ADDRESS,
    RATE_LIMIT_AUTH_EMAIL,
    RATE_LIMIT_POLLS,
    RATE_LIMIT_USER,
    AbuseMonitor,
)
from server.engine.errors import RateLimited

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


@dataclass(frozen=True, slots=True)
class RateLimits:
    """The rules of every budget (`server.ops.config.Settings.rate_limits`)."""

    enabled: bool = True
    user: tuple[Rule, ...] = DEFAULT_USER_RULES
    polls: tuple[Rule, ...] = DEFAULT_POLL_RULES
    address: tuple[Rule, ...] = DEFAULT_ADDRESS_RULES
    auth_failures_address: tuple[Rule, ...] = DEFAULT_AUTH_ADDRESS_RULES
    auth_failures_email: tuple[Rule, ...] = DEFAULT_AUTH_EMAIL_RULES


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
        self,
        ticket: PollTicket,
        *,
        answered: bool,
        newest_event: int | None,
        held: bool,
        ephemeral: bool = False,
    ) -> None:
        """Count the poll if it was wasted.

        `answered`: it got a success answer; `newest_event`: the newest event id it
        handed out (None: none, or only a heartbeat); `held`: the server kept it until
        its heartbeat was due; `ephemeral`: it handed out ephemeral events (typing),
        which carry no new id but are handed out only once, so are never a repeat.
        """
        new_events = False
        if answered and ticket.queue_id is not None:
            new_events = self.ledger.answered(ticket.queue_id, ticket.last_event_id, newest_event)
        # Progress is judged on what the service accepted: an acknowledgement it refused
        # (an id it never handed out, or one already pruned) made no progress.
        acknowledged = ticket.acknowledges_new and answered
        wasted = not (acknowledged or new_events or held or ephemeral)
        if wasted and self.polls is not None:
            self.polls.record(ticket.user_id, self.clock())

    def queue_deleted(self, queue_id: str) -> None:
        self.ledger.forget(queue_id)
