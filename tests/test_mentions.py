"""Issue 25, mentions: rendered as Zulip renders them, with Zulip's flags.

The rendering table holds Zulip's expected HTML for each mention form (from its own
markdown tests and API documentation, zerver/tests/test_markdown.py and
api_docs/message-formatting.md): user mentions by name (any case), by `Name|id` and
`|id`, silent mentions, the channel and topic wildcards, mentions in quotes (silent),
unknown names and wrong ids (left as Markdown), the characters allowed before a mention,
and code spans and blocks (never mentions). Names are resolved among the realm's users
in one statement, none for content without mention syntax.

Sending goes through `verify_action` on both backends, so each recipient's event carries
its own flags (the same as its history), `unread_msgs.mentions` follows: `mentioned` for
a recipient named (not silently); `stream_wildcard_mentioned` and the legacy
`wildcard_mentioned` for every recipient of a message with a channel wildcard, direct
messages included; `topic_wildcard_mentioned` for the topic's participants. Zulip's
rule on wildcards in large channels and topics holds at its default (administrators
only). Marking a mentioned message read takes it out of `mentions`. The unmodified
`zulip` client sees `mentioned` in a message's flags, and a queue registered with
`apply_markdown` false gets the raw content.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from actions.errors import ActionError
from actions.message_edits import MessageUpdate, check_update_message
from actions.message_flags import check_update_message_flags
from actions.messages import (
    WILDCARD_MENTION_THRESHOLD,
    ChannelTarget,
    DirectTarget,
    StreamWildcardMentionNotAllowed,
    TopicWildcardMentionNotAllowed,
    check_send_message,
)
from actions.realms import do_create_realm
from actions.streams import do_create_stream
from actions.subscriptions import bulk_add_subscriptions
from actions.users import do_create_user, do_deactivate_user
from models.database import Database
from models.messages.flags import (
    MENTIONED_FLAG,
    READ_FLAG,
    STREAM_WILDCARD_MENTIONED_FLAG,
    TOPIC_WILDCARD_MENTIONED_FLAG,
    flag_names,
)
from models.messages.mentions import render_message_content
from models.messages.rendering import (
    MentionDirectory,
    MentionTarget,
    render_markdown,
    render_markdown_with_mentions,
)
from models.messages.unreads import unread_msgs
from models.outbox import outbox_count
from models.tables import Message, UserMessage
from models.visibility import active_subscribers
from tests.helpers import zulip_messages
from tests.helpers.api import zulip_client
from tests.helpers.openapi import validate_response
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer
from tests.helpers.statements import count_statements
from tests.helpers.verify import verify_action

zulip_messages.install()

CLIENT = "eventq-tests"
EVENT_TIMEOUT = 30.0

# -- rendering: Zulip's expected HTML ----------------------------------------------------------

HAMLET = MentionTarget(10, "King Hamlet", True)
CORDELIA = MentionTarget(11, "Cordelia, Lear's daughter", True)
GONE = MentionTarget(12, "Gone User", False)
TWIN1 = MentionTarget(13, "Mark Twin", True)
TWIN2 = MentionTarget(14, "Mark Twin", True)
ATOMIC = MentionTarget(15, "Atomic #123 <b>", True)
DIRECTORY = MentionDirectory(
    {t.user_id: t for t in (HAMLET, CORDELIA, GONE, TWIN1, TWIN2, ATOMIC)},
    {t.full_name.lower(): t for t in (HAMLET, CORDELIA, GONE, TWIN1, ATOMIC)},
)


def span(user: MentionTarget, silent: bool = False) -> str:
    if silent:
        classes, shown = "user-mention silent", user.full_name
    else:
        classes, shown = "user-mention", "@" + user.full_name
    return f'<span class="{classes}" data-user-id="{user.user_id}">{shown}</span>'


def channel_wildcard(name: str, silent: bool = False) -> str:
    if silent:
        return (
            '<span class="user-mention channel-wildcard-mention silent" '
            f'data-user-id="*">{name}</span>'
        )
    return f'<span class="user-mention channel-wildcard-mention" data-user-id="*">@{name}</span>'


# (content, expected HTML, mentioned ids, channel wildcard, topic wildcard)
RENDERING_CASES: list[tuple[str, str, set[int], bool, bool]] = [
    ("@**King Hamlet**", f"<p>{span(HAMLET)}</p>", {10}, False, False),
    ("@**king hamLET**", f"<p>{span(HAMLET)}</p>", {10}, False, False),
    ("@**|10**", f"<p>{span(HAMLET)}</p>", {10}, False, False),
    ("@**King Hamlet|10**", f"<p>{span(HAMLET)}</p>", {10}, False, False),
    ("@_**King Hamlet**", f"<p>{span(HAMLET, silent=True)}</p>", set(), False, False),
    (
        "@**King Hamlet** and @**Cordelia, Lear's daughter**, check this out",
        f"<p>{span(HAMLET)} and {span(CORDELIA)}, check this out</p>",
        {10, 11},
        False,
        False,
    ),
    (
        "@**Mark Twin|13**, @**Mark Twin|14** hi.",
        f"<p>{span(TWIN1)}, {span(TWIN2)} hi.</p>",
        {13, 14},
        False,
        False,
    ),
    # A deactivated user: rendered silent, nobody mentioned.
    ("@**Gone User**", f"<p>{span(GONE, silent=True)}</p>", set(), False, False),
    # Syntax naming nobody stays Markdown.
    (
        "Hey @**Nonexistent User**",
        "<p>Hey @<strong>Nonexistent User</strong></p>",
        set(),
        False,
        False,
    ),
    (
        "@**King Hamlet|10** and @**aaron|10**",
        f"<p>{span(HAMLET)} and @<strong>aaron|10</strong></p>",
        {10},
        False,
        False,
    ),
    (
        "@_**|123456789** and @_**|10**",
        f"<p>@_<strong>|123456789</strong> and {span(HAMLET, silent=True)}</p>",
        set(),
        False,
        False,
    ),
    ("@aaron test", "<p>@aaron test</p>", set(), False, False),
    ("@all test", "<p>@all test</p>", set(), False, False),
    ("test @alleycat.com test", "<p>test @alleycat.com test</p>", set(), False, False),
    # Allowed and refused characters right before a mention.
    ("(@**King Hamlet**", f"<p>({span(HAMLET)}</p>", {10}, False, False),
    ("[@**King Hamlet**", f"<p>[{span(HAMLET)}</p>", {10}, False, False),
    ("/@**King Hamlet**", f"<p>/{span(HAMLET)}</p>", {10}, False, False),
    ("{@**King Hamlet**", f"<p>{{{span(HAMLET)}</p>", {10}, False, False),
    (".@**King Hamlet**", "<p>.@<strong>King Hamlet</strong></p>", set(), False, False),
    ("#@**King Hamlet**", "<p>#@<strong>King Hamlet</strong></p>", set(), False, False),
    (
        "smush@**King Hamlet**smush",
        "<p>smush@<strong>King Hamlet</strong>smush</p>",
        set(),
        False,
        False,
    ),
    # Wildcards.
    *[
        (f"@**{name}** test", f"<p>{channel_wildcard(name)} test</p>", set(), True, False)
        for name in ("all", "everyone", "channel", "stream")
    ],
    *[
        (f"@_**{name}**", f"<p>{channel_wildcard(name, silent=True)}</p>", set(), False, False)
        for name in ("all", "everyone", "channel", "stream")
    ],
    (
        "@**topic** test",
        '<p><span class="topic-mention">@topic</span> test</p>',
        set(),
        False,
        True,
    ),
    ("@_**topic**", '<p><span class="topic-mention silent">topic</span></p>', set(), False, False),
    # In a quote every mention is silent.
    (
        "> @**King Hamlet** and @**all**\n\n@**King Hamlet**",
        f"<blockquote>\n<p>{span(HAMLET, silent=True)} and {channel_wildcard('all', silent=True)}"
        f"</p>\n</blockquote>\n<p>{span(HAMLET)}</p>",
        {10},
        False,
        False,
    ),
    (
        "> @**topic**",
        '<blockquote>\n<p><span class="topic-mention silent">topic</span></p>\n</blockquote>',
        set(),
        False,
        False,
    ),
    # Never in code.
    (
        "`@**King Hamlet**` `@**all**`",
        "<p><code>@**King Hamlet**</code> <code>@**all**</code></p>",
        set(),
        False,
        False,
    ),
    ("```\n@**topic**\n```", "<pre><code>@**topic**\n</code></pre>", set(), False, False),
    ("    @**everyone**", "<pre><code>@**everyone**\n</code></pre>", set(), False, False),
    # Text is escaped as Zulip escapes it (quotes stay).
    (
        "@**Atomic #123 <b>**",
        '<p><span class="user-mention" data-user-id="15">@Atomic #123 &lt;b&gt;</span></p>',
        {15},
        False,
        False,
    ),
]


@pytest.mark.parametrize(("content", "html", "user_ids", "channel", "topic"), RENDERING_CASES)
def test_mentions_render_as_zulip_renders_them(
    content: str, html: str, user_ids: set[int], channel: bool, topic: bool
) -> None:
    rendered, found = render_markdown_with_mentions(content, DIRECTORY)
    assert rendered.rstrip("\n") == html
    assert (found.user_ids, found.stream_wildcard, found.topic_wildcard) == (
        user_ids,
        channel,
        topic,
    )


def test_without_a_directory_mention_syntax_stays_markdown() -> None:
    assert render_markdown("@**all**") == "<p>@<strong>all</strong></p>\n"


@pytest.mark.parametrize(
    ("flags", "names"),
    [
        (0, []),
        (READ_FLAG, ["read"]),
        (MENTIONED_FLAG, ["mentioned"]),
        (
            READ_FLAG | STREAM_WILDCARD_MENTIONED_FLAG,
            ["read", "stream_wildcard_mentioned", "wildcard_mentioned"],
        ),
        (TOPIC_WILDCARD_MENTIONED_FLAG, ["topic_wildcard_mentioned", "wildcard_mentioned"]),
        (
            MENTIONED_FLAG | STREAM_WILDCARD_MENTIONED_FLAG | TOPIC_WILDCARD_MENTIONED_FLAG,
            [
                "mentioned",
                "stream_wildcard_mentioned",
                "topic_wildcard_mentioned",
                "wildcard_mentioned",
            ],
        ),
        (None, ["read", "historical"]),
    ],
)
def test_flag_names_follow_zulip_with_the_legacy_wildcard_name_last(
    flags: int | None, names: list[str]
) -> None:
    assert flag_names(flags) == names


# -- resolving names against the realm -------------------------------------------------------


def test_names_resolve_in_one_statement_and_none_without_mention_syntax(
    db: Database, realm: SampleRealm
) -> None:
    member, owner = realm.users["member"], realm.users["owner"]
    with db.write() as session:
        gone = do_create_user(session, realm.realm_id, "gone@zulip.example.com", "Gone Away").id
    with db.write() as session:
        do_deactivate_user(session, realm.realm_id, gone)
    content = (
        f"@**MEMBER** @**Owner|{owner}** @**Gone Away** @**Nobody** @**|999999** @**all** "
        "`@**Admin**` @_**Guest**"
    )
    with count_statements(db.engine) as log, db.snapshot() as session:
        rendered = render_message_content(session, realm.realm_id, content)
    assert log.count == 1, log.statements
    assert rendered.mentioned_user_ids == {member, owner}
    assert rendered.stream_wildcard and not rendered.topic_wildcard
    assert f'<span class="user-mention silent" data-user-id="{gone}">Gone Away</span>' in (
        rendered.html
    )
    assert "@<strong>Nobody</strong>" in rendered.html
    assert "<code>@**Admin**</code>" in rendered.html
    with count_statements(db.engine) as log, db.snapshot() as session:
        plain = render_message_content(session, realm.realm_id, "hello **world** @all")
    assert log.count == 0
    assert plain.html == render_markdown("hello **world** @all")
    assert not plain.mentioned_user_ids and not plain.stream_wildcard


def test_names_resolve_only_within_the_realm(db: Database, realm: SampleRealm) -> None:
    with db.write() as session:
        elsewhere = do_create_realm(session, "elsewhere", "Elsewhere").id
    with db.write() as session:
        stranger = do_create_user(session, elsewhere, "s@elsewhere.example.com", "Stranger").id
    with db.snapshot() as session:
        rendered = render_message_content(
            session, realm.realm_id, f"@**Stranger** @**|{stranger}**"
        )
    assert not rendered.mentioned_user_ids
    assert "user-mention" not in rendered.html


# -- flags at send, through verify_action ----------------------------------------------------


def sending(
    realm: SampleRealm,
    sender: str,
    target: ChannelTarget | DirectTarget,
    content: str,
    topic: str | None = "mentions",
) -> Any:
    def action(session: Session) -> int:
        return check_send_message(
            session, realm.realm_id, realm.users[sender], target, topic, content, CLIENT
        )

    return action


def send(
    db: Database,
    realm: SampleRealm,
    sender: str,
    target: Any,
    content: str,
    topic: str = "mentions",
) -> int:
    with db.write() as session:
        return check_send_message(
            session, realm.realm_id, realm.users[sender], target, topic, content, CLIENT
        )


def flags_by_user(verified: Any) -> dict[int, list[str]]:
    """Each recipient's flags, from the message events it received."""
    flags: dict[int, list[str]] = {}
    for stored in verified.events:
        if stored.event["type"] == "message":
            for user_id in stored.user_ids:
                assert user_id not in flags
                flags[user_id] = stored.event["flags"]
    return flags


