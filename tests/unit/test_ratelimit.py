"""Rate limits, counters and quotas in isolation (`server.api.ratelimit` and its windows
and poll ledger, `server.engine.abuse`, the quotas, `server.api.connections`, and their
settings in `server.ops.config`), with an injected clock: exact sliding windows, the poll
ledger, identical answers whether an email exists or not, the once-a-minute log, and the
parsing of every setting."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

import pytest

import server.api.connections
from server.api.connections import RESERVED_FDS, connection_cap
from server.api.poll_ledger import PollLedger
from server.api.quotas import (
    MAX_SUBSCRIPTION_CHANNELS,
    MAX_SUBSCRIPTION_PAIRS,
    MAX_SUBSCRIPTION_PRINCIPALS,
    check_subscription_request,
)
from server.api.ratelimit import RateLimiter, RateLimits
from server.api.windows import Rule, SlidingWindows, parse_rules
from server.engine.abuse import LOG_INTERVAL_SECS, RATE_LIMIT_USER, AbuseMonitor
from server.engine.errors import BadRequest, RateLimited
from server.engine.quotas import KeyedLock
from server.ops.config import DEFAULT_HEADER_TIMEOUT_SECS, Settings


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Connection:
    """Stands for a connection's stream (weakly referenced by the limiter)."""


# -- rules ---------------------------------------------------------------------------


def test_rules_use_zulips_notation() -> None:
    assert parse_rules("X", "60:200") == (Rule(60, 200),)
    assert parse_rules("X", " 1:10, 3600:500 ") == (Rule(1, 10), Rule(3600, 500))
    assert parse_rules("X", "0.5:3") == (Rule(0.5, 3),)
    assert parse_rules("X", "off") == ()


@pytest.mark.parametrize(
    "text", ["60", "60:", ":5", "0:5", "-1:5", "60:0", "60:1.5", "nan:5", "inf:5", "1:99999999"]
)
def test_malformed_rules_are_refused_naming_the_setting(text: str) -> None:
    with pytest.raises(ValueError, match="EVENTQ_RATE_LIMIT_USER"):
        parse_rules("EVENTQ_RATE_LIMIT_USER", text)


# -- sliding windows -------------------------------------------------------------------


def test_a_window_admits_exactly_n_requests_per_t_seconds() -> None:
    budget = SlidingWindows([Rule(10, 3)])
    verdicts = [budget.hit("k", 100.0 + i) for i in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts[:3]] == [2, 1, 0]
    refused = verdicts[3]
    # The oldest admitted request (t=100) leaves the window at t=110.
    assert refused.retry_after == pytest.approx(7.0)
    assert (refused.limit, refused.remaining) == (3, 0)
    # Refusals are not recorded: the window does not slide further.
    assert not budget.hit("k", 109.9).allowed
    assert budget.hit("k", 110.0).allowed
    assert not budget.hit("k", 110.5).allowed  # t=101 and t=102 are still inside
    assert budget.hit("k", 111.0).allowed
    # Other keys have their own windows.
    assert budget.hit("other", 111.0).allowed


def test_the_strictest_of_several_rules_is_reported() -> None:
    budget = SlidingWindows([Rule(1, 2), Rule(60, 5)])
    assert budget.hit("k", 0.0).remaining == 1  # the 1-second rule: 2 - 1
    assert budget.hit("k", 0.1).remaining == 0
    burst = budget.hit("k", 0.2)
    assert not burst.allowed and burst.limit == 2
    assert burst.retry_after == pytest.approx(0.8)
    for t in (1.1, 1.2, 2.3):
        assert budget.hit("k", t).allowed
    sustained = budget.hit("k", 3.5)
    assert not sustained.allowed and sustained.limit == 5
    assert sustained.retry_after == pytest.approx(56.5)  # t=0 leaves at 60
    # Reset: when the newest admitted request leaves the longest window.
    assert sustained.reset_after == pytest.approx(2.3 + 60 - 3.5)


def test_check_does_not_count_and_record_always_does() -> None:
    budget = SlidingWindows([Rule(10, 2)])
    for _ in range(5):
        assert budget.check("k", 0.0).allowed
    budget.record("k", 0.0)
    budget.record("k", 1.0)
    budget.record("k", 2.0)  # past the limit: a failure that happened is still counted
    verdict = budget.check("k", 3.0)
    assert not verdict.allowed
    # Of the two newest (t=1, t=2), t=1 leaves the window first, at 11.
    assert verdict.retry_after == pytest.approx(8.0)


