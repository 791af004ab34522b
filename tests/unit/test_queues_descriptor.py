"""Tests for queues.descriptor: lifespan, User-Agent parsing, legacy client
rules, and ClientDescriptor filtering, delivery, expiry and summary."""

import pytest

from queues.descriptor import (
    DEFAULT_QUEUE_LIFESPAN_SECS,
    MAX_QUEUE_LIFESPAN_SECS,
    MIN_QUEUE_LIFESPAN_SECS,
    ClientDescriptor,
    LegacyClientRule,
    clamp_lifespan,
    parse_legacy_rules,
    parse_user_agent,
    uses_legacy_deactivation,
    version_tuple,
)
from queues.queue import MAX_QUEUE_LENGTH, EventQueue, QueueOverflow
from queues.types import Capabilities, SharedEvent


def make_client(
    *,
    event_types: frozenset[str] | None = None,
    legacy_deactivation: bool = False,
    now: float = 1000.0,
    lifespan_secs: int = 600,
) -> ClientDescriptor:
    return ClientDescriptor(
        queue_id="q1",
        realm_id=2,
        user_id=10,
        event_types=event_types,
        capabilities=Capabilities(),
        client_name="ZulipMobile",
        client_version="27.0",
        lifespan_secs=lifespan_secs,
        now=now,
        queue=EventQueue(),
        legacy_deactivation=legacy_deactivation,
    )


def ev(seq: int, event_type: str = "realm_user", legacy_skip: bool = False) -> SharedEvent:
    return SharedEvent(2, seq, {"type": event_type}, [10], legacy_skip=legacy_skip)


def test_lifespan_constants_are_ordered() -> None:
    assert MIN_QUEUE_LIFESPAN_SECS <= DEFAULT_QUEUE_LIFESPAN_SECS <= MAX_QUEUE_LIFESPAN_SECS


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (None, DEFAULT_QUEUE_LIFESPAN_SECS),
        (0, DEFAULT_QUEUE_LIFESPAN_SECS),
        (1, MIN_QUEUE_LIFESPAN_SECS),
        (120, 120),
        (10**9, MAX_QUEUE_LIFESPAN_SECS),
    ],
)
def test_clamp_lifespan(requested: int | None, expected: int) -> None:
    assert clamp_lifespan(requested) == expected


def test_clamp_lifespan_rejects_negative() -> None:
    with pytest.raises(ValueError, match="lifespan_secs must not be negative, got -5"):
        clamp_lifespan(-5)


@pytest.mark.parametrize(
    ("user_agent", "expected"),
    [
        ("ZulipMobile/27.0 (Android 10)", ("ZulipMobile", "27.0")),
        ("ZulipPython/0.9.1", ("ZulipPython", "0.9.1")),
        ("Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0", ("Mozilla", "5.0")),
        ("ZulipTerminal/0.7.0 Python/3.11", ("ZulipTerminal", "0.7.0")),
        ("curl", ("curl", None)),
        ("Foo/", ("Foo", None)),
        ("/1.0", ("Unspecified", "1.0")),
        ("   ", ("Unspecified", None)),
        ("", ("Unspecified", None)),
        (None, ("Unspecified", None)),
    ],
)
def test_parse_user_agent(user_agent: str | None, expected: tuple[str, str | None]) -> None:
    assert parse_user_agent(user_agent) == expected


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("27.0", (27, 0)),
        ("27.10", (27, 10)),
        ("0.9.1", (0, 9, 1)),
        ("1.2beta3", (1, 2)),
        ("27.0-rc1", (27, 0)),
        ("1..2", (1,)),
        ("beta", ()),
        ("", ()),
    ],
)
def test_version_tuple(version: str, expected: tuple[int, ...]) -> None:
    assert version_tuple(version) == expected


def test_version_tuple_orders_numerically() -> None:
    assert version_tuple("27.0") < version_tuple("27.10")
    assert version_tuple("27.9") < version_tuple("27.10")


def test_legacy_rule_matches() -> None:
    rule = LegacyClientRule("ZulipMobile", "27.1")
    assert rule.matches("ZulipMobile", "27.0")
    assert rule.matches("ZulipMobile", "26.99")
    assert rule.matches("ZulipMobile", None)
    assert rule.matches("ZulipMobile", "nightly")
    assert not rule.matches("ZulipMobile", "27.1")
    assert not rule.matches("ZulipMobile", "27.1.0")
    assert not rule.matches("ZulipMobile", "27.10")
    assert not rule.matches("ZulipMobile", "28")
    assert not rule.matches("ZulipTerminal", "1.0")
    assert not rule.matches("ZulipTerminal", None)


def test_legacy_rule_pads_short_versions() -> None:
    rule = LegacyClientRule("X", "27.0")
    assert not rule.matches("X", "27")
    assert rule.matches("X", "26")


def test_legacy_rule_validates() -> None:
    with pytest.raises(ValueError, match="legacy client rule needs a client name"):
        LegacyClientRule("", "1.0")
    with pytest.raises(ValueError, match="version '1.x' is not dotted numbers"):
        LegacyClientRule("X", "1.x")