def stored_flags(db: Database, message_id: int) -> dict[int, int]:
    with db.snapshot() as session:
        return {
            int(user): int(flags)
            for user, flags in session.execute(
                select(UserMessage.user_profile_id, UserMessage.flags).where(
                    UserMessage.message_id == message_id
                )
            )
        }


def test_a_named_recipient_is_flagged_mentioned(db: Database, realm: SampleRealm) -> None:
    users = realm.users
    verified = verify_action(
        db,
        realm.realm_id,
        sending(realm, "owner", ChannelTarget("public"), "hi @**Member** and @_**Guest**"),
        num_events=3,
    )
    flags = flags_by_user(verified)
    assert flags[users["member"]] == ["mentioned"]
    assert flags[users["guest"]] == []  # silent
    assert flags[users["owner"]] == ["read"]
    assert stored_flags(db, verified.result)[users["member"]] == MENTIONED_FLAG
    with db.snapshot() as session:
        assert unread_msgs(session, users["member"])["mentions"] == [verified.result]
        assert unread_msgs(session, users["guest"])["mentions"] == []


def test_the_sender_mentioning_themselves_is_mentioned_and_read(
    db: Database, realm: SampleRealm
) -> None:
    verified = verify_action(
        db, realm.realm_id, sending(realm, "member", ChannelTarget("public"), "@**Member**")
    )
    assert flags_by_user(verified)[realm.users["member"]] == ["read", "mentioned"]


