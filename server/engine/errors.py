"""Every error the HTTP API answers, as typed exceptions with Zulip's codes.

Handlers and the event service raise these; `server.api.request.ApiHandler` maps them (and
`actions.errors.ActionError`) to Zulip's JSON envelope in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """An error answer: HTTP `status`, Zulip `code`, a message and extra fields."""

    status = 400
    code = "BAD_REQUEST"

    # Headers the answer carries besides the body (a 503's `Retry-After`); read-only.
    headers: Mapping[str, str] = {}

    def __init__(self, msg: str, **extra: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.extra = extra

    def to_json(self) -> dict[str, Any]:
        return {"result": "error", "msg": self.msg, "code": self.code, **self.extra}


class BadRequest(ApiError):
    """A malformed or out-of-range parameter."""


class MissingArgument(ApiError):
    """A required parameter is absent (Zulip's REQUEST_VARIABLE_MISSING)."""

    code = "REQUEST_VARIABLE_MISSING"

    def __init__(self, name: str) -> None:
        super().__init__(f"Missing '{name}' argument", var_name=name)


class BadEventQueueId(ApiError):
    """Unknown, expired, dropped or foreign queue: all answered the same way."""

    code = "BAD_EVENT_QUEUE_ID"

    def __init__(self, queue_id: str) -> None:
        super().__init__(f"Bad event queue ID: {queue_id}", queue_id=queue_id)


class QueueMoving(ApiError):
    """Shards kept claiming the queue from each other while this poll tried to hold it:
    503, and the client polls again (nothing is lost; the queue is not gone)."""

    status = 503
    # A claim race settles within a round trip; a second is plenty.
    headers = {"Retry-After": "1"}

    def __init__(self, queue_id: str) -> None:
        super().__init__(f"Queue {queue_id} is moving between servers; try again.")


class Unauthorized(ApiError):
    """No credentials at all."""

    status = 401
    code = "UNAUTHORIZED"

    def __init__(self) -> None:
        super().__init__("Not logged in: API authentication or user session required")


class InvalidApiKey(ApiError):
    """The email and API key do not match an account."""

    status = 401
    code = "INVALID_API_KEY"

    def __init__(self) -> None:
        super().__init__("Invalid API key")


class UserDeactivated(ApiError):
    """The account is deactivated: refused everywhere, and waiting polls are ended."""

    status = 401
    code = "USER_DEACTIVATED"

    def __init__(self) -> None:
        super().__init__("Account is deactivated")


class AdminRequired(ApiError):
    """An owner or administrator endpoint called by someone else (Zulip's wording)."""

    code = "UNAUTHORIZED_PRINCIPAL"

    def __init__(self) -> None:
        super().__init__("Must be an organization administrator")


class StreamNotFound(ApiError):
    """A channel that does not exist or that the user may not see (never told apart)."""

    code = "STREAM_DOES_NOT_EXIST"

    def __init__(self, name: str) -> None:
        super().__init__(f"Channel '{name}' does not exist", stream=name)


class RateLimited(ApiError):
    """HTTP 429 RATE_LIMIT_HIT, as Zulip answers it: `retry-after` in the body, and the
    headers the HTTP layer sets from `headers`."""

    status = 429
    code = "RATE_LIMIT_HIT"

    def __init__(self, retry_after: float, headers: dict[str, str]) -> None:
        super().__init__("API usage exceeded rate limit", **{"retry-after": retry_after})
        self.headers = headers