def test_idle_keys_are_forgotten_and_the_table_is_bounded() -> None:
    budget = SlidingWindows([Rule(10, 2)], capacity=100)
    for index in range(50):
        budget.hit(f"old{index}", 0.0)
    # Every window of the old keys has emptied; new keys push them out.
    for index in range(50):
        budget.hit(f"new{index}", 100.0)
    assert len(budget) < 100
    for index in range(500):
        budget.hit(f"flood{index}", 200.0)
    assert len(budget) == 100


def test_headers_are_zulips() -> None:
    budget = SlidingWindows([Rule(60, 1)])
    admitted = budget.hit("k", 0.0)
    assert admitted.headers(wall_now=1_700_000_000.0) == {
        "X-RateLimit-Limit": "1",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "1700000060",
    }
    refused = budget.hit("k", 10.5)
    headers = refused.headers(wall_now=1_700_000_010.5)
    assert headers["Retry-After"] == "50"  # 49.5 s, rounded up
    assert headers["X-RateLimit-Reset"] == "1700000060"


# -- the poll ledger -------------------------------------------------------------------


def test_the_ledger_tells_progress_from_repetition() -> None:
    ledger = PollLedger()
    assert not ledger.acknowledges_new("q", 5)  # unknown queue: nothing to compare
    assert ledger.answered("q", -1, 4)  # events 0..4 handed out: new
    assert not ledger.answered("q", -1, 4)  # the same again, nothing acknowledged
    assert ledger.acknowledges_new("q", 4)
    assert not ledger.acknowledges_new("q", -1)
    assert ledger.answered("q", 4, 6)
    assert not ledger.acknowledges_new("q", 4)
    assert not ledger.answered("q", 6, None)  # a heartbeat
    ledger.forget("q")
    assert not ledger.acknowledges_new("q", 10)


def test_an_acknowledgement_beyond_what_was_handed_out_is_not_progress() -> None:
    ledger = PollLedger()
    assert ledger.answered("q", -1, 4)
    assert not ledger.acknowledges_new("q", 5)
    assert not ledger.acknowledges_new("q", 1_000_000)
    assert ledger.acknowledges_new("q", 4)


def test_a_refused_acknowledgement_is_a_wasted_poll() -> None:
    clock = Clock()
    limits = limiter(clock, polls=(Rule(60, 3),))
    first = limits.begin_poll(7, "q", None)
    limits.end_poll(first, answered=True, newest_event=4, held=False)
    # The review's spin: dont_block with an id the queue never had, answered 400 each time.
    for _ in range(3):
        ticket = limits.begin_poll(7, "q", 1_000_000)
        limits.end_poll(ticket, answered=False, newest_event=None, held=False)
    with pytest.raises(RateLimited):
        limits.begin_poll(7, "q", 1_000_000)
    # An acknowledgement the ledger believed new, refused by the service all the same
    # (the queue was rebuilt elsewhere, say), is charged as well.
    clock.now += 60
    for _ in range(3):
        ticket = limits.begin_poll(7, "q", 4)
        assert ticket.acknowledges_new
        limits.end_poll(ticket, answered=False, newest_event=None, held=False)
    assert limits.polls is not None
    assert limits.polls.check(7, clock()).remaining == 0


def test_the_ledger_is_bounded() -> None:
    ledger = PollLedger(capacity=10)
    for index in range(100):
        ledger.answered(f"q{index}", None, 1)
    assert len(ledger) == 10


def limiter(clock: Clock, **rules: Any) -> RateLimiter:
    limits = RateLimits(**rules)
    return RateLimiter(limits, AbuseMonitor(clock), clock=clock, wall_clock=clock)


def test_only_wasted_polls_count() -> None:
    clock = Clock()
    limits = limiter(clock, polls=(Rule(60, 3),))

    def poll(
        queue: str, last: int | None, newest: int | None, held: bool = False, typing: bool = False
    ) -> None:
        ticket = limits.begin_poll(7, queue, last)
        limits.end_poll(ticket, answered=True, newest_event=newest, held=held, ephemeral=typing)

    # A busy queue: each poll acknowledges the last batch and gets new events.
    poll("q", None, 3)
    for batch in range(100):
        poll("q", 3 + batch, 4 + batch)
    # An idle one: each poll is held until its heartbeat.
    for _ in range(100):
        poll("q", 103, None, held=True)
    # A busy conversation: each answer carries only typing events, whose ids do not
    # advance (ephemeral events carry the newest durable id), but are never repeated.
    for _ in range(100):
        poll("q", 103, 103, typing=True)
    # Wasted: dont_block on an empty queue, or re-fetching without acknowledging.
    poll("q", 103, None)
    poll("q", 103, None)
    poll("q", 103, None)
    with pytest.raises(RateLimited) as refused:
        poll("q", 103, None)
    assert refused.value.status == 429 and refused.value.code == "RATE_LIMIT_HIT"
    # Spent, but a poll acknowledging new events (103 -> 104) is never refused.
    limits.ledger.answered("q", 103, 104)
    poll("q", 104, None)
    # An error answer is a wasted poll too, charged to the same user.
    with pytest.raises(RateLimited):
        limits.begin_poll(7, None, None)
    clock.now += 60
    ticket = limits.begin_poll(7, "unknown", None)
    limits.end_poll(ticket, answered=False, newest_event=None, held=False)
    assert limits.polls is not None
    assert limits.polls.check(7, clock()).remaining == 2