def test_a_mention_of_a_non_recipient_changes_nothing_for_them(
    db: Database, realm: SampleRealm
) -> None:
    """loner is not in the private channel: no row, no event, however named."""
    verified = verify_action(
        db, realm.realm_id, sending(realm, "member", ChannelTarget("private"), "@**Loner**")
    )
    assert realm.users["loner"] not in flags_by_user(verified)
    assert realm.users["loner"] not in stored_flags(db, verified.result)
    assert all("mentioned" not in flags for flags in flags_by_user(verified).values())


def test_mentions_in_code_or_quotes_flag_nobody(db: Database, realm: SampleRealm) -> None:
    verified = verify_action(
        db,
        realm.realm_id,
        sending(
            realm,
            "owner",
            ChannelTarget("public"),
            "`@**Member**` and\n```\n@**all**\n```\n> @**Guest** @**topic**",
        ),
        num_events=2,
    )
    flags = flags_by_user(verified)
    assert flags[realm.users["member"]] == [] and flags[realm.users["guest"]] == []


@pytest.mark.parametrize("wildcard", ["all", "everyone", "channel", "stream"])
def test_a_channel_wildcard_flags_every_recipient(
    db: Database, realm: SampleRealm, wildcard: str
) -> None:
    users = realm.users
    verified = verify_action(
        db,
        realm.realm_id,
        sending(realm, "member", ChannelTarget("public"), f"@**{wildcard}** hello @**Guest**"),
        num_events=2,
    )
    flags = flags_by_user(verified)
    assert flags[users["member"]] == ["read", "stream_wildcard_mentioned", "wildcard_mentioned"]
    assert flags[users["guest"]] == [
        "mentioned",
        "stream_wildcard_mentioned",
        "wildcard_mentioned",
    ]
    with db.snapshot() as session:
        assert unread_msgs(session, users["guest"])["mentions"] == [verified.result]


