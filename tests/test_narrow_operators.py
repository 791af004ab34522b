"""Every narrow operator Zulip accepts at feature level 377, on SQLite and PostgreSQL.

Each spelling of each operator parses to its term; each operator (negated too) finds
exactly the messages it names in `GET /messages`' history, and never one the reader may
not read: full-text `search` (words, phrases, stemming, with Zulip's `match_content`
and `match_subject`) above all, a private channel's and a conversation's messages
staying with their readers. Each new operator is an indexed read: the query plan of
each backend (EXPLAIN / EXPLAIN QUERY PLAN) uses the index meant for it and scans
neither `message` nor `user_message`. A queue's narrow takes what Zulip's event filter
takes and refuses the rest with Zulip's words.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session

from actions.errors import InvalidInput
from actions.message_flags import check_update_message_flags
from actions.messages import ChannelTarget, DirectTarget, check_send_message
from models.database import Database
from models.messages.flags import MENTIONED_FLAG
from models.messages.history import _base_query, _plan, fetch_messages
from models.messages.narrows import (
    BadNarrow,
    EventNarrow,
    NarrowTerm,
    check_event_narrow,
    parse_narrow,
)
from models.messages.search import html_has_link, parse_search
from models.tables import Message, UserMessage, UserProfile
from tests.helpers.realms import SampleRealm

CLIENT = "eventq-tests"


def send(
    db: Database,
    realm: SampleRealm,
    sender: str,
    target: ChannelTarget | DirectTarget,
    content: str,
    topic: str = "topic",
) -> int:
    with db.write() as session:
        return check_send_message(
            session, realm.realm_id, realm.users[sender], target, topic, content, CLIENT
        )


def channel(realm: SampleRealm, kind: str) -> ChannelTarget:
    return ChannelTarget(realm.streams[kind])


def users(realm: SampleRealm, *names: str) -> DirectTarget:
    return DirectTarget(user_ids=tuple(realm.users[name] for name in names))


def history(db: Database, realm: SampleRealm, reader: str, narrow: list[Any]) -> dict[str, Any]:
    with db.snapshot() as session:
        return fetch_messages(
            session,
            realm.users[reader],
            anchor="newest",
            num_before=1000,
            num_after=0,
            narrow=parse_narrow(narrow),
        )


def found(db: Database, realm: SampleRealm, reader: str, narrow: list[Any]) -> list[int]:
    return [m["id"] for m in history(db, realm, reader, narrow)["messages"]]


# -- parsing: every spelling -----------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "operand", "expected"),
    [
        ("stream", "general", NarrowTerm("channel", "general")),
        ("channel", 7, NarrowTerm("channel", 7)),
        ("streams", "public", NarrowTerm("channels", "public")),
        ("channels", "web-public", NarrowTerm("channels", "web-public")),
        ("topic", "lunch", NarrowTerm("topic", "lunch")),
        ("subject", "lunch", NarrowTerm("topic", "lunch")),
        ("dm", [3, 2], NarrowTerm("dm", (2, 3))),
        ("pm-with", "A@x.com,b@x.com", NarrowTerm("dm", ("a@x.com", "b@x.com"))),
        ("pm_with", "a@x.com", NarrowTerm("dm", ("a@x.com",))),
        ("dm-including", 5, NarrowTerm("dm-including", 5)),
        ("dm_including", "A@x.com", NarrowTerm("dm-including", "a@x.com")),
        ("group-pm-with", 5, NarrowTerm("group-pm-with", 5)),
        ("group_pm_with", 5, NarrowTerm("group-pm-with", 5)),
        ("sender", "Me@x.com", NarrowTerm("sender", "me@x.com")),
        ("id", "42", NarrowTerm("id", 42)),
        ("id", 42, NarrowTerm("id", 42)),
        ("with", "42", NarrowTerm("with", 42)),
        ("near", "42", NarrowTerm("near", "42")),
        ("is", "dm", NarrowTerm("is", "dm")),
        ("is", "private", NarrowTerm("is", "dm")),
        ("is", "starred", NarrowTerm("is", "starred")),
        ("is", "unread", NarrowTerm("is", "unread")),
        ("is", "mentioned", NarrowTerm("is", "mentioned")),
        ("is", "alerted", NarrowTerm("is", "alerted")),
        ("is", "resolved", NarrowTerm("is", "resolved")),
        ("is", "followed", NarrowTerm("is", "followed")),
        ("is", "muted", NarrowTerm("is", "muted")),
        ("has", "link", NarrowTerm("has", "link")),
        ("has", "attachment", NarrowTerm("has", "attachment")),
        ("has", "image", NarrowTerm("has", "image")),
        ("has", "reaction", NarrowTerm("has", "reaction")),
        ("in", "home", NarrowTerm("in", "home")),
        ("in", "all", NarrowTerm("in", "all")),
        ("search", " cool sunglasses ", NarrowTerm("search", "cool sunglasses")),
    ],
)
def test_every_spelling_parses(spelling: str, operand: Any, expected: NarrowTerm) -> None:
    assert parse_narrow([{"operator": spelling, "operand": operand}]) == (expected,)
    negated = parse_narrow([{"operator": spelling, "operand": operand, "negated": True}])
    assert negated == (NarrowTerm(expected.operator, expected.operand, True),)


@pytest.mark.parametrize(
    ("term", "wording"),
    [
        (["is", "bogus"], "Invalid narrow operator: unknown 'is' operand bogus"),
        (["has", "video"], "Invalid narrow operator: unknown 'has' operand video"),
        (["in", "nowhere"], "Invalid narrow operator: unknown 'in' operand nowhere"),
        (["streams", "private"], "Invalid narrow operator: unknown channels operand private"),
        (["id", "x1"], "Invalid narrow operator: Invalid message ID"),
        (["with", "-3"], "Invalid narrow operator: Invalid 'with' operator"),
        (["bogus", "x"], "Invalid narrow operator: unknown operator bogus"),
    ],
)
def test_zulips_refusals(term: list[Any], wording: str) -> None:
    with pytest.raises(BadNarrow) as refused:
        parse_narrow([term])
    assert str(refused.value) == wording
    assert refused.value.code == "BAD_NARROW"


def test_a_blank_search_is_refused() -> None:
    with pytest.raises(InvalidInput) as refused:
        parse_narrow([{"operator": "search", "operand": "  "}])
    assert refused.value.code == "BAD_REQUEST"


# -- what each operator finds ----------------------------------------------------------


def test_each_operator_finds_its_messages(db: Database, realm: SampleRealm) -> None:
    """The member's history, narrowed by each operator and its negation."""
    link = send(db, realm, "owner", channel(realm, "public"), "see [x](https://example.com/x)")
    plain = send(db, realm, "member", channel(realm, "public"), "plain words", topic="Lunch")
    resolved = send(db, realm, "member", channel(realm, "public"), "done", topic="\u2714 fixed")
    private = send(db, realm, "member", channel(realm, "private"), "secret plans")
    one = send(db, realm, "owner", users(realm, "member"), "hello there")
    group = send(db, realm, "owner", users(realm, "member", "guest"), "group chat")
    web = send(db, realm, "guest", channel(realm, "web_public"), "on the web")
    every = [link, plain, resolved, private, one, group, web]
    member, owner, guest = (realm.users[n] for n in ("member", "owner", "guest"))
    with db.write() as session:
        # A mention, as the send path sets it (`models.messages.flags`), and a star.
        session.execute(
            update(UserMessage)
            .where(UserMessage.user_profile_id == member, UserMessage.message_id == plain)
            .values(flags=UserMessage.flags.op("|")(MENTIONED_FLAG))
        )
        check_update_message_flags(session, realm.realm_id, member, "add", "starred", [one])
        check_update_message_flags(session, realm.realm_id, member, "add", "read", [link])
    assert found(db, realm, "member", []) == every

    cases: list[tuple[list[Any], list[int]]] = [
        ([["stream", "public"]], [link, plain, resolved]),
        ([["channel", "private"]], [private]),
        ([{"operator": "streams", "operand": "public"}], [link, plain, resolved, web]),
        ([{"operator": "channels", "operand": "web-public"}], [web]),
        ([["stream", "public"], ["subject", "lunch"]], [plain]),
        ([["topic", "LUNCH"]], [plain]),
        ([{"operator": "pm-with", "operand": [owner]}], [one]),
        ([["pm_with", realm.emails["owner"]]], [one]),
        ([{"operator": "dm", "operand": [owner, guest]}], [group]),
        ([{"operator": "dm-including", "operand": owner}], [one, group]),
        ([{"operator": "dm_including", "operand": guest}], [group]),
        ([{"operator": "group-pm-with", "operand": owner}], [group]),
        ([{"operator": "sender", "operand": owner}], [link, one, group]),
        ([{"operator": "sender", "operand": realm.emails["guest"]}], [web]),
        ([{"operator": "id", "operand": plain}], [plain]),
        ([{"operator": "near", "operand": plain}], every),
        ([["is", "dm"]], [one, group]),
        ([["is", "private"]], [one, group]),
        ([["is", "starred"]], [one]),
        ([["is", "mentioned"]], [plain]),
        # The member's own messages are read, and so is the one they marked.
        ([["is", "unread"]], [one, group, web]),
        ([["is", "resolved"]], [resolved]),
        ([["is", "alerted"]], []),
        ([["is", "followed"]], []),
        ([["is", "muted"]], []),
        ([["has", "link"]], [link]),
        ([["has", "attachment"]], []),
        ([["has", "image"]], []),
        ([["has", "reaction"]], []),
        ([["in", "home"]], every),
        ([["in", "all"]], every),
        ([{"operator": "with", "operand": plain}], [plain]),
        ([{"operator": "with", "operand": one}], [one]),
    ]
    for narrow, expected in cases:
        assert found(db, realm, "member", narrow) == expected, narrow
        if narrow[0] in (["in", "home"], ["in", "all"]) or (
            isinstance(narrow[0], dict) and narrow[0]["operator"] in ("near", "with")
        ):
            continue
        negated = [
            {**term, "negated": True}
            if isinstance(term, dict)
            else {"operator": term[0], "operand": term[1], "negated": True}
            for term in narrow[:1]
        ] + narrow[1:]
        if len(narrow) == 1 and not (
            isinstance(narrow[0], dict) and narrow[0]["operator"] == "channels"
        ):
            # Negated alone, over the member's own history: everything else.
            assert found(db, realm, "member", negated) == [m for m in every if m not in expected]


