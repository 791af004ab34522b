"""The message pieces that need no database: the narrow as a queue's event filter and its
parsing, the raw-Markdown variant queues share, and Markdown rendering."""

from __future__ import annotations

import json
from typing import Any

import pytest

from actions.errors import InvalidInput
from models.messages.narrows import (
    BadNarrow,
    EventNarrow,
    NarrowTerm,
    narrow_from_json,
    narrow_to_json,
    parse_narrow,
)
from models.messages.rendering import render_markdown
from models.messages.wire import RAW_MARKDOWN_KEY, MessageView, Participant, message_event
from queues import types as queue_types
from queues.descriptor import ClientDescriptor
from queues.queue import EventQueue
from queues.types import Capabilities, SharedEvent

OWNER = Participant(10, "owner@x.example", "Owner")
ALICE = Participant(11, "alice@x.example", "Alice")
BOB = Participant(12, "bob@x.example", "Bob")


def view(
    message_id: int,
    sender: Participant = ALICE,
    stream: tuple[int, str] | None = (7, "Design"),
    participants: tuple[Participant, ...] = (),
    subject: str = "Logo",
    content: str = "*hi*",
) -> MessageView:
    return MessageView(
        id=message_id,
        sender=sender,
        realm_str="zulip",
        recipient_id=3,
        stream=stream,
        participants=participants,
        subject=subject if stream else "",
        content=content,
        rendered_content=render_markdown(content),
        timestamp=1_700_000_000,
        client="test",
    )


def dm(message_id: int, *people: Participant, sender: Participant = ALICE) -> MessageView:
    ordered = tuple(sorted({sender, *people}, key=lambda p: p.id))
    return view(message_id, sender=sender, stream=None, participants=ordered)


def matches(narrow: list[Any], message: MessageView, owner: int = OWNER.id) -> bool:
    return EventNarrow(parse_narrow(narrow), owner)(message_event(message, []))


def test_channel_topic_and_sender_terms() -> None:
    design = view(1)
    assert matches([["channel", "design"]], design)
    assert matches([["stream", 7]], design)
    assert not matches([["channel", 8]], design)
    assert matches([["channel", "Design"], ["topic", "LOGO"]], design)
    assert not matches([["channel", "Design"], ["subject", "fonts"]], design)
    assert matches([["sender", "ALICE@x.example"]], design)
    assert matches([["sender", ALICE.id]], design)
    assert not matches([["sender", BOB.email]], design)
    assert matches([{"operator": "sender", "operand": BOB.id, "negated": True}], design)
    assert not matches([["is", "dm"]], design)
    assert not matches([["dm", [ALICE.id]]], design)


def test_direct_message_terms_name_exactly_the_conversation() -> None:
    pair = dm(1, OWNER)  # Alice and the queue's owner
    group = dm(2, OWNER, BOB)
    own = dm(3, sender=OWNER)  # the owner alone
    assert matches([["dm", [ALICE.id]]], pair)
    assert matches([["pm-with", "alice@x.example"]], pair)
    assert not matches([["dm", [ALICE.id]]], group)
    assert matches([["dm", f"{BOB.email}, {ALICE.email}"]], group)
    assert matches([["dm", [ALICE.id, BOB.id]]], group)
    assert not matches([["dm", [BOB.id]]], pair)
    assert matches([["dm", [OWNER.id]]], own)
    assert not matches([["dm", [OWNER.id]]], pair)
    assert all(matches([["is", "private"]], m) for m in (pair, group, own))
    assert not matches([["channel", "Design"]], pair)
    assert not matches([["topic", ""]], pair)