def test_a_silent_channel_wildcard_flags_nobody(db: Database, realm: SampleRealm) -> None:
    verified = verify_action(
        db,
        realm.realm_id,
        sending(realm, "member", ChannelTarget("public"), "@_**all**"),
        num_events=2,
    )
    assert flags_by_user(verified)[realm.users["guest"]] == []


def test_a_channel_wildcard_in_a_direct_message_flags_every_participant(
    db: Database, realm: SampleRealm
) -> None:
    users = realm.users
    verified = verify_action(
        db,
        realm.realm_id,
        sending(
            realm,
            "member",
            DirectTarget(user_ids=(users["guest"], users["loner"])),
            "@**everyone** look",
        ),
        num_events=2,
    )
    flags = flags_by_user(verified)
    for name in ("guest", "loner"):
        assert flags[users[name]] == ["stream_wildcard_mentioned", "wildcard_mentioned"]
    assert flags[users["member"]] == ["read", "stream_wildcard_mentioned", "wildcard_mentioned"]


def test_the_topic_wildcard_flags_the_topics_participants(db: Database, realm: SampleRealm) -> None:
    users = realm.users
    # guest took part in the topic (in another case); member did not.
    send(db, realm, "guest", ChannelTarget("public"), "first", topic="Plans")
    send(db, realm, "guest", ChannelTarget("public"), "elsewhere", topic="other")
    verified = verify_action(
        db,
        realm.realm_id,
        sending(realm, "owner", ChannelTarget("public"), "@**topic** ready?", topic="plans"),
        num_events=3,
    )
    flags = flags_by_user(verified)
    assert flags[users["guest"]] == ["topic_wildcard_mentioned", "wildcard_mentioned"]
    assert flags[users["member"]] == []
    assert flags[users["owner"]] == ["read", "topic_wildcard_mentioned", "wildcard_mentioned"]
    with db.snapshot() as session:
        assert verified.result in unread_msgs(session, users["guest"])["mentions"]
        assert verified.result not in unread_msgs(session, users["member"])["mentions"]


