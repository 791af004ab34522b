"""The C heap of a serving process: glibc's malloc, kept from growing by fragmentation.

Python hands every allocation above 512 bytes (answer bodies, socket read buffers, the
rows a database thread reads) to the C library's malloc. glibc gives each thread that
allocates its own arena, up to eight per core, and returns a freed chunk to the system
only from the top of its arena. A long-running server with busy database threads thus
keeps pages it no longer uses: a 10-minute soak of 10,000 long-polls
(`python -m bench --only soak`) grew its resident memory by about 2.5 MB a minute while
the number of Python objects and the interpreter's own blocks stayed flat.

So a serving process limits the arenas (`limit_arenas`, before its threads start) and
hands free pages back once a minute (`trim`, off the event loop: `trim_periodically`).
Elsewhere (another C library, another system) both do nothing and say so.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time

log = logging.getLogger("eventq.memory")

# glibc's mallopt parameter for the number of arenas (malloc.h).
M_ARENA_MAX = -8
# The main thread's arena and one for the database threads: their allocations are
# serialised by the interpreter lock anyway, so more arenas only spread free pages.
ARENA_LIMIT = 2
# Free pages are handed back this often; a trim of a few hundred MB takes milliseconds,
# off the event loop.
TRIM_INTERVAL_SECS = 60.0
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _glibc() -> ctypes.CDLL | None:
    """The C library, if it is glibc (it has both `mallopt` and `malloc_trim`)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)  # CDLL releases the interpreter lock during each call
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    return libc


_LIBC = _glibc()


def available() -> bool:
    """Whether this process's C library can be tuned here (glibc)."""
    return _LIBC is not None


def limit_arenas(count: int = ARENA_LIMIT) -> bool:
    """Let malloc use at most `count` arenas; True if the C library took the setting.

    Call before the process starts its threads: arenas already made stay.
    """
    if _LIBC is None:
        log.debug("not glibc: the malloc arenas are left as they are")
        return False
    return bool(_LIBC.mallopt(ctypes.c_int(M_ARENA_MAX), ctypes.c_int(count)))


def trim() -> bool:
    """Hand the heap's free pages back to the system; True if any were."""
    if _LIBC is None:
        return False
    return bool(_LIBC.malloc_trim(ctypes.c_size_t(0)))


def resident_bytes() -> int | None:
    """This process's resident memory (Linux), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, ValueError, IndexError):
        return None


async def trim_periodically(interval: float = TRIM_INTERVAL_SECS) -> None:
    """Trim the heap every `interval` seconds, on a worker thread, until cancelled."""
    if _LIBC is None:
        return
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)  # a timer, not a wait for a condition
        before = resident_bytes()
        started = time.monotonic()
        released = await loop.run_in_executor(None, trim)
        after = resident_bytes()
        if before is not None and after is not None:
            log.debug(
                "heap trimmed in %.1f ms: resident %.1f MB -> %.1f MB%s",
                1000 * (time.monotonic() - started),
                before / 1e6,
                after / 1e6,
                "" if released else " (nothing to release)",
            )