def test_the_public_channels_history_reaches_the_unsubscribed(
    db: Database, realm: SampleRealm
) -> None:
    """The loner received nothing; `channels:public` reads every public channel's
    history (Zulip's), but no private channel's; a guest reads only what they received."""
    public = send(db, realm, "member", channel(realm, "public"), "public words")
    send(db, realm, "member", channel(realm, "private"), "private words")
    web = send(db, realm, "member", channel(realm, "web_public"), "web words")
    assert found(db, realm, "loner", []) == []
    assert found(db, realm, "loner", [["streams", "public"]]) == [public, web]
    assert found(db, realm, "loner", [["streams", "public"], ["search", "words"]]) == [
        public,
        web,
    ]
    assert found(db, realm, "outsider_guest", [["streams", "public"]]) == []
    # The loner's flags on history they never received: Zulip's `read`, `historical`.
    [message, _] = history(db, realm, "loner", [["streams", "public"]])["messages"]
    assert message["flags"] == ["read", "historical"]


# -- full-text search ------------------------------------------------------------------


def test_search_words_phrases_stemming_and_highlights(db: Database, realm: SampleRealm) -> None:
    running = send(
        db, realm, "member", channel(realm, "public"), "The dogs were running fast", "Races"
    )
    phrase = send(db, realm, "member", channel(realm, "public"), "fast cars run", "vehicles")
    other = send(db, realm, "member", channel(realm, "public"), "nothing to see", "dog days")

    def search(operand: str) -> list[int]:
        return found(db, realm, "member", [{"operator": "search", "operand": operand}])

    # Stemming (both backends stem English): "run" finds "running", "dog" finds "dogs".
    assert search("run") == [running, phrase]
    assert search("dog") == [running, other]
    # Every word must match; a topic word counts.
    assert search("dog fast") == [running]
    assert search("races") == [running]
    assert search("DAYS") == [other]
    # A quoted phrase matches its words in order, next to each other.
    assert search('"fast cars"') == [phrase]
    assert search('"cars fast"') == []
    # Nothing searchable, or words nobody wrote.
    assert search("!!!") == []
    assert search("zebra") == []
    # A negated search leaves out its matches; two search terms both apply.
    negated = [{"operator": "search", "operand": "fast", "negated": True}]
    assert found(db, realm, "member", negated) == [other]
    both = [["search", "fast"], ["search", "cars"]]
    assert found(db, realm, "member", both) == [phrase]

    [message] = history(db, realm, "member", [["topic", "races"], ["search", "running"]])[
        "messages"
    ]
    assert message["match_content"] == (
        '<p>The dogs were <span class="highlight">running</span> fast</p>\n'
    )
    assert message["match_subject"] == "Races"
    [message] = history(db, realm, "member", [["search", "races"]])["messages"]
    assert message["match_subject"] == '<span class="highlight">Races</span>'
    # Only a search narrow carries them.
    assert "match_content" not in history(db, realm, "member", [])["messages"][0]


