"""Emoji for reactions: which names and codes eventq knows, and how a name finds its code.

Zulip identifies an emoji by `reaction_type` and `emoji_code` and shows it by
`emoji_name`. For `unicode_emoji` the code is the emoji's code points in lower-case hex
joined by "-", without the variation selector U+FE0F (Zulip's encoding: "2764" for the
red heart, "1f44d" for thumbs up). Zulip's names come from its own emoji data (Google's
names, with aliases such as `+1`, `tada`, `smile`), which eventq does not ship. eventq
takes its names and code points from the `emoji` package (pinned in requirements.lock):
each fully-qualified emoji's GitHub-style aliases first (`+1`, `thumbsup`, `tada`,
`smile`, `heart`: the short names Zulip's data shares), then its Unicode CLDR name
(`thumbs_up`, `party_popper`, `octopus`) where no alias took it. So the common names
map as on Zulip, and a few names differ; a client that sends Zulip's name together with
its code is never refused for a name eventq does not know (`check_emoji`).

`zulip_extra_emoji` has one emoji, Zulip's own `zulip` (code "zulip"); eventq has no
custom emoji, so `realm_emoji` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import emoji as emoji_data

from actions.errors import InvalidInput

UNICODE_EMOJI = "unicode_emoji"
REALM_EMOJI = "realm_emoji"
ZULIP_EXTRA_EMOJI = "zulip_extra_emoji"
REACTION_TYPES = frozenset({UNICODE_EMOJI, REALM_EMOJI, ZULIP_EXTRA_EMOJI})
# Zulip's one extra emoji.
ZULIP_EMOJI_NAME = "zulip"
_VARIATION_SELECTOR = "\ufe0f"
# `emoji`'s status of a fully-qualified emoji (the form Zulip's codes name).
_FULLY_QUALIFIED = 2


@dataclass(frozen=True, slots=True)
class Emoji:
    """An emoji as a reaction names it."""

    name: str
    code: str
    reaction_type: str


def emoji_code_of(text: str) -> str:
    """Zulip's `emoji_code` of a Unicode emoji: its code points without U+FE0F."""
    return "-".join(f"{ord(char):x}" for char in text if char != _VARIATION_SELECTOR)


@cache
def _tables() -> tuple[dict[str, str], frozenset[str]]:
    """(name -> code, every code), built once from the `emoji` package's data."""
    by_alias: dict[str, str] = {}
    by_cldr: dict[str, str] = {}
    codes: set[str] = set()
    for text, data in emoji_data.EMOJI_DATA.items():
        if data.get("status") != _FULLY_QUALIFIED:
            continue
        code = emoji_code_of(text)
        codes.add(code)
        for alias in data.get("alias", []):
            by_alias.setdefault(alias.strip(":").lower(), code)
        by_cldr.setdefault(str(data["en"]).strip(":").lower(), code)
    names = dict(by_cldr)
    names.update(by_alias)  # an alias wins: those are the names Zulip's data shares
    return names, frozenset(codes)


def unicode_code_for_name(name: str) -> str | None:
    """The code of the Unicode emoji with this name, or None."""
    return _tables()[0].get(name)


def is_unicode_emoji_code(code: str) -> bool:
    """Whether `code` names a Unicode emoji eventq knows."""
    return code in _tables()[1]


def check_emoji(name: str, code: str | None, reaction_type: str | None) -> Emoji:
    """The emoji a reaction request names, checked with Zulip's wording.

    Without a code, the name must be known ("Emoji 'x' does not exist"). With one, the
    code must be known ("Invalid emoji code"), and a name eventq knows must be that
    code's ("Invalid emoji name"); a name it does not know is taken as the client's.
    """
    kind = reaction_type or (ZULIP_EXTRA_EMOJI if name == ZULIP_EMOJI_NAME else UNICODE_EMOJI)
    if kind not in REACTION_TYPES:
        raise InvalidInput("Invalid emoji type.")
    if kind == REALM_EMOJI:
        raise InvalidInput("Invalid custom emoji.")
    if kind == ZULIP_EXTRA_EMOJI:
        if name != ZULIP_EMOJI_NAME or code not in (None, ZULIP_EMOJI_NAME):
            raise InvalidInput("Invalid emoji name.")
        return Emoji(ZULIP_EMOJI_NAME, ZULIP_EMOJI_NAME, ZULIP_EXTRA_EMOJI)
    known = unicode_code_for_name(name)
    if code is None:
        if known is None:
            raise InvalidInput(f"Emoji '{name}' does not exist")
        return Emoji(name, known, UNICODE_EMOJI)
    if not is_unicode_emoji_code(code):
        raise InvalidInput("Invalid emoji code")
    if known is not None and known != code:
        raise InvalidInput("Invalid emoji name")
    return Emoji(name, code, UNICODE_EMOJI)
