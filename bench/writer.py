"""A separate process that commits one action per line it reads on stdin.

The action creates a public channel, so every active user of the realm receives its
`stream` `create` event; a line reading `private` creates a private one instead, whose
event only the realm's administrators receive. After each commit it prints two
wall-clock times, when the action started and right after its commit, so the reader can
measure the delay from commit to the long-poll answer across processes (one machine,
one clock), and see how long the action waited (e.g. for the realm lock).
"""

from __future__ import annotations

import os
import sys
import time

from actions.streams import do_create_stream
from models.database import Database


def main() -> None:
    database_url, realm_id = sys.argv[1], int(sys.argv[2])
    db = Database(database_url)
    for index, line in enumerate(sys.stdin):
        started = time.time()
        with db.write() as session:
            do_create_stream(
                session,
                realm_id,
                f"bench {os.getpid()}-{index}",
                invite_only=line.strip() == "private",
            )
        print(f"{started:.6f} {time.time():.6f}", flush=True)
    db.dispose()


if __name__ == "__main__":
    main()
