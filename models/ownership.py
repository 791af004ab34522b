"""Which shard holds which queue (docs/architecture.md §10): claims, the claim feed, and
the list of running shards.

A queue's descriptor names its holder (`owner_shard`) and a fencing epoch
(`owner_epoch`). A shard that must serve a queue another holds *claims* it: one write
transaction raises the epoch and records the claim in `queue_claim`, the feed from which
the old holder learns that its copy is stale. Writes of a holder are conditioned on its
epoch (`models.descriptors`), so a shard that lost a queue cannot change it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session

from models.descriptors import DescriptorRecord, load_descriptor
from models.outbox import NOTIFY_CHANNEL
from models.tables import QueueClaim, QueueDescriptorRow, Realm, Shard

# A shard name is the prefix of its queue ids and a word in nginx's configuration:
# lower-case letters, digits and underscores, starting with a letter. No '.', which
# separates it from the rest of a queue id, and nothing a URL or nginx would escape. At
# most 24 characters, so that a queue id (NAME, '.', 32 hex digits) fits in 64.
SHARD_NAME = re.compile(r"[a-z][a-z0-9_]{0,23}")
DEFAULT_SHARD_NAME = "main"
# A claim that lost a race with another claim of the same queue is retried this often.
MAX_CLAIM_TRIES = 3


def check_shard_name(name: str) -> str:
    """`name` if it is a valid shard name; else ValueError saying what is allowed."""
    if not SHARD_NAME.fullmatch(name):
        raise ValueError(
            f"bad shard name {name!r}: 1-24 lower-case letters, digits or underscores, "
            "starting with a letter"
        )
    return name


def shard_of(queue_id: str) -> str | None:
    """The shard named in a queue id (`NAME.hex`), or None for an id without one."""
    name, dot, _ = queue_id.partition(".")
    return name if dot and SHARD_NAME.fullmatch(name) else None


@dataclass(frozen=True, slots=True)
class Claim:
    """A descriptor as this shard now holds it, and where its history stands."""

    record: DescriptorRecord
    # The shard that held it before, when it moved (None: it was this shard's already).
    moved_from: str | None
    # The realm's newest outbox position when the claim committed: the catch-up reads at
    # least this far, since the previous holder may have handed out events up to it.
    realm_seq: int


def claim_descriptor(session: Session, queue_id: str, shard: str, now: float) -> Claim | None:
    """Make `shard` the holder of `queue_id`; None if there is no such descriptor.

    A descriptor this shard holds already is returned unchanged; otherwise its epoch
    goes up by one, conditioned on the epoch read, so of two shards claiming at once
    exactly one wins each round (the loser retries and takes it from the winner).
    """
    for _ in range(MAX_CLAIM_TRIES):
        record = load_descriptor(session, queue_id)
        if record is None:
            return None
        realm_seq = int(
            session.execute(
                select(Realm.last_event_seq).where(Realm.id == record.realm_id)
            ).scalar_one()
        )
        if record.owner_shard == shard:
            return Claim(record, None, realm_seq)
        epoch = record.owner_epoch + 1
        changed = session.execute(
            update(QueueDescriptorRow)
            .where(
                QueueDescriptorRow.queue_id == queue_id,
                QueueDescriptorRow.owner_epoch == record.owner_epoch,
            )
            .values(owner_shard=shard, owner_epoch=epoch)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            session.expire_all()
            continue
        session.add(QueueClaim(queue_id=queue_id, shard=shard, epoch=epoch, claimed_at=now))
        if session.get_bind().dialect.name == "postgresql":
            # Wakes every shard's consumer, which reads the feed and fences its copy.
            session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": NOTIFY_CHANNEL, "payload": "claim"},
            )
        moved = replace(record, owner_shard=shard, owner_epoch=epoch)
        return Claim(moved, record.owner_shard, realm_seq)
    raise ClaimContended(queue_id)


class ClaimContended(Exception):
    """Other shards kept claiming the queue while this one tried to."""


def newest_claim_id(session: Session) -> int:
    """The id of the newest claim (0 for none): where a new shard starts reading."""
    return int(session.execute(select(func.max(QueueClaim.id))).scalar_one_or_none() or 0)


def read_claims(session: Session, after_id: int, limit: int = 1000) -> list[QueueClaimView]:
    """Claims newer than `after_id`, oldest first."""
    rows = session.execute(
        select(QueueClaim.id, QueueClaim.queue_id, QueueClaim.shard, QueueClaim.epoch)
        .where(QueueClaim.id > after_id)
        .order_by(QueueClaim.id)
        .limit(limit)
    ).all()
    return [QueueClaimView(int(i), q, s, int(e)) for i, q, s, e in rows]


@dataclass(frozen=True, slots=True)
class QueueClaimView:
    """One claim of the feed."""

    id: int
    queue_id: str
    shard: str
    epoch: int


def prune_claims(session: Session, older_than: float) -> int:
    """Delete claims older than `older_than` (every running shard has read them)."""
    result = session.execute(delete(QueueClaim).where(QueueClaim.claimed_at < older_than))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def announce_shard(
    session: Session, name: str, url: str, pid: int, now: float, recent_secs: float
) -> ShardView | None:
    """Record (or refresh) a running shard, for the admin views.

    Returns the previous entry if it was seen within `recent_secs` at another address:
    perhaps another process running under the same name (two processes with one name
    would each take the other's queues for their own, unfenced).
    """
    row = session.get(Shard, name)
    if row is None:
        session.add(Shard(name=name, url=url, pid=pid, started_at=now, seen_at=now))
        return None
    previous = ShardView(row.name, row.url, row.pid, row.started_at, row.seen_at)
    row.url, row.pid, row.started_at, row.seen_at = url, pid, now, now
    if previous.url != url and now - previous.seen_at < recent_secs:
        return previous
    return None


def mark_shard_seen(session: Session, name: str, now: float) -> None:
    """A running shard's periodic "still here"."""
    session.execute(update(Shard).where(Shard.name == name).values(seen_at=now))


@dataclass(frozen=True, slots=True)
class ShardView:
    """A shard as the admin views list it."""

    name: str
    url: str
    pid: int
    started_at: float
    seen_at: float


def list_shards(session: Session) -> list[ShardView]:
    """Every shard that ever announced itself, by name."""
    rows = session.scalars(select(Shard).order_by(Shard.name))
    return [ShardView(r.name, r.url, r.pid, r.started_at, r.seen_at) for r in rows]
