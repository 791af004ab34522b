"""Outbox retention: batched pruning (`models.retention`) and `eventq prune-outbox`."""

from __future__ import annotations

import json
import os
import subprocess
import time

import psycopg
import pytest
from sqlalchemy import func, select

from actions.streams import do_create_stream
from models.database import Database
from models.descriptors import DescriptorRecord, create_descriptor, load_descriptor
from models.outbox import outbox_count, outbox_pruned_seq
from models.retention import PRUNE_LOCK_SPACE, prune_batch
from models.tables import OutboxRecipient, Realm
from tests.helpers.cli import EVENTQ, run_eventq
from tests.helpers.realms import SampleRealm


def make_history(db: Database, realm: SampleRealm, count: int, prefix: str = "history") -> int:
    """`count` channel creations (each to every user); returns the realm's newest seq."""
    with db.write() as session:
        for index in range(count):
            do_create_stream(session, realm.realm_id, f"{prefix} {index}")
    with db.snapshot() as session:
        return int(
            session.execute(
                select(Realm.last_event_seq).where(Realm.id == realm.realm_id)
            ).scalar_one()
        )


def recipients(db: Database, realm: SampleRealm) -> int:
    with db.snapshot() as session:
        return int(
            session.execute(
                select(func.count())
                .select_from(OutboxRecipient)
                .where(OutboxRecipient.realm_id == realm.realm_id)
            ).scalar_one()
        )


def add_descriptor(db: Database, realm: SampleRealm, queue_id: str, checkpoint_seq: int) -> None:
    with db.write() as session:
        create_descriptor(
            session,
            DescriptorRecord(
                queue_id=queue_id,
                realm_id=realm.realm_id,
                user_id=realm.users["owner"],
                event_types=None,
                capabilities={},
                client_name="test",
                client_version=None,
                legacy_deactivation=False,
                lifespan_secs=3600,
                last_active=time.time(),
                checkpoint_seq=checkpoint_seq,
                checkpoint_event_id=-1,
            ),
        )


def test_pruning_goes_in_bounded_batches_and_keeps_what_queues_need(
    db: Database, realm: SampleRealm
) -> None:
    newest = make_history(db, realm, 12)
    keep_from = newest - 4
    add_descriptor(db, realm, "needs-the-end", keep_from)
    before = recipients(db, realm)
    batches = []
    done = False
    while not done:
        with db.write() as session:
            batch = prune_batch(session, realm.realm_id, newest, time.time() + 60, batch_rows=10)
        assert batch.recipients <= 10 or batch.events == 1, "a batch stays bounded"
        batches.append(batch)
        done = batch.done
    assert len(batches) > 2, "the history went in several transactions"
    with db.snapshot() as session:
        assert outbox_pruned_seq(session, realm.realm_id) == keep_from
        assert outbox_count(session, realm.realm_id) == newest - keep_from
        assert load_descriptor(session, "needs-the-end") is not None
    assert sum(b.recipients for b in batches) == before - recipients(db, realm)
    # Nothing left to do: a further batch deletes nothing.
    with db.write() as session:
        again = prune_batch(session, realm.realm_id, newest, time.time() + 60)
    assert again.done and again.events == 0


def test_young_rows_and_unrouted_rows_stay(db: Database, realm: SampleRealm) -> None:
    newest = make_history(db, realm, 5)
    with db.write() as session:
        young = prune_batch(session, realm.realm_id, newest, time.time() - 3600)
    assert young.events == 0 and young.done
    with db.write() as session:
        routed_part = prune_batch(session, realm.realm_id, newest - 2, time.time() + 60)
    with db.snapshot() as session:
        assert outbox_pruned_seq(session, realm.realm_id) == newest - 2
    assert routed_part.events == newest - 2, "only routed rows went"


def test_a_queue_too_far_behind_is_deleted_with_the_history_it_needed(
    db: Database, realm: SampleRealm
) -> None:
    newest = make_history(db, realm, 6)
    add_descriptor(db, realm, "laggard", 1)
    done = False
    dropped: list[str] = []
    while not done:
        with db.write() as session:
            batch = prune_batch(session, realm.realm_id, newest, time.time() + 60, max_rows=2)
        dropped += batch.dropped_queue_ids
        done = batch.done
    assert dropped == ["laggard"]
    with db.snapshot() as session:
        assert outbox_count(session, realm.realm_id) == 2
        assert load_descriptor(session, "laggard") is None


