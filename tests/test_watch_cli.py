"""`eventq watch` as an administrator uses it: a separate process printing live events."""

from __future__ import annotations

import subprocess

from actions.users import do_deactivate_user
from models.database import Database
from tests.helpers.cli import EVENTQ
from tests.helpers.realms import make_sample_realm
from tests.helpers.server import live_server


def test_watch_prints_events_and_member_changes(database_url: str, db: Database) -> None:
    realm = make_sample_realm(db)
    with live_server(database_url) as server:
        # The context manager closes the pipes and reaps the process even on failure.
        with subprocess.Popen(
            [
                EVENTQ,
                "--database-url",
                database_url,
                "watch",
                "zulip",
                realm.emails["admin"],
                "--server",
                server.url,
                # The admin gets one peer_remove listing every channel, then the update.
                "--max-events",
                "2",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ) as watcher:
            assert watcher.stdout is not None
            first = watcher.stdout.readline()
            assert first.startswith("# watching admin@zulip.example.com"), first
            with db.write() as session:
                do_deactivate_user(session, realm.realm_id, realm.users["member"])
            try:
                out, err = watcher.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                watcher.kill()
                raise
    assert watcher.returncode == 0, err
    assert "peer_remove" in out and "realm_user update" in out
    assert "members:" in out and f"-{realm.emails['member']}" in out
