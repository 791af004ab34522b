"""Input checks shared by actions: Zulip's limits on names, emails and subdomains."""

from __future__ import annotations

import re
import unicodedata

from actions.errors import InvalidInput

# Deliberately simple: one @, no spaces, a dot in the domain; the server is not a mail
# validator, it only has to refuse what clearly is not an address.
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def check_email(email: str, max_length: int) -> str:
    """The normalized (stripped, lower-case) email, or InvalidInput."""
    normalized = email.strip().lower()
    if len(normalized) > max_length:
        raise InvalidInput(f"Email is too long (at most {max_length} characters).")
    if not _EMAIL_RE.match(normalized):
        raise InvalidInput(f"Invalid email address {email!r}.")
    return normalized


def check_name(value: str, what: str, max_length: int) -> str:
    """A stripped display name without control characters, within `max_length`."""
    name = value.strip()
    if not name:
        raise InvalidInput(f"{what} cannot be empty.")
    if len(name) > max_length:
        raise InvalidInput(f"{what} is too long (at most {max_length} characters).")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidInput(f"{what} contains a control character.")
    return name


def check_subdomain(value: str, max_length: int) -> str:
    """A realm subdomain: lower-case letters, digits and inner hyphens."""
    subdomain = value.strip().lower()
    if not subdomain or len(subdomain) > max_length or not _SUBDOMAIN_RE.match(subdomain):
        raise InvalidInput(
            f"Invalid subdomain {value!r}: use 1 to {max_length} lower-case letters, "
            "digits and inner hyphens."
        )
    return subdomain
