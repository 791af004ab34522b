"""Grouped descriptor writes: the registers that arrive together share one transaction.

A register's queue must exist durably before its answer is sent (the client may poll
another process, or this one after a crash). Each commit costs a round trip and a
flush to disk, so under a reconnect storm one transaction per register would cap
registers at the disk's commit rate. `DescriptorWriter.create` queues the descriptor
and waits for its commit; one writer task at a time takes everything queued and
inserts it in a single transaction. While it writes, new registers queue for the next
one, so the group size follows the load: one at a time when idle, hundreds in a storm.

A register may also leave its descriptor to be built in the transaction, from the
realm's outbox position read there (`create_at_position`): one statement reads the
positions of every realm in the group, so a register whose realm state is already known
(`server.engine.registration`) costs no database work of its own. A register under a
per-user queue cap also needs the user's other queues; they are read in the same
transaction, before the insert, in one statement for the whole group.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from models.database import Database
from models.descriptors import DescriptorRecord, HeldQueue, create_descriptors, held_queues
from models.outbox import state_positions
from server.engine.database_threads import DatabaseThreads

log = logging.getLogger("eventq.descriptors")

# Rows per transaction at most: bounds one transaction's size and lock time in a storm.
MAX_GROUP = 500

# Builds a descriptor from its realm's (`last_event_seq`, `state_seq`), read in the
# group's transaction; None: nothing to write. Runs on a database thread.
BuildDescriptor = Callable[[int, int], DescriptorRecord | None]


@dataclass(slots=True)
class _Pending:
    realm_id: int
    user_id: int
    build: BuildDescriptor
    with_held: bool
    done: asyncio.Future[tuple[DescriptorRecord | None, list[HeldQueue]]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class DescriptorWriter:
    """Inserts queue descriptors in groups; `create` returns once its row committed."""

    def __init__(self, db: Database, threads: DatabaseThreads) -> None:
        self.db = db
        self.threads = threads
        self._pending: list[_Pending] = []
        self._writer: asyncio.Task[None] | None = None
        self.groups_written = 0

    async def create(self, record: DescriptorRecord, with_held: bool = False) -> list[HeldQueue]:
        """Durably create `record`; raises what the transaction raised. With `with_held`,
        returns the queues its user held just before (read in the same transaction)."""
        _, held = await self.create_at_position(
            record.realm_id, record.user_id, lambda seq, state_seq: record, with_held
        )
        return held

    async def create_at_position(
        self, realm_id: int, user_id: int, build: BuildDescriptor, with_held: bool = False
    ) -> tuple[DescriptorRecord | None, list[HeldQueue]]:
        """Durably create what `build` makes of the realm's position in the group's
        transaction, and return it (None: `build` declined, nothing was written) with,
        for `with_held`, the queues the user held just before."""
        pending = _Pending(realm_id, user_id, build, with_held)
        self._pending.append(pending)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_all())
        return await pending.done

    async def _write_all(self) -> None:
        while self._pending:
            group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
            try:
                written = await self.threads.run(self._insert, group)
            except BaseException as error:
                for pending in group:
                    if not pending.done.done():
                        pending.done.set_exception(error)
                if not isinstance(error, Exception):
                    raise  # cancelled: the process is stopping
                log.warning("could not write %d queue descriptors: %s", len(group), error)
                continue
            self.groups_written += 1
            for pending, outcome in zip(group, written, strict=True):
                if not pending.done.done():
                    pending.done.set_result(outcome)

    def _insert(
        self, group: list[_Pending]
    ) -> list[tuple[DescriptorRecord | None, list[HeldQueue]]]:
        with self.db.write() as session:
            positions = state_positions(session, {pending.realm_id for pending in group})
            held = held_queues(session, {p.user_id for p in group if p.with_held})
            # A realm that is gone has no position: nothing is built for it.
            records = [
                pending.build(*positions[pending.realm_id])
                if pending.realm_id in positions
                else None
                for pending in group
            ]
            create_descriptors(session, [record for record in records if record is not None])
        return [
            (record, held.get(pending.user_id, []) if pending.with_held else [])
            for pending, record in zip(group, records, strict=True)
        ]

    async def stop(self) -> None:
        """Wait for the group being written."""
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
