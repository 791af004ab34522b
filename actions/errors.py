"""Typed errors of the action layer, mapped to HTTP and CLI answers in one place each.

`code` is Zulip's error code string, so the server can answer exactly as Zulip does.
"""

from __future__ import annotations


class ActionError(Exception):
    """Base of every refusal by an action; the message is a full sentence for the user."""

    code = "BAD_REQUEST"
    # The HTTP status Zulip answers the code with (its JsonableError carries one too).
    http_status = 400


class NotFound(ActionError):
    """Raised when a realm, user or channel named by the caller does not exist."""


class AlreadyExists(ActionError):
    """Raised when a unique name (email, channel name, subdomain) is already taken."""


class InvalidInput(ActionError):
    """Raised for a value outside Zulip's limits or of the wrong form."""


class NotAllowed(ActionError):
    """Raised when the acting user lacks the role the action needs."""

    code = "UNAUTHORIZED_PRINCIPAL"


class AdministratorRequired(NotAllowed):
    """Raised when an owner or administrator action is asked by a user whose role, as
    read under the realm lock (`actions.actors`), is neither: Zulip's wording."""

    def __init__(self) -> None:
        super().__init__("Must be an organization administrator")


class ActorDeactivated(ActionError):
    """Raised when the acting user is found deactivated (or no longer in the realm) once
    the action holds the realm lock: the server authenticated them, and a deactivation
    committed in between (`actions.actors`)."""

    code = "USER_DEACTIVATED"
    http_status = 401

    def __init__(self) -> None:
        # Zulip's wording for the same code, as the server answers a deactivated key.
        super().__init__("Account is deactivated")
