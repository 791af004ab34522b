"""Authentication: the user an email and API key name, from the credentials cache
(`server.engine.credentials`) or, on a miss, from one database read per email.

Owns `AuthenticatedUser` (the caller as the rest of the engine sees it) and the reads
that fill the cache. The cache itself belongs to the event service, which shares it
with the outbox consumer: that forgets a user whenever a routed event changes them, so
authentication is as current as the routed outbox.

Runs on the event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy import select

from models.database import Database
from models.tables import UserProfile
from server.engine.credentials import Credentials, CredentialsCache, match_key, normalize_email
from server.engine.database_threads import DatabaseThreads
from server.engine.errors import InvalidApiKey, UserDeactivated


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    """The caller, as authentication found it."""

    id: int
    realm_id: int
    email: str
    role: int


def _authenticated(candidates: tuple[Credentials, ...], api_key: str) -> AuthenticatedUser:
    """The candidate whose key this is (compared in constant time), if active."""
    matched = match_key(candidates, api_key)
    if matched is None:
        raise InvalidApiKey()
    if not matched.is_active:
        raise UserDeactivated()
    return AuthenticatedUser(matched.user_id, matched.realm_id, matched.email, matched.role)


class Authenticator:
    """Checks credentials against the cache, reading (and caching) the ones it lacks."""

    def __init__(
        self, db: Database, threads: DatabaseThreads, credentials: CredentialsCache
    ) -> None:
        self.db = db
        self.threads = threads
        self.credentials = credentials
        # Normalized email -> the database read of its credentials in flight.
        self._credential_reads: dict[str, asyncio.Future[tuple[Credentials, ...]]] = {}

    def authenticate_cached(self, email: str, api_key: str) -> AuthenticatedUser | None:
        """`authenticate` from the cache alone; None if the email is not cached.

        Synchronous, so that the hot path (a poll of a warm queue) awaits no coroutine.
        """
        candidates = self.credentials.get(normalize_email(email))
        if candidates is None:
            return None
        return _authenticated(candidates, api_key)

    async def authenticate(self, email: str, api_key: str) -> AuthenticatedUser:
        """The user whose email and API key these are; a warm cache needs no database."""
        normalized = normalize_email(email)
        candidates = self.credentials.get(normalized)
        if candidates is None:
            # One read per email at a time: when a busy user's entry expires, their
            # many polls arriving together share one read instead of one each.
            reading = self._credential_reads.get(normalized)
            if reading is None:
                reading = asyncio.ensure_future(self._load_credentials(normalized))
                self._credential_reads[normalized] = reading
                reading.add_done_callback(
                    lambda done: (
                        self._credential_reads.pop(normalized, None)
                        if self._credential_reads.get(normalized) is done
                        else None
                    )
                )
            candidates = await asyncio.shield(reading)
        return _authenticated(candidates, api_key)

    async def _load_credentials(self, email: str) -> tuple[Credentials, ...]:
        # The generation taken before the read: a user forgotten while it ran (a routed
        # change) makes the cache refuse this possibly stale result.
        generation = self.credentials.generation
        candidates = await self.threads.run(self._read_credentials, email)
        self.credentials.put(email, candidates, generation)
        return candidates

    def _read_credentials(self, email: str) -> tuple[Credentials, ...]:
        with self.db.snapshot() as session:
            rows = session.execute(
                select(
                    UserProfile.id,
                    UserProfile.realm_id,
                    UserProfile.email,
                    UserProfile.role,
                    UserProfile.api_key,
                    UserProfile.is_active,
                ).where(UserProfile.email == email)
            ).all()
        return tuple(
            Credentials(int(uid), int(realm), mail, int(role), key.encode(), bool(active))
            for uid, realm, mail, role, key, active in rows
        )