def test_parse_narrow_normalizes_and_refuses() -> None:
    terms = parse_narrow([["Stream", " Design "], {"operator": "pm-with", "operand": [3, 1, 3]}])
    assert terms == (NarrowTerm("channel", "Design"), NarrowTerm("dm", (1, 3)))
    assert narrow_from_json(narrow_to_json(terms)) == terms
    assert narrow_to_json(()) is None and narrow_from_json(None) == ()
    for bad, error in [
        ([["has", "video"]], BadNarrow),
        ([["is", "bogus"]], BadNarrow),
        ([["channel", True]], BadNarrow),
        ([["dm", [1, "a@b.c"]]], BadNarrow),
        ([["dm", []]], BadNarrow),
        ([["sender", 2**31]], BadNarrow),
        ([["topic", 5]], BadNarrow),
        ([["channel"]], InvalidInput),
        ([{"operator": "channel"}], InvalidInput),
        ([{"operator": "channel", "operand": "x", "negated": "yes"}], InvalidInput),
        ([["channel", "x"]] * 17, InvalidInput),
        ("not a list", InvalidInput),
    ]:
        with pytest.raises(error):
            parse_narrow(bad)


def test_the_raw_markdown_variant_is_shared_and_never_leaks_the_stored_key() -> None:
    assert queue_types.RAW_MARKDOWN_KEY == RAW_MARKDOWN_KEY
    stored = message_event(view(5, content="**bold** <b>"), [])
    stored_json = json.dumps(stored).encode()
    event = SharedEvent(1, 9, json.loads(stored_json), [10, 11], encoded=stored_json)
    html = json.loads(event.encode_with_id(4))
    assert RAW_MARKDOWN_KEY not in html and html["id"] == 4
    assert html["message"]["content"] == "<p><strong>bold</strong> &lt;b&gt;</p>\n"
    raw = event.raw_markdown_variant()
    assert raw is event.raw_markdown_variant(), "built once, shared by every raw queue"
    assert (raw.seq, raw.user_ids, raw.type) == (event.seq, event.user_ids, "message")
    shown = json.loads(raw.encode_with_id(4))
    assert RAW_MARKDOWN_KEY not in shown
    assert shown["message"]["content"] == "**bold** <b>"
    assert shown["message"]["content_type"] == "text/x-markdown"
    other = SharedEvent(1, 10, {"type": "stream", "op": "create", "streams": []}, [10])
    assert other.raw_markdown_variant() is other


def client(narrow: EventNarrow | None, apply_markdown: bool) -> ClientDescriptor:
    return ClientDescriptor(
        queue_id="q",
        realm_id=1,
        user_id=OWNER.id,
        event_types=None,
        capabilities=Capabilities(),
        client_name="test",
        client_version=None,
        lifespan_secs=600,
        now=0.0,
        queue=EventQueue(),
        legacy_deactivation=False,
        narrow=narrow,
        apply_markdown=apply_markdown,
    )


def test_a_narrowed_raw_queue_takes_matching_messages_raw_and_every_other_event() -> None:
    narrowed = client(EventNarrow(parse_narrow([["channel", "design"]]), OWNER.id), False)
    events = [
        SharedEvent(1, 1, message_event(view(1), []), [OWNER.id]),
        SharedEvent(1, 2, message_event(view(2, stream=(8, "Other")), []), [OWNER.id]),
        SharedEvent(1, 3, {"type": "stream", "op": "create", "streams": []}, [OWNER.id]),
    ]
    pushed = [narrowed.deliver(event) for event in events]
    assert pushed == [True, False, True]
    assert narrowed.queue.last_seq == 3
    contents = narrowed.queue.contents()
    assert [entry.event.seq for entry in contents] == [1, 3]
    assert contents[0].event is events[0].raw_markdown_variant()
    assert json.loads(narrowed.queue.encoded_events()[0])["message"]["content"] == "*hi*"


def test_rendering_leaves_no_markup_of_the_sender() -> None:
    html = render_markdown('<script>x</script> <a href="y">z</a> ![i](http://t/p.png) ~~s~~')
    assert "<script" not in html and '<a href="y"' not in html and "<img" not in html
    assert "<s>s</s>" in html
