"""`eventq prune-outbox`: delete the outbox history no queue needs any more.

The servers prune it themselves every minute (models.retention); the command does the
same sweep at once, in short transactions with rests between them, and says how much
it removed.
"""

from __future__ import annotations

import argparse

from models.database import Database
from models.retention import BATCH_RECIPIENT_ROWS, PRUNE_PAUSE_RATIO
from server.ops.cli.shared import Commands, emit
from server.ops.config import Settings

# A larger --pause would make a prune of a big history take days.
MAX_PRUNE_PAUSE_RATIO = 100.0


def cmd_prune_outbox(args: argparse.Namespace, db: Database) -> None:
    import time

    from models.outbox import realm_positions
    from models.retention import prune_batch

    older_than_secs = args.older_than
    if older_than_secs is None:
        older_than_secs = Settings.from_env().outbox_min_age_secs
    if older_than_secs < 0:
        raise ValueError("--older-than must be 0 or more seconds")
    if args.batch_rows < 1:
        raise ValueError("--batch-rows must be 1 or more")
    if not 0 <= args.pause <= MAX_PRUNE_PAUSE_RATIO:
        raise ValueError(f"--pause must be between 0 and {MAX_PRUNE_PAUSE_RATIO:g}")
    started = time.monotonic()
    cutoff = time.time() - older_than_secs
    events = recipients = 0
    dropped: list[str] = []
    with db.snapshot() as session:
        # Every committed row counts as routed: a server that starts later begins at
        # the realm's position, and a running one keeps what its queues' checkpoints need.
        positions = realm_positions(session)
    paused = 0.0
    for realm_id, newest in sorted(positions.items()):
        done = False
        while not done:
            # One short transaction per batch, as the server's own sweep does, and a
            # rest after it in proportion (--pause) so that the servers keep the machine.
            batch_started = time.monotonic()
            with db.write() as session:
                # A server's sweep may be pruning this realm: wait for its batch, never
                # skip the realm (which would leave its rows and report success).
                batch = prune_batch(
                    session,
                    realm_id,
                    newest,
                    cutoff,
                    batch_rows=args.batch_rows,
                    wait_for_other_pruner=True,
                )
            events += batch.events
            recipients += batch.recipients
            dropped += batch.dropped_queue_ids
            done = batch.done
            if not done and args.pause > 0:
                rest = (time.monotonic() - batch_started) * args.pause
                time.sleep(rest)
                paused += rest
    seconds = time.monotonic() - started
    data = {
        "events": events,
        "recipients": recipients,
        "seconds": round(seconds, 3),
        "paused_seconds": round(paused, 3),
        "dropped_queues": len(dropped),
    }
    text = (
        f"Pruned {events} events ({recipients} recipient rows) older than "
        f"{older_than_secs:g}s in {seconds:.2f}s ({paused:.2f}s of it resting between batches)"
    )
    if dropped:
        text += f"; {len(dropped)} queues too far behind were deleted"
    emit(args, data, text + ".")


def add_commands(commands: Commands) -> None:
    """Add `prune-outbox`."""
    p = commands.on_database(
        "prune-outbox",
        cmd_prune_outbox,
        "Delete outbox history no queue needs (the server does this every minute): rows "
        "older than --older-than, up to the oldest queue checkpoint of each realm, in short "
        "transactions. Prints the rows removed and the time taken.",
    )
    p.add_argument(
        "--older-than",
        type=float,
        metavar="SECS",
        help="minimum age of a removed row (default: EVENTQ_OUTBOX_MIN_AGE_SECS or 3600)",
    )
    p.add_argument(
        "--batch-rows",
        type=int,
        default=BATCH_RECIPIENT_ROWS,
        metavar="N",
        help=f"recipient rows deleted per transaction (default: {BATCH_RECIPIENT_ROWS})",
    )
    p.add_argument(
        "--pause",
        type=float,
        default=PRUNE_PAUSE_RATIO,
        metavar="RATIO",
        help="after each batch, rest RATIO times as long as the batch took, so that the "
        f"prune leaves the database to the servers (default: {PRUNE_PAUSE_RATIO:g}, at "
        "most half the database's time; 0: as fast as possible)",
    )