# -- authentication failures -----------------------------------------------------------


def refusal(action: Any) -> tuple[str, Mapping[str, str], float]:
    with pytest.raises(RateLimited) as caught:
        action()
    return caught.value.msg, caught.value.headers, caught.value.extra["retry-after"]


def test_failures_by_email_are_answered_the_same_whether_or_not_it_exists() -> None:
    clock = Clock()
    limits = limiter(clock, auth_failures_email=(Rule(60, 3),), auth_failures_address=())
    answers = []
    for email in ("member@zulip.example.com", "nobody@zulip.example.com"):
        for _ in range(3):
            limits.before_authentication("10.0.0.1", email, None)
            limits.authentication_failed("10.0.0.1", email, None)
            clock.now += 1
        # Case and surrounding blanks do not make a new email.
        answers.append(
            refusal(lambda e=email: limits.before_authentication("10.0.0.2", f" {e.upper()}", None))
        )
        clock.now -= 3  # the same timeline for the second email
    assert answers[0] == answers[1]
    assert answers[0][2] == pytest.approx(57.0)


def test_an_authenticated_connection_keeps_working_for_its_own_email_only() -> None:
    clock = Clock()
    limits = limiter(
        clock, auth_failures_email=(Rule(60, 2),), auth_failures_address=(Rule(60, 4),)
    )
    victim, attacker = Connection(), Connection()
    limits.authenticated(victim, "member@zulip.example.com")
    limits.authenticated(attacker, "eve@zulip.example.com")
    for _ in range(2):
        limits.authentication_failed("10.0.0.9", "member@zulip.example.com", None)
    for index in range(2):
        limits.authentication_failed("10.0.0.9", f"x{index}@zulip.example.com", None)
    # The email and the address are both spent: a new connection is refused ...
    refusal(lambda: limits.before_authentication("10.0.0.9", "member@zulip.example.com", None))
    refusal(lambda: limits.before_authentication("10.0.0.9", "new@zulip.example.com", None))
    # ... the victim's authenticated connection is not, for its own email ...
    limits.before_authentication("10.0.0.9", "member@zulip.example.com", victim)
    # ... and an attacker's authenticated connection gains nothing for other emails.
    refusal(lambda: limits.before_authentication("10.0.0.9", "member@zulip.example.com", attacker))
    # A wrong key on the trusted connection ends its exemption.
    limits.authentication_failed("10.0.0.9", "member@zulip.example.com", victim)
    refusal(lambda: limits.before_authentication("10.0.0.9", "member@zulip.example.com", victim))


def test_turned_off_nothing_is_counted() -> None:
    clock = Clock()
    limits = limiter(clock, enabled=False)
    for _ in range(10_000):
        assert limits.user_request(1) == {}
        assert limits.anonymous_request("10.0.0.1") == {}
        limits.authentication_failed("10.0.0.1", "a@b", None)
        limits.before_authentication("10.0.0.1", "a@b", None)


# -- the once-a-minute log -------------------------------------------------------------


def test_each_offender_is_logged_once_a_minute_and_every_hit_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    monitor = AbuseMonitor(clock)
    with caplog.at_level(logging.WARNING, logger="eventq.abuse"):
        for _ in range(500):
            monitor.record(RATE_LIMIT_USER, "user 1")
            monitor.record(RATE_LIMIT_USER, "user 2")
            clock.now += 0.1  # 50 s in all
        assert len(caplog.records) == 2
        clock.now += LOG_INTERVAL_SECS
        monitor.record(RATE_LIMIT_USER, "user 1")
    assert len(caplog.records) == 3
    assert "499 more in the last minute" in caplog.records[-1].getMessage()
    assert monitor.snapshot() == {RATE_LIMIT_USER: 1001}


# -- quotas ----------------------------------------------------------------------------


