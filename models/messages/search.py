"""Full-text search of messages and the `has:link` bit: what `search` and `has:link`
narrows read, and the structures that make both indexed reads.

This module owns:

* `html_has_link`: whether a rendered message holds a link, as `Message.has_link` stores
  it (set at send, and again by whatever re-renders a message);
* the search operand as Zulip reads it (`parse_search`): words, and "quoted phrases";
* the SQL condition of a `search` narrow (`search_condition`), on each backend:
  PostgreSQL's full-text search over an expression GIN index of `to_tsvector('english',
  subject || ' ' || content)` (Zulip's English stemming and stop words, with phrases
  as `phraseto_tsquery`), and SQLite's FTS5 (`message_fts`, an external-content table
  over `message`, Porter-stemmed, kept by triggers);
* the highlighting of a search answer's messages (`highlight_html`, `highlight_topic`:
  Zulip's `match_content` and `match_subject`);
* the names of these search structures, which the models do not declare (a tsvector
  expression index and an FTS5 virtual table with its shadow tables are not portable
  model objects), and `include_name`, the filter that keeps Alembic's model comparison
  from reporting them as unknown (migrations/env.py and tests/test_migrations.py use it).

What is searched is the topic and the Markdown as written (`content`), not the
rendering: the rendering's tags and attributes would otherwise be searched too.
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser

from sqlalchemy import (
    ColumnElement,
    Integer,
    and_,
    column,
    false,
    func,
    literal_column,
    select,
    table,
)

from models.tables import Message

# The text search configuration of both the index and the queries: they must be the same
# expression for PostgreSQL to use the index.
SEARCH_CONFIG = "english"
# The indexed expression, written exactly as the migration creates the index.
PG_SEARCH_VECTOR_SQL = (
    f"to_tsvector('{SEARCH_CONFIG}'::regconfig, (message.subject || ' ') || message.content)"
)
PG_SEARCH_INDEX = "ix_message_search_tsvector"
# SQLite's FTS5 table over `message` (rowid = message.id) and its triggers.
SQLITE_FTS_TABLE = "message_fts"
SQLITE_FTS_TRIGGERS = ("message_fts_insert", "message_fts_delete", "message_fts_update")
# URL schemes that make an `<a href>` a link for `has:link` (Zulip counts the links a
# message previews; a channel, topic or message link is relative, `#narrow/...`).
_LINK_HREF = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*://|mailto:)", re.IGNORECASE)
# Zulip's highlight markup in `match_content` / `match_subject`.
HIGHLIGHT_START = '<span class="highlight">'
HIGHLIGHT_END = "</span>"
_TERMS = re.compile(r'"([^"]+)"|(\S+)')
_WORD = re.compile(r"\w+", re.UNICODE)
# Suffixes set aside to compare a word of the text with a word searched for, so that
# highlighting agrees with the stemmed match for most English inflections.
_SUFFIXES = ("ingly", "edly", "ing", "ies", "ied", "es", "ed", "ly", "s")


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's `include_name` hook: leave the search structures out of the comparison
    of the models with the database. They are made by migration 0011 alone, per backend
    (an FTS5 virtual table and its shadow tables on SQLite, an expression GIN index on
    PostgreSQL), and no portable model object describes them."""
    if name is None:
        return True
    if type_ == "table":
        return not name.startswith(SQLITE_FTS_TABLE)
    if type_ == "index":
        return name != PG_SEARCH_INDEX
    return True


class _LinkFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a" and any(k == "href" and v and _LINK_HREF.match(v) for k, v in attrs):
            self.found = True


