"""`eventq api-key REALM EMAIL` as a separate process, on SQLite and PostgreSQL: the key
it prints authenticates that user against a live server; deactivated users and bots are
shown too; an unknown realm or user is one `eventq: error:` line and status 1; nothing
is written."""

from __future__ import annotations

from sqlalchemy import select

from models.database import Database
from models.outbox import outbox_count
from models.tables import Realm, UserProfile
from tests.helpers.api import ApiClient
from tests.helpers.cli import run_eventq
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer


def test_the_key_printed_authenticates_the_user(
    database_url: str, realm: SampleRealm, server: LiveServer
) -> None:
    email = realm.emails["guest"]
    shown = run_eventq(database_url, "api-key", "zulip", email)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == [
        f"{email} (id {realm.users['guest']}, active)",
        f"API key: {realm.api_keys['guest']}",
    ]
    key = shown.stdout.splitlines()[1].removeprefix("API key: ")
    # Case and spaces of the email do not matter, as everywhere in the CLI.
    as_json = run_eventq(database_url, "api-key", "zulip", f" {email.upper()} ", "--json").json()
    assert as_json == {
        "user_id": realm.users["guest"],
        "email": email,
        "api_key": key,
        "is_active": True,
    }
    me = ApiClient(server.url, email, key).ok("GET", "/users/me")
    assert me["user_id"] == realm.users["guest"]


def test_deactivated_users_and_bots(database_url: str, db: Database, realm: SampleRealm) -> None:
    assert (
        run_eventq(database_url, "deactivate-user", "zulip", realm.emails["loner"]).returncode == 0
    )
    shown = run_eventq(database_url, "api-key", "zulip", realm.emails["loner"])
    assert shown.returncode == 0, shown.stderr
    assert "deactivated: the key works again only once they are reactivated" in shown.stdout
    assert (
        run_eventq(database_url, "api-key", "zulip", realm.emails["loner"], "--json").json()[
            "is_active"
        ]
        is False
    )

    bot = run_eventq(
        database_url, "create-user", "zulip", "bot@zulip.example.com", "--bot", "--json"
    ).json()
    shown_bot = run_eventq(database_url, "api-key", "zulip", "bot@zulip.example.com", "--json")
    assert shown_bot.json()["api_key"] == bot["api_key"]


def test_errors_are_one_line_and_change_nothing(
    database_url: str, db: Database, realm: SampleRealm
) -> None:
    with db.snapshot() as session:
        before = outbox_count(session, realm.realm_id)
        keys = dict(session.execute(select(UserProfile.id, UserProfile.api_key)).all())
    for args, message in (
        (("nowhere", realm.emails["owner"]), "eventq: error: No realm with subdomain 'nowhere'."),
        (
            ("zulip", "nobody@zulip.example.com"),
            "eventq: error: No user 'nobody@zulip.example.com' in realm 'zulip'.",
        ),
    ):
        result = run_eventq(database_url, "api-key", *args)
        assert result.returncode == 1, result
        assert result.stdout == ""
        [line] = result.stderr.splitlines()
        assert line == message, line
    # The command is a read: no event, no key changed.
    with db.snapshot() as session:
        assert outbox_count(session, realm.realm_id) == before
        assert dict(session.execute(select(UserProfile.id, UserProfile.api_key)).all()) == keys
        assert session.scalar(select(Realm.string_id).where(Realm.id == realm.realm_id)) == "zulip"
