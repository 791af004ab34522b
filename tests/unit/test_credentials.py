"""Tests for server.engine.credentials: the cache that lets warm polls skip the database."""

from __future__ import annotations

from server.engine.credentials import Credentials, CredentialsCache, match_key, normalize_email


def user(user_id: int, key: str = "k", *, active: bool = True) -> Credentials:
    return Credentials(user_id, 1, f"u{user_id}@example.com", 400, key.encode(), active)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = CredentialsCache(ttl_secs=60, monotonic=clock)
    cache.put("a", (user(1),), cache.generation)
    assert cache.get("a") == (user(1),)
    clock.now += 59.9
    assert cache.get("a") is not None
    clock.now += 0.1
    assert cache.get("a") is None


def test_forgetting_a_user_drops_their_email_and_a_lookup_that_raced_it() -> None:
    cache = CredentialsCache()
    cache.put("a", (user(1), user(2)), cache.generation)
    cache.forget_user(2)
    assert cache.get("a") is None, "the whole email is read again"
    # A lookup that began before a change must not cache what it read.
    before = cache.generation
    cache.forget_user(7)
    cache.put("b", (user(3),), before)
    assert cache.get("b") is None
    cache.put("b", (user(3),), cache.generation)
    assert cache.get("b") == (user(3),)


def test_the_cache_is_bounded_and_unknown_emails_are_not_kept() -> None:
    cache = CredentialsCache(max_emails=3)
    cache.put("nobody", (), cache.generation)
    assert len(cache) == 0
    for index in range(5):
        cache.put(f"e{index}", (user(index),), cache.generation)
    assert len(cache) == 3
    assert cache.get("e0") is None and cache.get("e4") is not None
    cache.forget_user(0)  # evicted already: nothing to do, nothing breaks
    assert len(cache) == 3


def test_keys_match_exactly_and_emails_are_normalized() -> None:
    candidates = (user(1, "first"), user(2, "second"))
    assert match_key(candidates, "second") == user(2, "second")
    assert match_key(candidates, "secon") is None
    assert match_key(candidates, "") is None
    assert normalize_email("  Iago@Example.COM ") == "iago@example.com"