def test_an_edit_is_searched_as_edited(db: Database, realm: SampleRealm) -> None:
    """The index follows the message: SQLite's FTS5 table by its triggers, PostgreSQL's
    expression index by itself."""
    sent = send(db, realm, "member", channel(realm, "public"), "first draft", "notes")
    with db.write() as session:
        session.execute(
            update(Message)
            .where(Message.id == sent)
            .values(content="second version", subject="memo")
        )
    assert found(db, realm, "member", [["search", "draft"]]) == []
    assert found(db, realm, "member", [["search", "version memo"]]) == [sent]


def test_search_never_leaks(db: Database, realm: SampleRealm) -> None:
    """The same word everywhere: each reader finds exactly what they may read."""
    public = send(db, realm, "member", channel(realm, "public"), "banana public")
    private = send(db, realm, "member", channel(realm, "private"), "banana private")
    direct = send(db, realm, "member", users(realm, "guest"), "banana direct")
    web = send(db, realm, "member", channel(realm, "web_public"), "banana web")
    search = [["search", "banana"]]
    assert found(db, realm, "member", search) == [public, private, direct, web]
    assert found(db, realm, "guest", search) == [public, private, direct, web]
    # Nothing received: nothing found, however public, without a channel narrow.
    for reader in ("loner", "owner", "admin", "outsider_guest"):
        assert found(db, realm, reader, search) == [], reader
    # A channel narrow reads its public history, never a private one's.
    assert found(db, realm, "loner", [["stream", "public"], *search]) == [public]
    with pytest.raises(BadNarrow):
        found(db, realm, "loner", [["stream", "private"], *search])
    assert found(db, realm, "admin", [["stream", "private"], *search]) == []
    # `id` of a message one may not read finds nothing, even within public history.
    assert found(db, realm, "loner", [{"operator": "id", "operand": private}]) == []
    assert found(db, realm, "loner", [["stream", "public"], ["id", str(private)]]) == []
    assert found(db, realm, "loner", [["streams", "public"], ["id", str(direct)]]) == []
    assert found(db, realm, "loner", [["streams", "public"], ["id", str(public)]]) == [public]
    # `dm-including` names only the reader's own conversations.
    assert found(db, realm, "owner", [["dm-including", realm.emails["guest"]]]) == []
    # `with` a message one may not read names nothing and is refused alone.
    with pytest.raises(BadNarrow):
        found(db, realm, "loner", [{"operator": "with", "operand": private}])
    with pytest.raises(BadNarrow):
        found(db, realm, "loner", [{"operator": "with", "operand": direct}])


