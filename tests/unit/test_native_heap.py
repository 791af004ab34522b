"""The C heap's tuning (server.ops.native_heap) on this machine's glibc."""

from __future__ import annotations

import platform

import pytest

from server.ops import native_heap

# Chunks of 64 KiB are below glibc's mmap threshold, so they come from the heap; every
# other one is kept, so the freed ones cannot merge into the heap's top and be given back
# by free() itself: only a trim returns their pages.
CHUNK_BYTES = 64 * 1024
CHUNKS = 1024


def test_this_platform_is_tuned() -> None:
    # The servers this project ships for run on glibc; elsewhere the tuning is a no-op.
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.fail(f"not a glibc system: {platform.system()} {platform.libc_ver()}")
    assert native_heap.available()
    assert native_heap.limit_arenas(native_heap.ARENA_LIMIT)


def test_a_trim_hands_fragmented_free_pages_back() -> None:
    native_heap.trim()  # start from a trimmed heap
    chunks = [bytearray(CHUNK_BYTES) for _ in range(CHUNKS)]
    for chunk in chunks:  # touch every page, so that each is resident
        chunk[::4096] = b"x" * len(chunk[::4096])
    del chunks[::2]
    before = native_heap.resident_bytes()
    assert native_heap.trim()
    after = native_heap.resident_bytes()
    assert before is not None and after is not None
    freed = CHUNKS // 2 * CHUNK_BYTES
    # Each freed chunk gives back its whole pages: nearly all of its 64 KiB.
    assert before - after >= freed // 2, (before, after)
    assert len(chunks) == CHUNKS // 2