def test_parse_legacy_rules() -> None:
    assert parse_legacy_rules("") == ()
    assert parse_legacy_rules("   ") == ()
    assert parse_legacy_rules("ZulipMobile<27.1,ZulipTerminal<0.8") == (
        LegacyClientRule("ZulipMobile", "27.1"),
        LegacyClientRule("ZulipTerminal", "0.8"),
    )
    assert parse_legacy_rules(" ZulipMobile < 27.1 , X<2 ") == (
        LegacyClientRule("ZulipMobile", "27.1"),
        LegacyClientRule("X", "2"),
    )


@pytest.mark.parametrize("spec", ["ZulipMobile", "<1.0", "Zulip Mobile<1.0", "A/b<1"])
def test_parse_legacy_rules_bad_name(spec: str) -> None:
    with pytest.raises(ValueError, match=r"bad legacy client rule .*: expected Name<version"):
        parse_legacy_rules(spec)


@pytest.mark.parametrize(
    "spec", ["ZulipMobile<", "ZulipMobile<1.x", "A<1,,B<2", "A<1.", "A<1,", "A<<1"]
)
def test_parse_legacy_rules_bad_version(spec: str) -> None:
    with pytest.raises(ValueError, match=r"bad legacy client rule"):
        parse_legacy_rules(spec)


def test_uses_legacy_deactivation() -> None:
    rules = parse_legacy_rules("ZulipMobile<27.1")
    declared = Capabilities(deactivation_peer_events=True)
    assert uses_legacy_deactivation(Capabilities(), "ZulipMobile", "27.0", rules)
    assert uses_legacy_deactivation(Capabilities(), "ZulipMobile", None, rules)
    # The capability always wins.
    assert not uses_legacy_deactivation(declared, "ZulipMobile", "27.0", rules)
    # Unlisted clients and new versions get the full sequence.
    assert not uses_legacy_deactivation(Capabilities(), "website", None, rules)
    assert not uses_legacy_deactivation(Capabilities(), "ZulipMobile", "27.1", rules)
    assert not uses_legacy_deactivation(Capabilities(), "ZulipMobile", "1.0", ())


def test_descriptor_attributes() -> None:
    client = make_client(event_types=frozenset({"realm_user"}), now=5.0)
    assert client.queue_id == "q1"
    assert (client.realm_id, client.user_id) == (2, 10)
    assert client.last_active == 5.0
    assert client.waiter is None
    assert client.expires_at == 605.0
    assert "q1" in repr(client)


def test_accepts_filters_by_type() -> None:
    client = make_client(event_types=frozenset({"realm_user"}))
    assert client.accepts(ev(1, "realm_user"))
    assert not client.accepts(ev(1, "subscription"))
    assert make_client(event_types=None).accepts(ev(1, "anything"))
    assert not make_client(event_types=frozenset()).accepts(ev(1, "realm_user"))


def test_accepts_legacy_skip_only_for_legacy_clients() -> None:
    peer_remove = ev(1, "subscription", legacy_skip=True)
    assert make_client(legacy_deactivation=False).accepts(peer_remove)
    assert not make_client(legacy_deactivation=True).accepts(peer_remove)
    assert make_client(legacy_deactivation=True).accepts(ev(1, "subscription"))


def test_deliver_pushes_skips_and_ignores_duplicates() -> None:
    client = make_client(event_types=frozenset({"realm_user"}))
    assert client.deliver(ev(1, "realm_user"))
    assert not client.deliver(ev(2, "stream"))
    assert client.queue.last_seq == 2
    assert client.queue.next_event_id == 1
    # A duplicate from catch-up (seq <= last_seq) changes nothing.
    assert not client.deliver(ev(1, "realm_user"))
    assert not client.deliver(ev(2, "realm_user"))
    assert len(client.queue) == 1
    assert client.deliver(ev(3, "realm_user"))
    assert [entry.event_id for entry in client.queue.contents()] == [0, 1]


def test_deliver_propagates_overflow() -> None:
    client = make_client()
    for seq in range(1, MAX_QUEUE_LENGTH + 1):
        client.deliver(ev(seq))
    with pytest.raises(QueueOverflow):
        client.deliver(ev(MAX_QUEUE_LENGTH + 1))


def test_expiry_and_touch() -> None:
    client = make_client(now=1000.0, lifespan_secs=600)
    assert not client.expired(1599.9)
    assert client.expired(1600.0)
    client.touch(1500.0)
    assert client.last_active == 1500.0
    assert not client.expired(1600.0)
    assert client.expired(2100.0)


def test_client_with_waiter_never_expires() -> None:
    client = make_client(now=0.0)
    client.waiter = object()
    assert not client.expired(10.0**9)
    client.waiter = None
    assert client.expired(10.0**9)


def test_to_summary() -> None:
    client = make_client(event_types=frozenset({"subscription", "realm_user"}), now=100.0)
    client.deliver(ev(1))
    assert client.to_summary(now=160.0) == {
        "queue_id": "q1",
        "user_id": 10,
        "realm_id": 2,
        "client_name": "ZulipMobile",
        "client_version": "27.0",
        "capabilities": {"deactivation_peer_events": False, "stream_typing_notifications": False},
        "event_types": ["realm_user", "subscription"],
        "pending": 1,
        "last_active": 100.0,
        "expires_in": 540.0,
        "waiting": False,
        "legacy_deactivation": False,
    }
    summary = make_client(now=0.0).to_summary(now=10_000.0)
    assert summary["event_types"] is None
    assert summary["expires_in"] == 0.0