def test_the_topic_wildcard_in_a_direct_message_flags_nobody(
    db: Database, realm: SampleRealm
) -> None:
    users = realm.users
    verified = verify_action(
        db,
        realm.realm_id,
        sending(realm, "member", DirectTarget(user_ids=(users["guest"],)), "@**topic**"),
        num_events=2,
    )
    assert flags_by_user(verified)[users["guest"]] == []
    assert '<span class="topic-mention">@topic</span>' in _content(db, verified.result)


def _content(db: Database, message_id: int) -> str:
    with db.snapshot() as session:
        return str(
            session.execute(
                select(Message.rendered_content).where(Message.id == message_id)
            ).scalar_one()
        )


def test_marking_a_mention_read_and_unread_keeps_mentions_true(
    db: Database, realm: SampleRealm
) -> None:
    users = realm.users
    message_id = send(db, realm, "owner", ChannelTarget("public"), "@**Member** see")
    wildcard_id = send(db, realm, "owner", ChannelTarget("public"), "@**all** see")
    with db.snapshot() as session:
        assert unread_msgs(session, users["member"])["mentions"] == [message_id, wildcard_id]

    def change(operation: str) -> Any:
        def action(session: Session) -> Any:
            return check_update_message_flags(
                session,
                realm.realm_id,
                users["member"],
                operation,
                "read",
                [message_id, wildcard_id],
            )

        return action

    verify_action(db, realm.realm_id, change("add"), num_events=1)
    with db.snapshot() as session:
        assert unread_msgs(session, users["member"])["mentions"] == []
    verified = verify_action(db, realm.realm_id, change("remove"), num_events=1)
    details = verified.events[0].event["message_details"]
    assert details[str(message_id)]["mentioned"] is True
    assert details[str(wildcard_id)]["mentioned"] is True
    with db.snapshot() as session:
        assert unread_msgs(session, users["member"])["mentions"] == [message_id, wildcard_id]