def test_prune_outbox_command(db: Database, realm: SampleRealm, database_url: str) -> None:
    newest = make_history(db, realm, 8)
    add_descriptor(db, realm, "midway", newest - 3)
    kept_young = run_eventq(database_url, "prune-outbox", "--json")
    assert kept_young.returncode == 0, kept_young.stderr
    assert kept_young.json()["events"] == 0, "rows younger than an hour stay by default"

    result = run_eventq(database_url, "prune-outbox", "--older-than", "0", "--json")
    assert result.returncode == 0, result.stderr
    figures = result.json()
    with db.snapshot() as session:
        assert outbox_count(session, realm.realm_id) == 3
        assert outbox_pruned_seq(session, realm.realm_id) == newest - 3
    assert figures["events"] == newest - 3 and figures["recipients"] > figures["events"]
    assert figures["seconds"] >= 0 and figures["dropped_queues"] == 0

    text = run_eventq(database_url, "prune-outbox", "--older-than", "0")
    assert text.returncode == 0 and text.stdout.startswith("Pruned 0 events")
    bad = run_eventq(database_url, "prune-outbox", "--older-than", "-5")
    assert bad.returncode == 1 and "--older-than" in bad.stderr


def test_prune_outbox_command_rests_between_batches(
    db: Database, realm: SampleRealm, database_url: str
) -> None:
    make_history(db, realm, 6)
    paced = run_eventq(
        database_url, "prune-outbox", "--older-than", "0", "--batch-rows", "3", "--json"
    )
    assert paced.returncode == 0, paced.stderr
    figures = paced.json()
    assert figures["events"] >= 6  # with the sample realm's own history
    # Several batches, each followed by a rest as long as itself (the default ratio 1).
    assert 0 < figures["paused_seconds"] <= figures["seconds"]

    make_history(db, realm, 6, prefix="more")
    flat_out = run_eventq(
        database_url,
        "prune-outbox",
        "--older-than",
        "0",
        "--batch-rows",
        "3",
        "--pause",
        "0",
        "--json",
    )
    assert flat_out.returncode == 0, flat_out.stderr
    assert flat_out.json()["events"] == 6 and flat_out.json()["paused_seconds"] == 0

    for option, value in (("--pause", "-1"), ("--batch-rows", "0")):
        bad = run_eventq(database_url, "prune-outbox", option, value)
        assert bad.returncode == 1 and option in bad.stderr


LOCK_WAIT_TIMEOUT_SECS = 30.0


def libpq_url(db: Database) -> str:
    """The test database's URL as psycopg takes it (the search path kept)."""
    return db.url.replace("postgresql+psycopg://", "postgresql://")


@pytest.mark.parametrize("backend", ["postgresql"])
def test_prune_outbox_waits_for_a_server_pruning_the_same_realm(
    db: Database, realm: SampleRealm, database_url: str
) -> None:
    newest = make_history(db, realm, 5)
    # A server's sweep holds the realm's prune lock (as between its batches' commits).
    with psycopg.connect(libpq_url(db), autocommit=True) as sweep:
        sweep.execute("SELECT pg_advisory_lock(%s, %s)", (PRUNE_LOCK_SPACE, realm.realm_id))
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTQ_")}
        command = [EVENTQ, "--database-url", database_url, "prune-outbox", "--older-than", "0"]
        pruner = subprocess.Popen(
            [*command, "--json"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            # The command waits for the lock instead of skipping the realm.
            deadline = time.monotonic() + LOCK_WAIT_TIMEOUT_SECS
            while not sweep.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND classid = %s AND objid = %s",
                (PRUNE_LOCK_SPACE, realm.realm_id),
            ).fetchone()[0]:  # type: ignore[index]
                assert pruner.poll() is None, pruner.communicate()
                assert time.monotonic() < deadline, "prune-outbox never waited for the lock"
            assert pruner.poll() is None
        finally:
            sweep.execute("SELECT pg_advisory_unlock(%s, %s)", (PRUNE_LOCK_SPACE, realm.realm_id))
        out, err = pruner.communicate(timeout=LOCK_WAIT_TIMEOUT_SECS)
    assert pruner.returncode == 0, err
    assert json.loads(out)["events"] == newest
    with db.snapshot() as session:
        assert outbox_count(session, realm.realm_id) == 0
        assert outbox_pruned_seq(session, realm.realm_id) == newest
