"""`eventq` with its SQL counted: `python -m bench.counted_server ARGS` runs `eventq ARGS`
and bumps three counters in the file named by `BENCH_SQL_COUNTERS` (see
`bench.support.SqlCounters`) for every statement sent, transaction begun and pooled
connection checked out (each checkout also pings the server: `pool_pre_ping`).

The listeners cost about a microsecond per statement; only the steady-state benchmark
uses this wrapper, to report statements per poll.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from bench.support import open_counters

COUNTERS_ENV = "BENCH_SQL_COUNTERS"


def install(path: str) -> None:
    counters = open_counters(path)
    lock = threading.Lock()

    def bump(index: int) -> None:
        with lock:
            (value,) = struct.unpack_from("q", counters, 8 * index)
            struct.pack_into("q", counters, 8 * index, value + 1)

    def on_statement(*_args: Any) -> None:
        bump(0)

    def on_begin(*_args: Any) -> None:
        bump(1)

    def on_checkout(*_args: Any) -> None:
        bump(2)

    event.listen(Engine, "before_cursor_execute", on_statement)
    event.listen(Engine, "begin", on_begin)
    event.listen(Pool, "checkout", on_checkout)


def main() -> None:
    install(os.environ[COUNTERS_ENV])
    from server.ops.cli.main import main as eventq_main

    sys.exit(eventq_main(sys.argv[1:]))


if __name__ == "__main__":
    main()