def test_a_message_with_mentions_costs_one_statement_more_whatever_the_recipients(
    db: Database, realm: SampleRealm
) -> None:
    def statements(content: str) -> int:
        with count_statements(db.engine) as log, db.write() as session:
            check_send_message(
                session,
                realm.realm_id,
                realm.users["member"],
                ChannelTarget("public"),
                "t",
                content,
                CLIENT,
            )
        return log.count

    send(db, realm, "member", ChannelTarget("public"), "creates the recipient")
    plain = statements("plain")
    assert statements(f"@**all** @**Guest** @**Owner|{realm.users['owner']}**") == plain + 1
    assert statements("`@**Guest**` has the syntax in code") == plain + 1


# -- wildcards in large channels and topics ----------------------------------------------------


def _large_channel(db: Database, realm: SampleRealm) -> int:
    with db.write() as session:
        stream_id = do_create_stream(session, realm.realm_id, "large").id
        extra = [
            do_create_user(session, realm.realm_id, f"many{i}@zulip.example.com").id
            for i in range(WILDCARD_MENTION_THRESHOLD)
        ]
        bulk_add_subscriptions(
            session,
            realm.realm_id,
            [*extra, realm.users["member"], realm.users["admin"]],
            [stream_id],
        )
    return stream_id


def test_channel_wildcards_in_a_large_channel_are_for_administrators(
    db: Database, realm: SampleRealm
) -> None:
    stream_id = _large_channel(db, realm)
    with db.snapshot() as session:
        before = outbox_count(session, realm.realm_id)
    with pytest.raises(StreamWildcardMentionNotAllowed) as refused, db.write() as session:
        check_send_message(
            session,
            realm.realm_id,
            realm.users["member"],
            ChannelTarget(stream_id),
            "t",
            "@**all**",
            CLIENT,
        )
    assert refused.value.code == "STREAM_WILDCARD_MENTION_NOT_ALLOWED"
    assert str(refused.value) == (
        "You do not have permission to use channel wildcard mentions in this channel."
    )
    with db.snapshot() as session:
        assert outbox_count(session, realm.realm_id) == before
    # A silent wildcard, a wildcard in code, and a user mention are fine.
    send(db, realm, "member", ChannelTarget(stream_id), "@_**all** `@**all**` @**Admin**")
    verified = verify_action(
        db, realm.realm_id, sending(realm, "admin", ChannelTarget(stream_id), "@**everyone**")
    )
    assert all("stream_wildcard_mentioned" in f for f in flags_by_user(verified).values())


def test_an_edit_follows_the_wildcard_rule_of_a_send(db: Database, realm: SampleRealm) -> None:
    """Adding `@**all**` by an edit in a large channel is for administrators, as sending it
    is; a refused edit writes nothing, an allowed one flags every recipient."""
    stream_id = _large_channel(db, realm)
    by_member = send(db, realm, "member", ChannelTarget(stream_id), "hello")
    by_admin = send(db, realm, "admin", ChannelTarget(stream_id), "hello")
    with db.snapshot() as session:
        before = outbox_count(session, realm.realm_id)
    with pytest.raises(StreamWildcardMentionNotAllowed), db.write() as session:
        check_update_message(
            session,
            realm.realm_id,
            realm.users["member"],
            by_member,
            MessageUpdate(content="hello @**all**"),
        )
    with db.snapshot() as session:
        assert outbox_count(session, realm.realm_id) == before
        content = session.scalar(select(Message.content).where(Message.id == by_member))
        assert content == "hello"

    def edit(session: Session) -> dict[str, Any]:
        return check_update_message(
            session,
            realm.realm_id,
            realm.users["admin"],
            by_admin,
            MessageUpdate(content="hello @**all**"),
        )

    verify_action(db, realm.realm_id, edit)
    with db.snapshot() as session:
        flags = session.scalars(select(UserMessage.flags).where(UserMessage.message_id == by_admin))
        assert all(bit & STREAM_WILDCARD_MENTIONED_FLAG for bit in flags)


