"""The rendering of a message's content: Markdown to the HTML clients show, bounded.

This module owns `render_markdown`: Markdown with raw HTML disabled, so nothing a sender
writes reaches another client as markup, refused as Zulip refuses it, "Unable to render
message" (`MarkdownRenderingError`), when the HTML would pass `MAX_RENDERED_LENGTH`, and
stopped while it is parsed once it makes more than `MAX_RENDER_BLOCK_TOKENS` block
tokens, so that source refused for its length costs little CPU.

It also owns the rendering of mentions (`render_markdown_with_mentions`), as Zulip renders
them (zerver/lib/markdown's user mention pattern): `@**Full Name**`, `@**Full Name|id**`
and `@**|id**` of a user of the realm, their silent forms `@_**…**`, the channel
wildcards `@**all**`, `@**everyone**`, `@**channel**`, `@**stream**` and the topic
wildcard `@**topic**`. A mention is only recognized at the start of the text or after
whitespace or one of `'"({[/<`; never inside code spans or code blocks (they are not
parsed inline); inside a quote it is always rendered silent, so quoting a message does
not notify again; a mention of a deactivated user is silent too. Syntax naming nobody
(an unknown name, an id that is not a user of the realm, a name that does not match the
id's user) stays Markdown: `@**Nobody**` renders as `@<strong>Nobody</strong>`. Which
users a name can mean comes from the caller (`MentionDirectory`, read by
`models.messages.mentions` in one query): this module reads nothing.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.rules_inline import StateInline
from markdown_it.token import Token
from markdown_it.utils import OptionsDict

from actions.errors import InvalidInput
from models.tables import MAX_MESSAGE_LENGTH

# The longest HTML a message may render to: Zulip refuses a message whose rendered
# content exceeds 100 times MAX_MESSAGE_LENGTH (zerver/lib/markdown/__init__.py,
# `do_convert`: "Rendered content exceeds ... characters", a MarkdownRenderingError that
# zerver/actions/message_send.py's `render_incoming_message` answers as "Unable to render
# message"), and stops any rendering after 5 s. eventq stores the HTML three times (the
# message row and its two `message` events) and sends it in every event and history read,
# so it refuses at ten times: a 7,203-character table that markdown-it completes to 65,536
# cells renders to 668,004 characters (the review measured 2.2 MB stored for it). Text
# renders to at most six times its length (`"` is `&quot;`), a table of one-character
# cells to about five: of Markdown not built to expand, only such a table with column
# alignments (36 characters a cell) of more than about 2,700 cells passes the bound.
MAX_RENDERED_LENGTH = 10 * MAX_MESSAGE_LENGTH
# The most block tokens one rendering may make, checked as the parser makes them, so that
# source which would be refused for its length is refused before most of the work: a
# table cell is three block tokens and renders to at least `<td></td>` and a newline, ten
# characters, so a table of more cells than a third of this renders past
# MAX_RENDERED_LENGTH anyway. Written Markdown makes at most about three block tokens a
# character (a `|` in a table row); only the cells markdown-it fills in (up to 65,536 a
# table, its `MAX_AUTOCOMPLETED_CELLS`) make more, and those cost the CPU: rendering the
# table above took 0.9 s, six smaller ones in one 9,245-character message 6.2 s; refusing
# them at this bound takes 0.10 s and 0.14 s (measured on this project's 2-core machine).
MAX_RENDER_BLOCK_TOKENS = 3 * MAX_RENDERED_LENGTH // 10

# Raw HTML disabled: `<b>` is shown as text, never as markup; images disabled: a sender
# cannot make every recipient's client load a remote image. Newlines are line breaks, as
# in Zulip. markdown-it also refuses `javascript:` and similar links.
_MARKDOWN = (
    MarkdownIt("commonmark", {"html": False, "breaks": True})
    .enable(["strikethrough", "table"])
    .disable("image")
)


class MarkdownRenderingError(InvalidInput):
    """Raised by `render_markdown` for content whose HTML would be longer than
    MAX_RENDERED_LENGTH: Zulip's exception of that name, answered with Zulip's wording
    (BAD_REQUEST). Raised before the message's transaction writes anything."""

    def __init__(self) -> None:
        super().__init__("Unable to render message")


