"""The client's subscription to a queue (Zulip's ``ClientDescriptor``): who
owns it, what it filters, what the client understands, the opaque waiting-poll
slot, and idle expiry. Also the User-Agent parsing and the "legacy client"
rules that decide which deactivation sequence a client receives.

The descriptor decides *whether* an event goes into its queue (`deliver`),
and in which form (raw Markdown or HTML for a `message`); the queue data itself
is `queues.queue.EventQueue`. It decides the same for an ephemeral event
(`offer_ephemeral`): the ``event_types`` filter, and the client capability the
event may require; such an event never touches the outbox positions. The filter (``event_types``,
``legacy_deactivation``, and the ``narrow`` that applies to `message` events
only) is fixed at register, which is what makes replaying the outbox into a
rebuilt queue deterministic.

Not thread-safe; call from the IOLoop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from queues.queue import EphemeralEvent, EventQueue
from queues.types import Capabilities, MessageFilter, SharedEvent

# Zulip's default idle lifespan for a queue with no waiting poll: long enough
# to survive a page reload or a short network outage, short enough that
# abandoned browser tabs free their queues within minutes.
DEFAULT_QUEUE_LIFESPAN_SECS = 600

# Zulip's ceiling (one week) for clients that ask for a long lifespan, such as
# mobile apps that sleep. A long lifespan costs outbox retention, not memory,
# since an idle queue can be evicted and rebuilt (docs/architecture.md §5).
MAX_QUEUE_LIFESPAN_SECS = 7 * 24 * 3600

# Floor on a requested lifespan. The GC sweep runs every 60 s, so a shorter
# lifespan could not be honoured anyway, and a client asking for seconds
# would lose its queue between two ordinary polls. Tests never need less:
# they inject ``now`` instead of waiting.
MIN_QUEUE_LIFESPAN_SECS = 60

# Client name Zulip records when a request carries no usable User-Agent.
UNSPECIFIED_CLIENT_NAME = "Unspecified"


def clamp_lifespan(requested: int | None) -> int:
    """The lifespan a queue gets for a requested ``lifespan_secs``.

    None or 0 means the default (Zulip treats 0 as "not given"); other values
    are clamped into [MIN_QUEUE_LIFESPAN_SECS, MAX_QUEUE_LIFESPAN_SECS].
    A negative value is a client bug and raises `ValueError`.
    """
    if requested is None or requested == 0:
        return DEFAULT_QUEUE_LIFESPAN_SECS
    if requested < 0:
        raise ValueError(f"lifespan_secs must not be negative, got {requested}")
    return max(MIN_QUEUE_LIFESPAN_SECS, min(MAX_QUEUE_LIFESPAN_SECS, requested))


def parse_user_agent(user_agent: str | None) -> tuple[str, str | None]:
    """Client name and version from a User-Agent header, Zulip style.

    The first product token ``Name/Version`` counts; any comment after it is
    ignored: ``"ZulipMobile/27.0 (Android 10)"`` gives ``("ZulipMobile",
    "27.0")`` and ``"Mozilla/5.0 ..."`` gives ``("Mozilla", "5.0")``. A token
    without ``/`` has no version. An empty or missing header, or an empty
    name, gives ``"Unspecified"``.
    """
    if not user_agent:
        return (UNSPECIFIED_CLIENT_NAME, None)
    tokens = user_agent.split(None, 1)
    if not tokens:
        return (UNSPECIFIED_CLIENT_NAME, None)
    name, _, version = tokens[0].partition("/")
    return (name or UNSPECIFIED_CLIENT_NAME, version or None)


def version_tuple(version: str) -> tuple[int, ...]:
    """Numeric components of a dotted version, for ordering "27.0" < "27.10".

    Parsing stops at the first component that is not purely numeric; that
    component's leading digits still count ("1.2beta3" -> (1, 2),
    "27.0-rc1" -> (27, 0), "beta" -> ()).
    """
    parts: list[int] = []
    for component in version.strip().split("."):
        digits = 0
        while digits < len(component) and component[digits] in "0123456789":
            digits += 1
        if digits:
            parts.append(int(component[:digits]))
        if digits != len(component) or not digits:
            break
    return tuple(parts)


def _version_below(version: tuple[int, ...], bound: tuple[int, ...]) -> bool:
    # Pad with zeros so "27" and "27.0" compare equal; plain tuple order
    # would put (27,) before (27, 0).
    width = max(len(version), len(bound))
    return version + (0,) * (width - len(version)) < bound + (0,) * (width - len(bound))


@dataclass(frozen=True)
class LegacyClientRule:
    """Clients named ``client_name`` with a version strictly below
    ``below_version`` predate deactivation peer events."""

    client_name: str
    below_version: str

    def __post_init__(self) -> None:
        if not self.client_name:
            raise ValueError("legacy client rule needs a client name")
        if not _is_plain_version(self.below_version):
            raise ValueError(
                f"legacy client rule for {self.client_name!r}: version "
                f"{self.below_version!r} is not dotted numbers like 27.1"
            )

    def matches(self, client_name: str, client_version: str | None) -> bool:
        """True for this client below the bound. A missing version, or one
        with no leading number, counts as legacy for that name: we cannot
        tell, and the legacy sequence is the one old clients are known to
        handle."""
        if client_name != self.client_name:
            return False
        if client_version is None:
            return True
        parsed = version_tuple(client_version)
        if not parsed:
            return True
        return _version_below(parsed, version_tuple(self.below_version))


def _is_plain_version(text: str) -> bool:
    return bool(text) and all(part.isdigit() and part.isascii() for part in text.split("."))


def parse_legacy_rules(spec: str) -> tuple[LegacyClientRule, ...]:
    """Parse a setting like ``"ZulipMobile<27.1,ZulipTerminal<0.8"``.

    Blank means no rules. Spaces around items are ignored. Anything else that
    is not ``Name<dotted.version`` raises `ValueError` naming the bad item.
    """
    if not spec.strip():
        return ()
    rules: list[LegacyClientRule] = []
    for raw_item in spec.split(","):
        item = raw_item.strip()
        name, sep, version = item.partition("<")
        name, version = name.strip(), version.strip()
        if not sep or not name or any(ch.isspace() or ch in "/<" for ch in name):
            raise ValueError(
                f"bad legacy client rule {item!r}: expected Name<version, e.g. ZulipMobile<27.1"
            )
        if not _is_plain_version(version):
            raise ValueError(
                f"bad legacy client rule {item!r}: version {version!r} is not "
                "dotted numbers like 27.1"
            )
        rules.append(LegacyClientRule(name, version))
    return tuple(rules)


def uses_legacy_deactivation(
    capabilities: Capabilities,
    client_name: str,
    client_version: str | None,
    rules: Iterable[LegacyClientRule],
) -> bool:
    """Whether a client gets the legacy deactivation sequence (the
    realm_user update alone, without the peer_remove events).

    A client declaring ``deactivation_peer_events`` always gets the full
    sequence; a client matched by a legacy rule (its version predates the
    change) gets the legacy one; every other client gets the full sequence.
    """
    if capabilities.deactivation_peer_events:
        return False
    return any(rule.matches(client_name, client_version) for rule in rules)


class ClientDescriptor:
    """One registered queue: its owner, filter, capabilities, waiting-poll
    slot and idle expiry, around the `EventQueue` that holds its events."""

    __slots__ = (
        "queue_id",
        "realm_id",
        "user_id",
        "event_types",
        "capabilities",
        "client_name",
        "client_version",
        "lifespan_secs",
        "last_active",
        "queue",
        "legacy_deactivation",
        "waiter",
        "narrow",
        "apply_markdown",
    )

    def __init__(
        self,
        *,
        queue_id: str,
        realm_id: int,
        user_id: int,
        event_types: frozenset[str] | None,
        capabilities: Capabilities,
        client_name: str,
        client_version: str | None,
        lifespan_secs: int,
        now: float,
        queue: EventQueue,
        legacy_deactivation: bool,
        narrow: MessageFilter | None = None,
        apply_markdown: bool = True,
    ) -> None:
        self.queue_id = queue_id
        self.realm_id = realm_id
        self.user_id = user_id
        # None: every event type; a set: only those types.
        self.event_types = event_types
        self.capabilities = capabilities
        self.client_name = client_name
        self.client_version = client_version
        # Stored as given: the register handler applies clamp_lifespan, and a
        # descriptor rebuilt from storage keeps the value it had.
        self.lifespan_secs = lifespan_secs
        self.last_active = now
        self.queue = queue
        # Decided once at register (uses_legacy_deactivation) and never
        # recomputed, so a replay filters exactly as the original did.
        self.legacy_deactivation = legacy_deactivation
        # The waiting long-poll, owned and interpreted by the server only.
        self.waiter: object | None = None
        # The register's `narrow`, for `message` events only (None: every message); like
        # the rest of the filter, never changed after register.
        self.narrow = narrow
        # False: `message` events come with the content as written (raw Markdown).
        self.apply_markdown = apply_markdown

    def __repr__(self) -> str:
        return (
            f"ClientDescriptor(queue_id={self.queue_id!r}, user_id={self.user_id}, "
            f"realm_id={self.realm_id}, client={self.client_name!r}, queue={self.queue!r})"
        )

    def touch(self, now: float) -> None:
        """Record client activity (a poll started or ended); restarts expiry."""
        self.last_active = now

    def accepts(self, event: SharedEvent) -> bool:
        """Whether this client's filter lets ``event`` into its queue."""
        if self.event_types is not None and event.type not in self.event_types:
            return False
        if event.legacy_skip and self.legacy_deactivation:
            return False
        return self.narrow is None or event.type != "message" or self.narrow(event.data)

    def deliver(self, event: SharedEvent) -> bool:
        """Offer one outbox event; True if it was pushed onto the queue.

        An event at or before ``queue.last_seq`` was already considered (a
        duplicate from catch-up after a rebuild) and is ignored. May raise
        `queues.queue.QueueOverflow` from the push.
        """
        if event.seq <= self.queue.last_seq:
            return False
        if self.accepts(event):
            self.queue.push(event if self.apply_markdown else event.raw_markdown_variant())
            return True
        self.queue.skip(event.seq)
        return False

    def accepts_ephemeral(self, event: EphemeralEvent) -> bool:
        """Whether this client's filter lets the ephemeral ``event`` into its queue: its
        ``event_types``, and the capability the event requires, if any."""
        if self.event_types is not None and event.type not in self.event_types:
            return False
        needed = event.required_capability
        return needed is None or getattr(self.capabilities, needed, False) is True

    def offer_ephemeral(self, event: EphemeralEvent, now: float) -> bool:
        """Offer an ephemeral event; True if the queue keeps it for its next answer."""
        if not self.accepts_ephemeral(event):
            return False
        self.queue.offer_ephemeral(event, now)
        return True

    @property
    def expires_at(self) -> float:
        return self.last_active + self.lifespan_secs

    def expired(self, now: float) -> bool:
        """Idle past its lifespan with no waiting poll. A client parked in a
        long-poll is alive by definition, however old ``last_active`` is."""
        return self.waiter is None and now >= self.expires_at

    def to_summary(self, now: float) -> dict[str, Any]:
        """A JSON-ready description for the admin listing."""
        return {
            "queue_id": self.queue_id,
            "user_id": self.user_id,
            "realm_id": self.realm_id,
            "client_name": self.client_name,
            "client_version": self.client_version,
            "capabilities": self.capabilities.to_dict(),
            "event_types": None if self.event_types is None else sorted(self.event_types),
            "pending": len(self.queue),
            "last_active": self.last_active,
            # Never negative: an overdue queue just waits for the next sweep.
            "expires_in": max(0.0, self.expires_at - now),
            "waiting": self.waiter is not None,
            "legacy_deactivation": self.legacy_deactivation,
        }