def test_the_topic_wildcard_in_a_large_topic_is_for_administrators(
    db: Database, realm: SampleRealm
) -> None:
    stream_id = _large_channel(db, realm)
    # Every subscriber but member and admin (15 users) posts: with member, 16 participants.
    with db.snapshot() as session:
        posters = sorted(
            active_subscribers(session, [stream_id])[stream_id]
            - {realm.users["member"], realm.users["admin"]}
        )
    for user_id in posters:
        with db.write() as session:
            check_send_message(
                session, realm.realm_id, user_id, ChannelTarget(stream_id), "busy", "me", CLIENT
            )
    with pytest.raises(TopicWildcardMentionNotAllowed) as refused, db.write() as session:
        check_send_message(
            session,
            realm.realm_id,
            realm.users["member"],
            ChannelTarget(stream_id),
            "busy",
            "@**topic**",
            CLIENT,
        )
    assert refused.value.code == "TOPIC_WILDCARD_MENTION_NOT_ALLOWED"
    # In a quieter topic of the same large channel, member may.
    send(db, realm, "member", ChannelTarget(stream_id), "@**topic**", topic="quiet")
    verified = verify_action(
        db,
        realm.realm_id,
        sending(realm, "admin", ChannelTarget(stream_id), "@**topic**", topic="busy"),
    )
    flags = flags_by_user(verified)
    assert all("topic_wildcard_mentioned" in flags[u] for u in posters)
    assert "topic_wildcard_mentioned" not in flags[realm.users["member"]]


def test_refusals_are_action_errors_with_zulips_status() -> None:
    assert issubclass(StreamWildcardMentionNotAllowed, ActionError)
    assert StreamWildcardMentionNotAllowed.http_status == 400
    assert TopicWildcardMentionNotAllowed.http_status == 400


# -- the official client ------------------------------------------------------------------------


def test_the_zulip_client_sees_mentioned_and_raw_content(
    server: LiveServer, realm: SampleRealm
) -> None:
    member, guest = zulip_client(server, realm, "member"), zulip_client(server, realm, "guest")
    html_queue = guest.register(event_types=["message"], apply_markdown=True)
    raw_queue = guest.register(event_types=["message"], apply_markdown=False)
    assert html_queue["result"] == raw_queue["result"] == "success"
    sent = member.send_message(
        {"type": "stream", "to": "public", "topic": "hi", "content": "@**Guest** ping"}
    )
    assert sent["result"] == "success", sent
    validate_response("POST", "/api/v1/messages", 200, sent)

    def first_message(queue: dict[str, Any]) -> dict[str, Any]:
        answer = guest.get_events(queue_id=queue["queue_id"], last_event_id=-1)
        assert answer["result"] == "success", answer
        return next(e for e in answer["events"] if e["type"] == "message")

    result: Future[tuple[dict[str, Any], dict[str, Any]]] = Future()

    def poll() -> None:
        try:
            result.set_result((first_message(html_queue), first_message(raw_queue)))
        except BaseException as error:
            result.set_exception(error)

    threading.Thread(target=poll, daemon=True).start()
    rendered, raw = result.result(timeout=EVENT_TIMEOUT)
    assert rendered["flags"] == raw["flags"] == ["mentioned"]
    guest_id = realm.users["guest"]
    assert rendered["message"]["content"] == (
        f'<p><span class="user-mention" data-user-id="{guest_id}">@Guest</span> ping</p>\n'
    )
    assert raw["message"]["content"] == "@**Guest** ping"
    history = guest.get_messages(
        {"anchor": sent["id"], "num_before": 0, "num_after": 0, "apply_markdown": False}
    )
    assert history["result"] == "success", history
    assert history["messages"][0]["flags"] == ["mentioned"]
    assert history["messages"][0]["content"] == "@**Guest** ping"