def test_has_link_is_set_at_send(db: Database, realm: SampleRealm) -> None:
    assert html_has_link('<p><a href="https://example.com">x</a></p>')
    assert html_has_link('<p><a href="mailto:a@b.c">a</a></p>')
    assert not html_has_link('<p><a class="stream" href="/#narrow/channel/1">#x</a></p>')
    assert not html_has_link("<p>no link</p>")
    linked = send(db, realm, "member", channel(realm, "public"), "go to [Zulip](https://zulip.com)")
    plain = send(db, realm, "member", channel(realm, "public"), "nowhere")
    with db.snapshot() as session:
        assert session.get(Message, linked).has_link is True  # type: ignore[union-attr]
        assert session.get(Message, plain).has_link is False  # type: ignore[union-attr]


def test_parse_search() -> None:
    query = parse_search(['cool "big  sunglasses" ok', "again"])
    assert query.words == ("cool", "ok", "again")
    assert query.phrases == (("big", "sunglasses"),)
    assert parse_search(["!!! ---"]).empty


# -- query plans -----------------------------------------------------------------------


def _plan_text(session: Session, statement: Any) -> str:
    compiled = statement.compile(
        dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True}
    )
    if session.get_bind().dialect.name == "postgresql":
        # The tables are tiny: ask whether an index can serve, not whether it is cheaper.
        session.execute(text("SET LOCAL enable_seqscan = off"))
        rows = session.execute(text(f"EXPLAIN {compiled}")).all()
        return "\n".join(str(row[0]) for row in rows)
    rows = session.execute(text(f"EXPLAIN QUERY PLAN {compiled}")).all()
    return "\n".join(str(row[-1]) for row in rows)


