"""The rendering of a message's content: Markdown to the HTML clients show, bounded.

This module owns `render_markdown`: Markdown with raw HTML disabled, so nothing a sender
writes reaches another client as markup, refused as Zulip refuses it, "Unable to render
message" (`MarkdownRenderingError`), when the HTML would pass `MAX_RENDERED_LENGTH`, and
stopped while it is parsed once it makes more than `MAX_RENDER_BLOCK_TOKENS` block
tokens, so that source refused for its length costs little CPU.
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.rules_core import StateCore
from markdown_it.token import Token

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
    """The HTML a client shows for `content` (`apply_markdown` true). Raises
    `MarkdownRenderingError` for content whose HTML would pass MAX_RENDERED_LENGTH."""
    html = _MARKDOWN.render(content)
    if len(html) > MAX_RENDERED_LENGTH:
        raise MarkdownRenderingError()
    return html
