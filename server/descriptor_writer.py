"""Grouped descriptor writes: the registers that arrive together share one transaction.

A register's queue must exist durably before its answer is sent (the client may poll
another process, or this one after a crash). Each commit costs a round trip and a
flush to disk, so under a reconnect storm one transaction per register would cap
registers at the disk's commit rate. `DescriptorWriter.create` queues the descriptor
and waits for its commit; one writer task at a time takes everything queued and
inserts it in a single transaction. While it writes, new registers queue for the next
one, so the group size follows the load: one at a time when idle, hundreds in a storm.

A register under a per-user queue cap also needs the user's other queues; they are read
in the same transaction, before the insert, in one statement for the whole group.
"""

from __future__ import annotations

import asyncio
import logging

from models.database import Database
from models.descriptors import DescriptorRecord, HeldQueue, create_descriptors, held_queues
from server.database_threads import DatabaseThreads

log = logging.getLogger("eventq.descriptors")

# Rows per transaction at most: bounds one transaction's size and lock time in a storm.
MAX_GROUP = 500


class DescriptorWriter:
    """Inserts queue descriptors in groups; `create` returns once its row committed."""

    def __init__(self, db: Database, threads: DatabaseThreads) -> None:
        self.db = db
        self.threads = threads
        # Each record, whether its user's other queues are wanted, and its waiter.
        self._pending: list[tuple[DescriptorRecord, bool, asyncio.Future[list[HeldQueue]]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.groups_written = 0

    async def create(self, record: DescriptorRecord, with_held: bool = False) -> list[HeldQueue]:
        """Durably create `record`; raises what the transaction raised. With `with_held`,
        returns the queues its user held just before (read in the same transaction)."""
        done: asyncio.Future[list[HeldQueue]] = asyncio.get_running_loop().create_future()
        self._pending.append((record, with_held, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_all())
        return await done

    async def _write_all(self) -> None:
        while self._pending:
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
            try:
                held = await self.threads.run(
                    self._insert,
                    [record for record, _, _ in group],
                    {record.user_id for record, with_held, _ in group if with_held},
                )
            except BaseException as error:
                for _, _, done in group:
                    if not done.done():
                        done.set_exception(error)
                if not isinstance(error, Exception):
                    raise  # cancelled: the process is stopping
                log.warning("could not write %d queue descriptors: %s", len(group), error)
                continue
            self.groups_written += 1
            for record, with_held, done in group:
                if not done.done():
                    done.set_result(held.get(record.user_id, []) if with_held else [])

    def _insert(
        self, records: list[DescriptorRecord], held_of: set[int]
    ) -> dict[int, list[HeldQueue]]:
        with self.db.write() as session:
            held = held_queues(session, held_of)
            create_descriptors(session, records)
        return held

    async def stop(self) -> None:
        """Wait for the group being written."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
