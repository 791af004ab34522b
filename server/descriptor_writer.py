"""Grouped descriptor writes: the registers that arrive together share one transaction.

A register's queue must exist durably before its answer is sent (the client may poll
another process, or this one after a crash). Each commit costs a round trip and a
flush to disk, so under a reconnect storm one transaction per register would cap
registers at the disk's commit rate. `DescriptorWriter.create` queues the descriptor
and waits for its commit; one writer task at a time takes everything queued and
inserts it in a single transaction. While it writes, new registers queue for the next
one, so the group size follows the load: one at a time when idle, hundreds in a storm.
"""

from __future__ import annotations

import asyncio
import logging

from models.database import Database
from models.descriptors import DescriptorRecord, create_descriptors
from server.database_threads import DatabaseThreads

log = logging.getLogger("eventq.descriptors")

# Rows per transaction at most: bounds one transaction's size and lock time in a storm.
MAX_GROUP = 500


class DescriptorWriter:
    """Inserts queue descriptors in groups; `create` returns once its row committed."""

    def __init__(self, db: Database, threads: DatabaseThreads) -> None:
        self.db = db
        self.threads = threads
        self._pending: list[tuple[DescriptorRecord, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self.groups_written = 0

    async def create(self, record: DescriptorRecord) -> None:
        """Durably create `record`; raises what the transaction raised."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_all())
        await done

    async def _write_all(self) -> None:
        while self._pending:
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
            try:
                await self.threads.run(self._insert, [record for record, _ in group])
            except BaseException as error:
                for _, done in group:
                    if not done.done():
                        done.set_exception(error)
                if not isinstance(error, Exception):
                    raise  # cancelled: the process is stopping
                log.warning("could not write %d queue descriptors: %s", len(group), error)
                continue
            self.groups_written += 1
            for _, done in group:
                if not done.done():
                    done.set_result(None)

    def _insert(self, records: list[DescriptorRecord]) -> None:
        with self.db.write() as session:
            create_descriptors(session, records)

    async def stop(self) -> None:
        """Wait for the group being written."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
