"""Who is calling: HTTP Basic credentials checked against an in-process cache.

A poll of a warm queue must not wait for the database, so the users an email names
(an email is unique per realm, not across realms) are cached after their first lookup,
and the outbox consumer keeps the cache true: every routed `realm_user` event (creation,
deactivation, reactivation, any change of a user) forgets the user's entry, so the next
request reads the user again. Authentication is therefore exactly as current as the
routed outbox, which is also when the deactivation cut-off ends a user's queues. A
change made behind eventq's actions (an UPDATE by hand) is picked up within
`CREDENTIALS_TTL_SECS`.

Keys are compared in constant time against every candidate, so timing reveals neither
which key nor whether the email exists; unknown emails are not cached, so a guessing
loop cannot fill memory (the cache is also bounded, least recently used first out).
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# A safety net only: every change made through eventq's actions reaches the cache at
# once through the outbox. A minute bounds how long a hand-made change goes unseen.
CREDENTIALS_TTL_SECS = 60.0
# About 200 bytes an entry: 100,000 entries (a large realm's every user) cost ~20 MB.
MAX_CACHED_EMAILS = 100_000


@dataclass(frozen=True, slots=True)
class Credentials:
    """One user as authentication needs them."""

    user_id: int
    realm_id: int
    email: str
    role: int
    api_key: bytes
    is_active: bool


@dataclass(frozen=True, slots=True)
class _Entry:
    candidates: tuple[Credentials, ...]
    fetched_at: float


def normalize_email(email: str) -> str:
    """Emails are stored lower-case; a client may send any case and stray spaces."""
    return email.strip().lower()


def match_key(candidates: tuple[Credentials, ...], api_key: str) -> Credentials | None:
    """The candidate whose key is `api_key`, comparing every one in constant time."""
    presented = api_key.encode()
    matched = None
    for candidate in candidates:
        if hmac.compare_digest(candidate.api_key, presented):
            matched = candidate
    return matched


class CredentialsCache:
    """Email -> the users with that email, kept true by the routed outbox."""

    def __init__(
        self,
        *,
        ttl_secs: float = CREDENTIALS_TTL_SECS,
        max_emails: int = MAX_CACHED_EMAILS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._emails_by_user: dict[int, str] = {}
        self._ttl = ttl_secs
        self._max = max_emails
        self._monotonic = monotonic
        self._generation = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, email: str) -> tuple[Credentials, ...] | None:
        """The cached candidates of a normalized email, or None to read them again."""
        entry = self._entries.get(email)
        if entry is None or self._monotonic() - entry.fetched_at >= self._ttl:
            self.misses += 1
            return None
        self._entries.move_to_end(email)
        self.hits += 1
        return entry.candidates

    @property
    def generation(self) -> int:
        """Changes whenever a user is forgotten; read it before a lookup."""
        return self._generation

    def put(self, email: str, candidates: tuple[Credentials, ...], generation: int) -> None:
        """Remember what a lookup read, unless a user was forgotten since it began
        (`generation` read before the lookup): its result may predate that change.
        Changes are rare, so skipping the cache then costs nothing."""
        if not candidates or generation != self._generation:
            return
        self._entries[email] = _Entry(candidates, self._monotonic())
        self._entries.move_to_end(email)
        for candidate in candidates:
            self._emails_by_user[candidate.user_id] = email
        while len(self._entries) > self._max:
            _, evicted = self._entries.popitem(last=False)
            for candidate in evicted.candidates:
                self._emails_by_user.pop(candidate.user_id, None)

    def forget_user(self, user_id: int) -> None:
        """The user changed (a routed `realm_user` event): read them again next time."""
        self._generation += 1
        email = self._emails_by_user.pop(user_id, None)
        if email is not None:
            entry = self._entries.pop(email, None)
            if entry is not None:
                for candidate in entry.candidates:
                    self._emails_by_user.pop(candidate.user_id, None)