class _BoundedBlockTokens(list[Token]):
    """The block token stream of one rendering: the parser appends every block token
    here (`StateBlock.push`), and the one past MAX_RENDER_BLOCK_TOKENS stops it."""

    __slots__ = ()

    def append(self, token: Token) -> None:
        if len(self) >= MAX_RENDER_BLOCK_TOKENS:
            raise MarkdownRenderingError()
        super().append(token)


def _bound_block_tokens(state: StateCore) -> None:
    state.tokens = _BoundedBlockTokens(state.tokens)


_MARKDOWN.core.ruler.before("block", "eventq_block_token_bound", _bound_block_tokens)


def render_markdown(content: str) -> str:
    """The HTML a client shows for `content` (`apply_markdown` true), without mentions
    (mention syntax stays Markdown). Raises `MarkdownRenderingError` for content whose
    HTML would pass MAX_RENDERED_LENGTH."""
    return _render(content, {})


def _render(content: str, env: MutableMapping[str, Any]) -> str:
    rendered = _MARKDOWN.render(content, env)
    if len(rendered) > MAX_RENDERED_LENGTH:
        raise MarkdownRenderingError()
    return rendered


# -- mentions ---------------------------------------------------------------------------------

# Zulip's mention syntax (zerver/lib/mention.py, MENTIONS_RE): `@`, `_` for a silent
# mention, then a name between `**`, which holds no `*`.
MENTION_SYNTAX = re.compile(r"@(?P<silent>_?)\*\*(?P<text>[^*]+)\*\*")
# The `Name|id` and `|id` forms: the id decides, the name (when given) must be the user's.
_ID_SYNTAX = re.compile(r"(?P<full_name>.+)?\|(?P<user_id>\d+)$", re.DOTALL)
# What may come right before a mention (Zulip's BEFORE_MENTION_ALLOWED_REGEX), besides
# the start of the text and whitespace: so `smush@**Name**` and `.@**Name**` are not.
_ALLOWED_BEFORE_MENTION = frozenset("'\"({[/<")
STREAM_WILDCARDS = frozenset({"all", "everyone", "channel", "stream"})
TOPIC_WILDCARDS = frozenset({"topic"})
# Content without either marker has no mention: the caller skips the user query.
MENTION_MARKERS = ("@**", "@_**")
_MENTION_TOKEN = "eventq_mention"
# Keys of the rendering's `env`: the directory the caller passes, the mentions found.
_DIRECTORY_KEY = "eventq_mention_directory"
_FOUND_KEY = "eventq_mentions_found"


@dataclass(frozen=True, slots=True)
class MentionTarget:
    """A user a mention may name: id, current full name, and whether still active."""

    user_id: int
    full_name: str
    is_active: bool


@dataclass(frozen=True, slots=True)
class MentionDirectory:
    """The realm's users a message's mention syntax may name: by id, and by full name
    lower-cased (Zulip matches a name case-insensitively, an id exactly)."""

    by_id: Mapping[int, MentionTarget]
    by_name: Mapping[str, MentionTarget]

    def find(self, text: str) -> MentionTarget | None:
        """The user `text` (what is between the `**`) names, or None: `Name|id` names the
        user with that id when `Name` is exactly their full name, `|id` the user with
        that id, and `Name` the user of that name in any case."""
        id_syntax = _ID_SYNTAX.match(text)
        if id_syntax is None:
            return self.by_name.get(text.lower())
        target = self.by_id.get(int(id_syntax.group("user_id")))
        full_name = id_syntax.group("full_name")
        if target is not None and full_name and target.full_name != full_name:
            return None
        return target


@dataclass(slots=True)
class MentionsFound:
    """What one rendering mentions, silent mentions and mentions in quotes left out:
    the users mentioned, and whether a channel or topic wildcard is among them."""

    user_ids: set[int] = field(default_factory=set)
    stream_wildcard: bool = False
    topic_wildcard: bool = False


def mention_texts(content: str) -> list[str]:
    """Every text between `**` of the content's mention syntax, code and quotes included
    (the users to look up; rendering decides which are mentions)."""
    return [match.group("text") for match in MENTION_SYNTAX.finditer(content)]


