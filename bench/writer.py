"""A separate process that commits one action per line it reads on stdin.

It prints the wall-clock time right after each commit, so the reader can measure the
delay from commit to the long-poll answer across processes (one machine, one clock).
"""

from __future__ import annotations

import sys
import time

from actions.streams import do_create_stream
from models.database import Database


def main() -> None:
    database_url, realm_id = sys.argv[1], int(sys.argv[2])
    db = Database(database_url)
    for index, _ in enumerate(sys.stdin):
        with db.write() as session:
            do_create_stream(session, realm_id, f"bench {index}")
        print(f"{time.time():.6f}", flush=True)
    db.dispose()


if __name__ == "__main__":
    main()