# (narrow, the reader, the index each backend's plan names)
PLAN_CASES: list[tuple[list[Any], str, str, str]] = [
    ([["is", "starred"]], "member", "ix_user_message_starred", "ix_user_message_starred"),
    ([["is", "unread"]], "member", "ix_user_message_unread", "ix_user_message_unread"),
    ([["is", "mentioned"]], "member", "ix_user_message_mentioned", "ix_user_message_mentioned"),
    ([["search", "banana split"]], "member", "ix_message_search_tsvector", "message_fts"),
    (
        [["stream", "public"], ["has", "link"]],
        "loner",
        "ix_message_has_link",
        "ix_message_has_link",
    ),
    ([["streams", "public"]], "loner", "message", "message"),
    ([["dm-including", "owner@zulip.example.com"]], "member", "user_message", "user_message"),
    ([["group-pm-with", "owner@zulip.example.com"]], "member", "user_message", "user_message"),
    ([["id", "5"]], "member", "user_message", "user_message"),
    ([["has", "reaction"]], "member", "reaction", "reaction"),
]


@pytest.mark.parametrize(("narrow", "reader", "pg_index", "sqlite_index"), PLAN_CASES)
def test_each_new_operator_reads_through_an_index(
    db: Database,
    realm: SampleRealm,
    narrow: list[Any],
    reader: str,
    pg_index: str,
    sqlite_index: str,
) -> None:
    for _ in range(3):
        send(db, realm, "member", channel(realm, "public"), "banana [x](https://example.com)")
    send(db, realm, "owner", users(realm, "member", "guest"), "hi")
    with db.write() as session:
        viewer = session.get(UserProfile, realm.users[reader])
        assert viewer is not None
        plan = _plan(session, viewer, parse_narrow(narrow))
        query, id_column = _base_query(plan, viewer.id)
        statement = query.order_by(id_column.desc()).limit(100)
        described = _plan_text(session, statement)
        postgresql = session.get_bind().dialect.name == "postgresql"
        expected = pg_index if postgresql else sqlite_index
        if postgresql:
            assert "Seq Scan on message " not in described + " ", described
            assert "Seq Scan on user_message" not in described, described
            assert expected in described, described
        else:
            lines = described.splitlines()
            # No table walked whole: each step searches an index, or is the FTS5 table's.
            for line in lines:
                if line.startswith("SCAN "):
                    assert "VIRTUAL TABLE INDEX" in line or "USING" in line, described
            assert expected in described, described
        session.rollback()


# -- a queue's narrow ------------------------------------------------------------------


def test_a_queue_narrow_takes_what_zulips_event_filter_takes() -> None:
    check_event_narrow(
        parse_narrow([["stream", "a"], ["topic", "b"], ["sender", "c@d.e"], ["is", "starred"]])
    )
    check_event_narrow(parse_narrow([["pm-with", "c@d.e"]]))
    for term in (["search", "x"], ["has", "link"], ["id", "3"], ["streams", "public"]):
        with pytest.raises(InvalidInput) as refused:
            check_event_narrow(parse_narrow([term]))
        operator = parse_narrow([term])[0].operator
        assert str(refused.value) == f"Operator {operator} not supported."


def test_a_queue_filters_by_its_flags_and_topics() -> None:
    def event(flags: list[str], subject: str = "t", kind: str = "stream") -> dict[str, Any]:
        message = {"type": kind, "subject": subject, "display_recipient": "a", "stream_id": 1}
        return {"type": "message", "message": message, "flags": flags}

    def accepts(narrow: list[Any], e: dict[str, Any]) -> bool:
        return EventNarrow(parse_narrow(narrow), 9)(e)

    assert accepts([["is", "starred"]], event(["starred"]))
    assert not accepts([["is", "starred"]], event([]))
    assert accepts([["is", "unread"]], event([]))
    assert not accepts([["is", "unread"]], event(["read"]))
    assert accepts([["is", "mentioned"]], event(["mentioned"]))
    assert accepts([["is", "mentioned"]], event(["stream_wildcard_mentioned"]))
    assert not accepts([["is", "mentioned"]], event(["read"]))
    assert accepts([["is", "resolved"]], event([], "\u2714 done"))
    assert not accepts([["is", "resolved"]], event([], "done"))
    assert accepts([{"operator": "is", "operand": "unread", "negated": True}], event(["read"]))
    assert not accepts([["is", "alerted"]], event(["read"]))
    assert accepts([["is", "private"]], event([], kind="private"))
    assert not accepts([["is", "dm"]], event([]))
