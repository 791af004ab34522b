"""The `eventq` admin CLI as a separate process, on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import os
import subprocess
from pathlib import Path

import pytest

from actions.realms import do_create_realm
from actions.streams import do_create_stream
from actions.users import do_create_user
from models.database import DEFAULT_SQLITE_PATH, Database
from models.outbox import read_events
from models.queries import get_realm
from server.ops.cli.main import build_parser
from tests.helpers.cli import EVENTQ, run_eventq


def _ok(url: str, *args: str) -> str:
    result = run_eventq(url, *args)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_every_command_has_help() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in subparsers.choices:
        result = run_eventq("sqlite://", name, "--help")
        assert result.returncode == 0 and "usage: eventq" in result.stdout, name


def test_cli_session_writes_events_in_order(database_url: str, db: Database) -> None:
    assert "Created realm" in _ok(database_url, "create-realm", "acme", "--name", "Acme")
    owner = run_eventq(
        database_url,
        "create-user",
        "acme",
        "Boss@Acme.example.com",
        "--role",
        "owner",
        "--full-name",
        "The Boss",
        "--json",
    ).json()
    assert set(owner) == {"user_id", "email", "api_key"}
    assert owner["email"] == "boss@acme.example.com" and len(owner["api_key"]) == 32
    _ok(database_url, "create-user", "acme", "ann@acme.example.com")
    _ok(database_url, "create-user", "acme", "bot@acme.example.com", "--bot")
    stream = run_eventq(database_url, "create-stream", "acme", "general", "--json").json()
    assert set(stream) == {"stream_id", "name"} and stream["name"] == "general"
    _ok(database_url, "create-stream", "acme", "board", "--private")
    _ok(database_url, "create-stream", "acme", "lobby", "--web-public")
    out = _ok(database_url, "subscribe", "acme", "ann@acme.example.com", "general", "board")
    assert "Subscribed ann@acme.example.com to general, board." in out
    again = run_eventq(
        database_url, "subscribe", "acme", "ann@acme.example.com", "general", "--json"
    ).json()
    assert again == {"subscribed": [], "already_subscribed": ["general"]}
    _ok(database_url, "unsubscribe", "acme", "ann@acme.example.com", "board")

    users = _ok(database_url, "users", "acme")
    assert "boss@acme.example.com" in users and "owner" in users and "bot" in users
    streams = run_eventq(database_url, "streams", "acme", "--json").json()
    assert [(s["name"], s["visibility"], s["subscribers"]) for s in streams] == [
        ("general", "public", ["ann@acme.example.com"]),
        ("board", "private", []),
        ("lobby", "web-public", []),
    ]
    assert "general" in _ok(database_url, "streams", "acme")

    with db.snapshot() as session:
        realm = get_realm(session, "acme")
        assert realm is not None
        events = read_events(session, realm.id, 0)
        assert realm.last_event_seq == len(events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [(e.event["type"], e.event["op"]) for e in events]
    assert kinds == [
        ("realm_user", "add"),
        ("realm_user", "add"),
        ("realm_user", "add"),
        ("stream", "create"),
        ("stream", "create"),
        ("stream", "create"),
        ("stream", "create"),  # board becomes visible to ann
        ("subscription", "add"),
        ("subscription", "peer_add"),  # general: every other non-guest
        ("subscription", "peer_add"),  # board: the owner only, so a separate group
        ("subscription", "remove"),
        ("stream", "delete"),
        ("subscription", "peer_remove"),
    ]
    board_create = events[4]
    assert set(board_create.user_ids) == {owner["user_id"]}, "private: owners and admins only"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("create-user", "nowhere", "a@b.example.com"), "No realm with subdomain 'nowhere'"),
        (("create-user", "acme", "not-an-email"), "Invalid email address"),
        (("create-user", "acme", "x@acme.example.com", "--role", "boss"), "Unknown role"),
        (("create-user", "acme", "x@acme.example.com", "--full-name", "n" * 101), "too long"),
        (("create-user", "acme", "first@acme.example.com"), "already in use"),
        (("create-stream", "acme", "General"), "already exists"),
        (("create-stream", "acme", "c" * 61), "too long"),
        (("subscribe", "acme", "ghost@acme.example.com", "general"), "No user"),
        (("subscribe", "acme", "first@acme.example.com", "general", "nope"), "No channel 'nope'"),
        (("create-realm", "acme"), "already exists"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    database_url: str, db: Database, args: tuple[str, ...], message: str
) -> None:
    with db.write() as session:
        realm_id = do_create_realm(session, "acme").id
    with db.write() as session:
        do_create_user(session, realm_id, "first@acme.example.com")
    with db.write() as session:
        do_create_stream(session, realm_id, "general")
    with db.snapshot() as session:
        realm = get_realm(session, "acme")
        assert realm is not None
        before = realm.last_event_seq
    result = run_eventq(database_url, *args)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("eventq: error: ")
    assert message in result.stderr
    with db.snapshot() as session:
        realm = get_realm(session, "acme")
        assert realm is not None and realm.last_event_seq == before
        assert len(read_events(session, realm.id, 0)) == before


def test_unmigrated_database_is_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    result = run_eventq(f"sqlite:///{empty}", "users", "x")
    assert result.returncode == 1
    assert f"schema of {empty} is at revision none" in result.stderr
    assert "run `eventq migrate` first" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_missing_sqlite_file_is_named_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere" / "eventq.sqlite3"
    result = run_eventq(f"sqlite:///{missing}", "users", "x")
    assert result.returncode == 1
    assert f"there is no database at {missing}: run `eventq migrate`" in result.stderr
    assert not missing.exists() and not missing.parent.exists()


def test_the_default_database_does_not_depend_on_the_working_directory(tmp_path: Path) -> None:
    existed = DEFAULT_SQLITE_PATH.exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTQ_")}
    completed = subprocess.run(
        [EVENTQ, "users", "no-such-realm"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 1
    assert list(tmp_path.iterdir()) == []  # no ./var/eventq.sqlite3 made here
    assert DEFAULT_SQLITE_PATH.is_absolute() and DEFAULT_SQLITE_PATH.exists() == existed
    if not existed:
        assert f"there is no database at {DEFAULT_SQLITE_PATH}" in completed.stderr