def render_markdown_with_mentions(
    content: str, directory: MentionDirectory
) -> tuple[str, MentionsFound]:
    """The HTML of `content` with its mentions rendered (see the module), and what it
    mentions. Raises `MarkdownRenderingError` as `render_markdown` does."""
    found = MentionsFound()
    rendered = _render(content, {_DIRECTORY_KEY: directory, _FOUND_KEY: found})
    return rendered, found


def _mention_rule(state: StateInline, silent: bool) -> bool:
    """Inline rule at `@`: a mention naming a user or a wildcard becomes a mention token;
    anything else is left to the other rules (`**` to emphasis)."""
    directory = state.env.get(_DIRECTORY_KEY)
    if directory is None or state.src[state.pos] != "@":
        return False
    if state.pos > 0:
        before = state.src[state.pos - 1]
        if not before.isspace() and before not in _ALLOWED_BEFORE_MENTION:
            return False
    match = MENTION_SYNTAX.match(state.src, state.pos, state.posMax)
    if match is None:
        return False
    text = match.group("text")
    meta: dict[str, Any] = {"silent": match.group("silent") == "_"}
    if text in STREAM_WILDCARDS:
        meta.update(kind="stream", name=text)
    elif text in TOPIC_WILDCARDS:
        meta.update(kind="topic", name=text)
    else:
        target = directory.find(text)
        if target is None:
            return False
        meta.update(kind="user", name=target.full_name, user_id=target.user_id)
        # Zulip renders a mention of a deactivated user silent: nobody is notified.
        meta["silent"] = meta["silent"] or not target.is_active
    if not silent:
        token = state.push(_MENTION_TOKEN, "span", 0)
        token.meta = meta
    state.pos = match.end()
    return True


def _collect_mentions(state: StateCore) -> None:
    """After inline parsing: mentions inside quotes become silent (Zulip's rule), and
    the ones still loud are recorded in the rendering's `MentionsFound`."""
    found = state.env.get(_FOUND_KEY)
    if found is None:
        return
    quote_depth = 0
    for block in state.tokens:
        if block.type == "blockquote_open":
            quote_depth += 1
        elif block.type == "blockquote_close":
            quote_depth -= 1
        elif block.type == "inline" and block.children:
            for token in block.children:
                if token.type != _MENTION_TOKEN:
                    continue
                if quote_depth:
                    token.meta["silent"] = True
                if token.meta["silent"]:
                    continue
                if token.meta["kind"] == "user":
                    found.user_ids.add(int(token.meta["user_id"]))
                elif token.meta["kind"] == "stream":
                    found.stream_wildcard = True
                else:
                    found.topic_wildcard = True


def _render_mention(
    renderer: Any,
    tokens: Sequence[Token],
    idx: int,
    options: OptionsDict,
    env: MutableMapping[str, Any],
) -> str:
    """Zulip's markup: `<span class="user-mention" data-user-id="7">@Name</span>`,
    `user-mention channel-wildcard-mention` with `data-user-id="*"` for a channel
    wildcard, `topic-mention` (no id) for `@**topic**`; a silent one adds the class
    `silent` and drops the `@`. Text is escaped as Zulip's serializer escapes it."""
    meta = tokens[idx].meta
    silent = bool(meta["silent"])
    shown = html.escape(str(meta["name"]), quote=False)
    if not silent:
        shown = "@" + shown
    suffix = " silent" if silent else ""
    if meta["kind"] == "topic":
        return f'<span class="topic-mention{suffix}">{shown}</span>'
    if meta["kind"] == "stream":
        return (
            f'<span class="user-mention channel-wildcard-mention{suffix}" data-user-id="*">'
            f"{shown}</span>"
        )
    return (
        f'<span class="user-mention{suffix}" data-user-id="{int(meta["user_id"])}">{shown}</span>'
    )


# Before emphasis, which would otherwise read the `**` as strong text.
_MARKDOWN.inline.ruler.before("emphasis", "eventq_mention", _mention_rule)
_MARKDOWN.core.ruler.after("inline", "eventq_mentions_found", _collect_mentions)
_MARKDOWN.add_render_rule(_MENTION_TOKEN, _render_mention)
