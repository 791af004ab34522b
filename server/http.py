"""The base of every API handler: Zulip's parameter encoding, auth and JSON envelope.

Parameters come from the query string and, for POST, PATCH and DELETE, from a
form-encoded body; values that are not strings are JSON-encoded, as Zulip's clients
send them; unknown parameters are ignored. Every answer is JSON with `result` and
`msg`; errors add `code` (`server.errors`) and are mapped here, in one place, so a
handler only parses, calls one function and returns a dict.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import orjson
import tornado.web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from actions.errors import ActionError
from models.visibility import is_realm_admin
from server.errors import (
    AdminRequired,
    ApiError,
    BadRequest,
    InvalidApiKey,
    MissingArgument,
    Unauthorized,
)
from server.params import check_json_value, check_text
from server.service import AuthenticatedUser, EventService

log = logging.getLogger("eventq.http")
access_log = logging.getLogger("eventq.access")

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
_MISSING: Any = object()

# No request of this API needs a larger body; a larger one gets a JSON 413 from
# `ApiHandler.prepare` (`server.app` reads bodies up to a higher hard cap so that it can).
MAX_BODY_BYTES = 256 * 1024


class PayloadTooLarge(ApiError):
    """The request body is over MAX_BODY_BYTES (the OpenAPI document's 413)."""

    status = 413

    def __init__(self) -> None:
        super().__init__(f"The request body is larger than {MAX_BODY_BYTES} bytes.")


def parse_json_param(name: str, raw: str) -> Any:
    """Decode a JSON-encoded parameter value the way Zulip does, refusing what no
    parameter can be: deep nesting, NUL characters and unpaired surrogates."""
    try:
        value = json.loads(raw)
    except ValueError:  # also the int() digit limit of a huge number
        raise BadRequest(f'Argument "{name}" is not valid JSON.') from None
    except RecursionError:  # the decoder recurses once per level of "[[[..."
        raise BadRequest(f'Argument "{name}" is nested too deeply.') from None
    return check_json_value(name, value)


class ApiHandler(tornado.web.RequestHandler):
    """Base handler: parameters, authentication, success and error answers."""

    user: AuthenticatedUser | None = None
    # Set by long-poll handlers whose answer was a heartbeat: logged at DEBUG.
    quiet = False

    @property
    def service(self) -> EventService:
        service: EventService = self.application.settings["service"]
        return service

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")

    def prepare(self) -> None:
        # Tornado has read the whole body (up to server.app's hard cap) by now.
        if len(self.request.body) > MAX_BODY_BYTES:
            raise PayloadTooLarge()

    # -- parameters -----------------------------------------------------------------------

    def _raw_param(self, name: str) -> str | None:
        values = self.request.query_arguments.get(name)
        if not values and self.request.method in ("POST", "PATCH", "DELETE", "PUT"):
            values = self.request.body_arguments.get(name)
        if not values:
            return None
        try:
            return values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f'Argument "{name}" is not valid UTF-8.') from None

    def param_str(self, name: str, default: Any = _MISSING) -> Any:
        """A string parameter; missing and no default: REQUEST_VARIABLE_MISSING."""
        value = self._raw_param(name)
        if value is None:
            if default is _MISSING:
                raise MissingArgument(name)
            return default
        # Strict UTF-8 decoding already excludes surrogates; this refuses NUL.
        return check_text(name, value)

    def param_json(
        self, name: str, check: Callable[[str, Any], T], default: Any = _MISSING
    ) -> T | Any:
        """A JSON-encoded parameter, checked by `check(name, value)`."""
        raw = self.param_str(name, None)
        if raw is None:
            if default is _MISSING:
                raise MissingArgument(name)
            return default
        return check(name, parse_json_param(name, raw))

    # -- authentication -------------------------------------------------------------------

    async def authenticate(self) -> AuthenticatedUser:
        """The caller from HTTP Basic `email:api_key`; refusals answer as Zulip does."""
        header = self.request.headers.get("Authorization", "")
        if not header:
            self.set_header("WWW-Authenticate", 'Basic realm="zulip"')
            raise Unauthorized()
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise InvalidApiKey()
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII base64 text
            raise InvalidApiKey() from None
        email, sep, api_key = decoded.partition(":")
        # No account has a NUL in its email or key, and PostgreSQL refuses it in a query.
        if not sep or "\x00" in decoded:
            raise InvalidApiKey()
        self.user = await self.service.authenticate(email, api_key)
        return self.user

    # -- calling the layers below on the database threads ------------------------------

    async def query(
        self, func: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run `func(session, *args)` in a snapshot transaction on a database thread."""

        def work() -> R:
            with self.service.db.snapshot() as session:
                return func(session, *args, **kwargs)

        return await self.service.run_db(work)

    async def act(
        self, func: Callable[Concatenate[Session, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """Run the action `func(session, *args)` in a write transaction, then wake the
        outbox consumer so its events go out without waiting for the next poll."""

        def work() -> R:
            with self.service.db.write() as session:
                return func(session, *args, **kwargs)

        result = await self.service.run_db(work)
        self.service.wake_consumer()
        return result

    def require_admin(self) -> None:
        """Owners and administrators only; others get Zulip's permission error."""
        assert self.user is not None, "authenticate() first"
        if not is_realm_admin(self.user.role):
            raise AdminRequired()

    # -- answers --------------------------------------------------------------------------

    def send_success(self, data: dict[str, Any] | None = None) -> None:
        body = {"result": "success", "msg": ""}
        if data:
            body.update(data)
        # orjson: a register answer of a large realm is megabytes of JSON.
        self.finish(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, ApiError):
            self.set_status(error.status)
            body = error.to_json()
        elif isinstance(error, ActionError):
            self.set_status(400)
            body = {"result": "error", "msg": str(error), "code": error.code}
        elif isinstance(error, SQLAlchemyError):
            self.set_status(503)
            body = {
                "result": "error",
                "msg": "The database is unavailable; try again.",
                "code": "BAD_REQUEST",
            }
        elif isinstance(error, tornado.web.HTTPError) and status_code < 500:
            body = {
                "result": "error",
                "msg": error.log_message or self._reason,
                "code": "BAD_REQUEST",
            }
        else:
            body = {"result": "error", "msg": self._reason, "code": "BAD_REQUEST"}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, ApiError | ActionError):
            return  # an ordinary refusal, logged by the access log line
        if isinstance(value, SQLAlchemyError):
            log.warning(
                "database error on %s %s: %s",
                self.request.method,
                self.request.path,
                str(value).splitlines()[0],
            )
            return
        super().log_exception(typ, value, tb)


class NotFoundHandler(ApiHandler):
    """Every unknown path: a JSON 404, never an HTML page."""

    def prepare(self) -> None:
        self.set_status(404)
        self.finish(json.dumps({"result": "error", "msg": "Not Found", "code": "BAD_REQUEST"}))


def log_request(handler: tornado.web.RequestHandler) -> None:
    """One line per request: method, path, status, user, duration; heartbeats at DEBUG."""
    status = handler.get_status()
    duration_ms = 1000.0 * handler.request.request_time()
    user = getattr(handler, "user", None)
    who = f"user {user.id}" if user is not None else "anonymous"
    level = logging.INFO
    if getattr(handler, "quiet", False):
        level = logging.DEBUG
    elif status >= 500:
        level = logging.ERROR
    access_log.log(
        level,
        "%s %s %d %s %.1fms",
        handler.request.method,
        handler.request.path,
        status,
        who,
        duration_ms,
    )
