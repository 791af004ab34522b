"""A subscription request runs as many SQL statements for 20 principals and 20 new
channels as for 2 and 2: over REST (`POST` and `DELETE /users/me/subscriptions`,
through the real application in-process) and from the CLI (`eventq subscribe`,
`eventq unsubscribe`).

Measured on SQLite before principals, names and new channels were resolved in bulk,
a subscribe request ran 33 statements for 2 x 2 and 195 for 20 x 20.
"""

from __future__ import annotations

import json

import pytest

from actions.streams import do_create_streams
from actions.users import do_create_user
from models.database import Database
from server.ops.cli.main import build_parser
from tests.helpers.inprocess_api import InProcessApi, inprocess_api
from tests.helpers.realms import SampleRealm
from tests.helpers.statements import count_statements

SMALL, LARGE = 2, 20
# What a request costs today (authentication, lock, three lookups, the writes, the
# outbox); a ceiling with some room, so a per-row regression fails even if the small
# and large requests were to grow alike.
MAX_REQUEST_STATEMENTS = 16


def _new_members(db: Database, realm: SampleRealm, tag: str, n: int) -> list[tuple[int, str]]:
    with db.write() as session:
        users = [
            do_create_user(session, realm.realm_id, f"{tag}-{i}@zulip.example.com")
            for i in range(n)
        ]
        return [(user.id, user.email) for user in users]


async def _warm_credentials(api: InProcessApi, realm: SampleRealm, who: str) -> None:
    """The server caches a user's credentials after their first request
    (`server.engine.credentials`): warm it, so that every measured request pays the same."""
    answer = await api.call(
        realm.emails[who], realm.api_keys[who], "GET", "/users/me/subscriptions", {}
    )
    assert answer.ok, answer.body


async def _rest_counts(
    api: InProcessApi, db: Database, realm: SampleRealm, n: int
) -> tuple[int, int]:
    """Statements of one subscribe and one unsubscribe request for n principals (half by
    id, half by email in another case) and n new channels, plus two existing ones."""
    members = _new_members(db, realm, f"rest{n}", n)
    principals: list[str | int] = [
        user_id if i % 2 else email.upper() for i, (user_id, email) in enumerate(members)
    ]
    new = [f"rest{n} new {i}" for i in range(n)]
    # An existing public channel in another case, and a private one the owner may see.
    names = [*new, "PUBLIC", "private"]
    owner = (realm.emails["owner"], realm.api_keys["owner"])

    with count_statements(db.engine) as subscribe:
        added = await api.call(
            *owner,
            "POST",
            "/users/me/subscriptions",
            {"subscriptions": [{"name": name} for name in names], "principals": principals},
        )
    assert added.ok, added.body
    assert {uid: sorted(names) for uid, names in added.body["subscribed"].items()} == {
        str(user_id): sorted([*new, "public", "private"]) for user_id, _ in members
    }

    with count_statements(db.engine) as unsubscribe:
        removed = await api.call(
            *owner,
            "DELETE",
            "/users/me/subscriptions",
            {"subscriptions": names, "principals": principals},
        )
    assert removed.ok, removed.body
    assert removed.body["removed"] == sorted([*new, "public", "private"])
    assert removed.body["not_removed"] == []
    return subscribe.count, unsubscribe.count


async def test_rest_subscription_requests_run_a_constant_number_of_statements(
    db: Database, realm: SampleRealm
) -> None:
    async with inprocess_api(db) as api:
        await _warm_credentials(api, realm, "owner")
        small = await _rest_counts(api, db, realm, SMALL)
        large = await _rest_counts(api, db, realm, LARGE)
    assert small == large, f"statement counts grow with the request: {small} vs {large}"
    assert max(large) <= MAX_REQUEST_STATEMENTS, large


async def test_rest_refusal_after_lookups_runs_a_constant_number_of_statements(
    db: Database, realm: SampleRealm
) -> None:
    """A request refused once every name is resolved (the last name is a private channel
    the member cannot see) costs the same whatever the number of names before it."""

    async def refused_count(n: int) -> int:
        members = _new_members(db, realm, f"refused{n}", n)
        names = [f"refused{n} new {i}" for i in range(n)] + ["private"]
        with count_statements(db.engine) as statements:
            answer = await api.call(
                realm.emails["loner"],
                realm.api_keys["loner"],
                "POST",
                "/users/me/subscriptions",
                {"subscriptions": names, "principals": [email for _, email in members]},
            )
        assert (answer.status, answer.body["msg"]) == (400, "Channel 'private' does not exist.")
        return statements.count

    async with inprocess_api(db) as api:
        await _warm_credentials(api, realm, "loner")
        assert await refused_count(SMALL) == await refused_count(LARGE)


def _cli_counts(
    db: Database, realm: SampleRealm, n: int, capsys: pytest.CaptureFixture[str]
) -> tuple[int, int]:
    """Statements of `eventq subscribe` and `eventq unsubscribe` naming n channels (in
    another case than they were created in)."""
    names = [f"cli{n} {i}" for i in range(n)]
    with db.write() as session:
        do_create_streams(session, realm.realm_id, names)
    counts = []
    for command, key in (("subscribe", "subscribed"), ("unsubscribe", "unsubscribed")):
        args = build_parser().parse_args(
            [command, "zulip", realm.emails["loner"], *[name.upper() for name in names], "--json"]
        )
        capsys.readouterr()
        with count_statements(db.engine) as statements:
            args.func(args, db)
        assert json.loads(capsys.readouterr().out)[key] == names
        counts.append(statements.count)
    return counts[0], counts[1]


def test_cli_subscription_commands_run_a_constant_number_of_statements(
    db: Database, realm: SampleRealm, capsys: pytest.CaptureFixture[str]
) -> None:
    small = _cli_counts(db, realm, SMALL, capsys)
    large = _cli_counts(db, realm, LARGE, capsys)
    assert small == large, f"statement counts grow with the command: {small} vs {large}"
    assert max(large) <= MAX_REQUEST_STATEMENTS, large