def test_subscription_requests_are_capped() -> None:
    monitor = AbuseMonitor()
    check_subscription_request(1, MAX_SUBSCRIPTION_CHANNELS, None, monitor)
    check_subscription_request(1, 1, MAX_SUBSCRIPTION_PRINCIPALS, monitor)
    too_big = [
        (MAX_SUBSCRIPTION_CHANNELS + 1, None),
        (1, MAX_SUBSCRIPTION_PRINCIPALS + 1),
        (MAX_SUBSCRIPTION_PAIRS // MAX_SUBSCRIPTION_PRINCIPALS + 1, MAX_SUBSCRIPTION_PRINCIPALS),
    ]
    for channels, principals in too_big:
        with pytest.raises(BadRequest, match="Too many subscriptions"):
            check_subscription_request(1, channels, principals, monitor)
    assert sum(monitor.snapshot().values()) == 3


async def test_keyed_lock_serializes_one_key_and_forgets_it() -> None:
    locks = KeyedLock()
    order: list[str] = []
    entered: asyncio.Queue[str] = asyncio.Queue()
    gate = asyncio.Event()

    async def hold(key: str, name: str) -> None:
        async with locks.hold(key):
            order.append(f"{name} in")
            entered.put_nowait(name)
            await gate.wait()
            order.append(f"{name} out")

    # Started in this order, "second" would enter before "other" if it were not held.
    tasks = [asyncio.create_task(hold("a", "first")), asyncio.create_task(hold("a", "second"))]
    other = asyncio.create_task(hold("b", "other"))
    async with asyncio.timeout(5):
        assert {await entered.get(), await entered.get()} == {"first", "other"}
    assert order == ["first in", "other in"]
    gate.set()
    async with asyncio.timeout(5):
        await asyncio.gather(*tasks, other)
    assert order.index("first out") < order.index("second in")
    assert len(locks) == 0


# -- settings --------------------------------------------------------------------------


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("EVENTQ_"):
            monkeypatch.delenv(name)
    settings = Settings.from_env("sqlite://")
    assert settings.header_timeout_secs == DEFAULT_HEADER_TIMEOUT_SECS
    assert settings.max_connections is None
    assert settings.max_queues_per_user == 100
    assert settings.rate_limits == RateLimits()
    assert settings.rate_limits.user == (Rule(60, 200),)
    assert settings.rate_limits.address == (Rule(60, 100),)


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTQ_HEADER_TIMEOUT_SECS", "2")
    monkeypatch.setenv("EVENTQ_BODY_TIMEOUT_SECS", "7.5")
    monkeypatch.setenv("EVENTQ_MAX_CONNECTIONS", "500")
    monkeypatch.setenv("EVENTQ_MAX_QUEUES_PER_USER", "5")
    monkeypatch.setenv("EVENTQ_RATE_LIMIT_USER", "1:20,60:300")
    monkeypatch.setenv("EVENTQ_RATE_LIMIT_POLLS", "off")
    settings = Settings.from_env("sqlite://")
    assert (settings.header_timeout_secs, settings.body_timeout_secs) == (2.0, 7.5)
    assert (settings.max_connections, settings.max_queues_per_user) == (500, 5)
    assert settings.rate_limits.user == (Rule(1, 20), Rule(60, 300))
    assert settings.rate_limits.polls == ()
    monkeypatch.setenv("EVENTQ_RATE_LIMITING", "off")
    assert not Settings.from_env("sqlite://").rate_limits.enabled


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EVENTQ_HEADER_TIMEOUT_SECS", "0"),
        ("EVENTQ_HEADER_TIMEOUT_SECS", "soon"),
        ("EVENTQ_BODY_TIMEOUT_SECS", "99999"),
        ("EVENTQ_MAX_CONNECTIONS", "3"),
        ("EVENTQ_MAX_CONNECTIONS", "many"),
        ("EVENTQ_MAX_QUEUES_PER_USER", "0"),
        ("EVENTQ_RATE_LIMIT_ADDRESS", "100 per minute"),
        ("EVENTQ_RATE_LIMITING", "maybe"),
    ],
)
def test_bad_settings_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        Settings.from_env("sqlite://")


def test_the_connection_cap_leaves_descriptors_for_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server.api.connections, "descriptor_limit", lambda: 1024)
    assert connection_cap(None) == 1024 - RESERVED_FDS
    assert connection_cap(100) == 100
    assert connection_cap(5000) == 1024 - RESERVED_FDS
    monkeypatch.setattr(server.api.connections, "descriptor_limit", lambda: None)
    assert connection_cap(None) == server.api.connections.MAX_CONNECTIONS_CEILING
