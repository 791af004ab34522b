"""Mentions in a message's content: the rendered HTML and who it mentions.

This module owns `render_message_content`, the one call that turns a message's content
into what is stored and sent (`RenderedMessage`): the HTML, the users mentioned by name
(silent mentions, mentions in quotes and mentions of deactivated users left out, as
Zulip leaves them out), and whether the content holds a channel wildcard (`@**all**`,
`@**everyone**`, `@**channel**`, `@**stream**`) or the topic wildcard (`@**topic**`).

The users a mention may name are read in one statement for the whole message, and only
when the content holds mention syntax (`@**` or `@_**`): content without it renders as
before, with no statement at all. Like Zulip (zerver/lib/mention.py), names are looked up
among all the realm's users, active or not, case-insensitively; `Name|id` and `|id` by
id. The lookup is by the realm's users index and the names lower-cased in SQL
(PostgreSQL's `lower` folds every letter, SQLite's only ASCII ones, so on SQLite a name
with other letters is found only in the case it is written in).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from models.messages.rendering import (
    MENTION_MARKERS,
    MentionDirectory,
    MentionTarget,
    mention_texts,
    render_markdown,
    render_markdown_with_mentions,
)
from models.tables import UserProfile

# `Name|id` or `|id`: looked up by id.
_ID_SUFFIX = re.compile(r"\|(\d+)$")
# Bounds on what one message may look up: a 10,000-character message holds at most about
# 1,400 mention texts, and ids past this are no user's.
_MAX_USER_ID = 2**31 - 1


@dataclass(frozen=True)
class RenderedMessage:
    """A message's content once rendered: its HTML and the mentions it makes."""

    html: str
    mentioned_user_ids: frozenset[int]
    stream_wildcard: bool
    topic_wildcard: bool

    @property
    def mentions_anyone(self) -> bool:
        """Whether any recipient's flags can differ from a message without mentions."""
        return bool(self.mentioned_user_ids) or self.stream_wildcard or self.topic_wildcard


def has_mention_syntax(content: str) -> bool:
    """Whether the content may mention anyone (else no user is read)."""
    return any(marker in content for marker in MENTION_MARKERS)


def render_message_content(session: Session, realm_id: int, content: str) -> RenderedMessage:
    """The rendering of `content` in the realm, with its mentions (see the module).
    Raises `MarkdownRenderingError` for content whose HTML is too long."""
    if not has_mention_syntax(content):
        return RenderedMessage(render_markdown(content), frozenset(), False, False)
    directory = _mention_directory(session, realm_id, mention_texts(content))
    html, found = render_markdown_with_mentions(content, directory)
    return RenderedMessage(
        html, frozenset(found.user_ids), found.stream_wildcard, found.topic_wildcard
    )


def _mention_directory(session: Session, realm_id: int, texts: list[str]) -> MentionDirectory:
    """The realm's users these mention texts may name, in one statement (none when every
    text is a wildcard)."""
    ids: set[int] = set()
    names: set[str] = set()
    for text in texts:
        id_suffix = _ID_SUFFIX.search(text)
        if id_suffix is not None:
            user_id = int(id_suffix.group(1))
            if user_id <= _MAX_USER_ID:
                ids.add(user_id)
        else:
            names.add(text.lower())
    if not ids and not names:
        return MentionDirectory({}, {})
    wanted = []
    if ids:
        wanted.append(UserProfile.id.in_(sorted(ids)))
    if names:
        wanted.append(func.lower(UserProfile.full_name).in_(sorted(names)))
    rows = session.execute(
        select(UserProfile.id, UserProfile.full_name, UserProfile.is_active)
        .where(UserProfile.realm_id == realm_id, or_(*wanted))
        .order_by(UserProfile.id)
    ).all()
    by_id: dict[int, MentionTarget] = {}
    by_name: dict[str, MentionTarget] = {}
    for user_id, full_name, is_active in rows:
        target = MentionTarget(int(user_id), str(full_name), bool(is_active))
        by_id[target.user_id] = target
        key = target.full_name.lower()
        # Two users of one name: `@**Name**` means the active one with the lowest id
        # (Zulip leaves it to the query's order; `Name|id` is how to choose).
        current = by_name.get(key)
        if current is None or (target.is_active and not current.is_active):
            by_name[key] = target
    return MentionDirectory(by_id, by_name)