def html_has_link(rendered: str) -> bool:
    """Whether a rendered message links anywhere (an `<a href>` with a URL scheme or
    `mailto:`): Zulip's `has_link`. Links inside the realm (`#narrow/...`) do not count."""
    if "<a" not in rendered:
        return False
    finder = _LinkFinder()
    finder.feed(rendered)
    finder.close()
    return finder.found


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A `search` operand: its loose words and its quoted phrases (each a list of words)."""

    words: tuple[str, ...]
    phrases: tuple[tuple[str, ...], ...]

    @property
    def empty(self) -> bool:
        return not self.words and not self.phrases

    def highlighted_words(self) -> frozenset[str]:
        """Every word to mark in a match, lower-cased."""
        words = {w.lower() for w in self.words}
        for phrase in self.phrases:
            words.update(w.lower() for w in phrase)
        return frozenset(words)


def parse_search(operands: Sequence[str]) -> SearchQuery:
    """The words and phrases of one or more `search` operands (Zulip joins them)."""
    words: list[str] = []
    phrases: list[tuple[str, ...]] = []
    for operand in operands:
        for phrase, word in _TERMS.findall(operand):
            if phrase:
                tokens = tuple(_WORD.findall(phrase))
                if tokens:
                    phrases.append(tokens)
            else:
                words.extend(_WORD.findall(word))
    return SearchQuery(tuple(words), tuple(phrases))


def _fts5_string(tokens: Sequence[str]) -> str:
    """One FTS5 string (a phrase of its tokens); tokens are `\\w+`, so they hold no quote."""
    return '"' + " ".join(tokens) + '"'


def fts5_query(query: SearchQuery) -> str:
    """The FTS5 MATCH expression: every word and every phrase (implicit AND), each quoted
    so that nothing the user typed is read as FTS5 syntax."""
    parts = [_fts5_string([word]) for word in query.words]
    parts += [_fts5_string(phrase) for phrase in query.phrases]
    return " ".join(parts)


def search_condition(dialect: str, query: SearchQuery) -> ColumnElement[bool]:
    """The condition "the message matches `query`" on `message`, through the search
    index of the backend: one GIN lookup on PostgreSQL, one FTS5 lookup on SQLite."""
    if query.empty:
        # Nothing searchable (punctuation alone): Zulip's empty tsquery matches nothing.
        return false()
    if dialect == "postgresql":
        config: ColumnElement[object] = literal_column(f"'{SEARCH_CONFIG}'::regconfig")
        tsquery: ColumnElement[object] | None = None
        parts: list[ColumnElement[object]] = []
        if query.words:
            parts.append(func.plainto_tsquery(config, " ".join(query.words)))
        parts += [func.phraseto_tsquery(config, " ".join(p)) for p in query.phrases]
        for part in parts:
            tsquery = part if tsquery is None else tsquery.op("&&")(part)
        assert tsquery is not None
        return literal_column(PG_SEARCH_VECTOR_SQL).op("@@")(tsquery)
    # The FTS5 table's own column of the same name takes the MATCH expression.
    fts_table = table(SQLITE_FTS_TABLE, column("rowid", Integer), column(SQLITE_FTS_TABLE))
    matching = select(fts_table.c.rowid).where(
        fts_table.c[SQLITE_FTS_TABLE].op("MATCH")(fts5_query(query))
    )
    return and_(Message.id.in_(matching))


def _stem(word: str) -> str:
    lowered = word.lower()
    for suffix in _SUFFIXES:
        if len(lowered) > len(suffix) + 2 and lowered.endswith(suffix):
            stem = lowered[: -len(suffix)]
            # "running" -> "runn" -> "run", as the stemmers undouble a final consonant.
            if len(stem) > 3 and stem[-1] == stem[-2] and stem[-1] not in "aeiou":
                stem = stem[:-1]
            return stem
    return lowered


def _mark(text_part: str, stems: frozenset[str]) -> str:
    """`text_part` (already HTML) with each word whose stem is searched for wrapped in
    Zulip's highlight span."""

    def replace(match: re.Match[str]) -> str:
        word = match.group(0)
        if _stem(word) in stems:
            return f"{HIGHLIGHT_START}{word}{HIGHLIGHT_END}"
        return word

    return _WORD.sub(replace, text_part)


def _stems(query: SearchQuery) -> frozenset[str]:
    return frozenset(_stem(word) for word in query.highlighted_words())


_TAG_OR_ENTITY = re.compile(r"(<[^>]*>|&[#\w]+;)")


def highlight_html(rendered: str, query: SearchQuery) -> str:
    """`match_content`: the rendered message with the searched words marked, in text
    only (never inside a tag or an entity)."""
    stems = _stems(query)
    if not stems:
        return rendered
    parts = _TAG_OR_ENTITY.split(rendered)
    return "".join(part if index % 2 else _mark(part, stems) for index, part in enumerate(parts))


def highlight_topic(topic: str, query: SearchQuery) -> str:
    """`match_subject`: the topic, HTML-escaped as Zulip sends it, with the searched
    words marked."""
    return highlight_html(html.escape(topic, quote=False), query)
