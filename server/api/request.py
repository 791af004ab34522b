"""The base of every API handler: Zulip's parameter encoding, auth and JSON envelope.

Parameters come from the query string and, for POST, PATCH and DELETE, from a
form-encoded body; values that are not strings are JSON-encoded, as Zulip's clients
send them; unknown parameters are ignored. Every answer is JSON with `result` and
`msg`; errors add `code` (`server.engine.errors`) and are mapped here, in one place, so a
handler only parses, calls one function and returns a dict.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

import orjson
import tornado.httputil
import tornado.web
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from actions.errors import ActionError
from models.visibility import is_realm_admin
from server.api.access_log import FORWARDED_REQUEST_ID, REQUEST_ID_HEADER, new_request_id
from server.api.body_limits import MAX_BODY_BYTES, PayloadTooLarge
from server.api.params import check_text, parse_json_param
from server.api.ratelimit import RateLimiter
from server.engine.authentication import AuthenticatedUser
from server.engine.errors import (
    AdminRequired,
    ApiError,
    BadRequest,
    InvalidApiKey,
    MissingArgument,
    RateLimited,
    Unauthorized,
    UserDeactivated,
)
from server.engine.service import EventService

log = logging.getLogger("eventq.http")

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
_MISSING: Any = object()

# Parameters that a proxy in front routes by (nginx reads the first `queue_id` of a
# query string, this server would read the last): a request giving one twice is refused,
# so the two can never disagree about which queue a poll is for.
SINGLE_VALUED_PARAMS = frozenset({"queue_id"})


class ApiHandler(tornado.web.RequestHandler):
    """Base handler: parameters, authentication, success and error answers."""

    user: AuthenticatedUser | None = None
    # Set by long-poll handlers whose answer was a heartbeat, and on rate-limit refusals
    # (`server.engine.abuse` logs those once a minute per offender): logged at DEBUG.
    quiet = False
    # Set by long-poll handlers that answered with events: the bulk of all requests, so
    # they are logged at DEBUG too and counted by `eventq_polls_total` instead; a line
    # each would cost more CPU than the answer (docs/operations.md).
    routine = False
    # Endpoints that need no credentials: every request to them counts against the
    # client address's budget, whether or not it carries an Authorization header.
    public = False
    # The X-RateLimit-* headers of the budget this request was counted against; kept to
    # be set again on an error answer, since Tornado clears headers before writing one.
    _rate_headers: dict[str, str] | None = None

    @property
    def service(self) -> EventService:
        service: EventService = self.application.settings["service"]
        return service

    @property
    def rate_limiter(self) -> RateLimiter:
        limiter: RateLimiter = self.application.settings["rate_limiter"]
        return limiter

    @property
    def client_address(self) -> str:
        return self.request.remote_ip or "unknown"

    def set_rate_headers(self, headers: dict[str, str]) -> None:
        """Answer with these X-RateLimit-* headers (also on an error answer)."""
        self._rate_headers = headers
        for name, value in headers.items():
            self.set_header(name, value)

    def counts_against_user_budget(self) -> bool:
        """Whether an authenticated request counts against its user's budget; the
        long-poll's GET has its own (server.api.ratelimit)."""
        return True

    def _implements_method(self) -> bool:
        method = (self.request.method or "").lower()
        return getattr(type(self), method, None) is not getattr(
            tornado.web.RequestHandler, method, None
        )

    # The code of the error answer, if the request was refused: for the log and metrics.
    error_code: str | None = None
    _request_id: str | None = None

    @property
    def request_id(self) -> str:
        """This request's id: the proxy's X-Request-Id, or a new one."""
        if self._request_id is None:
            # get_list, not get: a missing header (most requests) raises no KeyError inside.
            forwarded = self.request.headers.get_list(REQUEST_ID_HEADER)
            if len(forwarded) == 1 and FORWARDED_REQUEST_ID.fullmatch(forwarded[0]):
                self._request_id = forwarded[0]
            else:
                self._request_id = new_request_id()
        return self._request_id

    def compute_etag(self) -> None:
        """No ETag: every answer is fresh (`Cache-Control: no-store`), and hashing each
        poll's body costs CPU on the hot path for nothing."""
        return None

    def check_etag_header(self) -> bool:
        """Never a 304: no answer carries an ETag for `If-None-Match` to match. Tornado's
        own check would look both headers up and run a regex for every answer."""
        return False

    def finish_json(self, body: bytes) -> None:
        """Finish with a JSON body that is already encoded, giving its length directly
        (Tornado would sum the buffer and check the value as a header)."""
        self._headers["Content-Length"] = str(len(body))
        self.finish(body)

    def set_default_headers(self) -> None:
        # Straight into the headers, without set_header's check of each value: these are
        # constants and an id of safe characters, and this runs for every answer.
        headers = self._headers
        headers["Content-Type"] = "application/json"
        headers["Cache-Control"] = "no-store"
        headers[REQUEST_ID_HEADER] = self.request_id

    def prepare(self) -> Awaitable[None] | None:
        if not self.public and not self._implements_method():
            # Answered 405 whatever the credentials; they still name the caller.
            self._check_body_size()
            return self.identify_caller()
        # Requests that will not authenticate count against the address's budget (those
        # that do count against their user's once authenticated): Zulip's api_by_ip.
        if self.public or not self.request.headers.get("Authorization"):
            self.set_rate_headers(self.rate_limiter.anonymous_request(self.client_address))
        self._check_body_size()
        return None

    def _check_body_size(self) -> None:
        # A body over its route's limit was refused before it was read
        # (`server.api.body_limits`); this is the backstop for an app served without that.
        if len(self.request.body) > MAX_BODY_BYTES:
            raise PayloadTooLarge()

    # -- parameters -----------------------------------------------------------------------

    def _raw_param(self, name: str) -> str | None:
        values = self.request.query_arguments.get(name)
        if self.request.method in ("POST", "PATCH", "DELETE", "PUT"):
            in_body = self.request.body_arguments.get(name)
            if not values:
                values = in_body
            elif in_body and name in SINGLE_VALUED_PARAMS:
                values = values + in_body  # refused below: two places, two values
        if not values:
            return None
        if len(values) > 1 and name in SINGLE_VALUED_PARAMS:
            raise BadRequest(f'Argument "{name}" was given more than once.')
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
        """The caller from HTTP Basic `email:api_key`; refusals answer as Zulip does.

        Rate limits: credentials from an email or address with too many recent failures
        are refused (429) before the key is looked at, a failure counts against both,
        and a success counts against the user's budget (except for long-polls).
        """
        header = self.request.headers.get("Authorization", "")
        if not header:
            self.set_header("WWW-Authenticate", 'Basic realm="zulip"')
            raise Unauthorized()
        email, api_key = _basic_credentials(header)
        limiter = self.rate_limiter
        address = self.client_address
        # The connection (its stream), which a success exempts for its own email.
        connection = getattr(self.request.connection, "stream", None)
        limiter.before_authentication(address, email, connection)
        if email is None:
            limiter.authentication_failed(address, None, connection)
            raise InvalidApiKey()
        try:
            # The cache first, without a coroutine: most requests are polls by cached users.
            user = self.service.authenticate_cached(email, api_key)
            if user is None:
                user = await self.service.authenticate(email, api_key)
            self.user = user
        except (InvalidApiKey, UserDeactivated):
            limiter.authentication_failed(address, email, connection)
            raise
        limiter.authenticated(connection, email)
        if self.counts_against_user_budget():
            self.set_rate_headers(limiter.user_request(self.user.id))
        return self.user

    async def identify_caller(self) -> None:
        """For a request refused whatever its credentials (an unknown path, a method the
        path does not take): authenticate it if it carries credentials, so that the log
        names the caller and the request counts against their budget, and otherwise count
        it against the address's. The answer stays the refusal: a failed authentication
        is counted as any other, but not answered as such."""
        if not self.request.headers.get("Authorization"):
            self.set_rate_headers(self.rate_limiter.anonymous_request(self.client_address))
            return
        try:
            await self.authenticate()
        except (InvalidApiKey, UserDeactivated):
            pass  # counted against the address and the email by authenticate()

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
        self.finish_json(orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(error, RateLimited):
            self.quiet = True  # its headers are the error's own, set below
        elif self._rate_headers:
            self.set_rate_headers(self._rate_headers)
        if isinstance(error, ApiError):
            self.set_status(error.status)
            for header, value in error.headers.items():
                self.set_header(header, value)
            body = error.to_json()
        elif isinstance(error, ActionError):
            self.set_status(error.http_status)
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
        self.error_code = str(body["code"])
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

    async def prepare(self) -> None:
        await self.identify_caller()
        self.set_status(404)
        self.finish(json.dumps({"result": "error", "msg": "Not Found", "code": "BAD_REQUEST"}))


def _basic_credentials(header: str) -> tuple[str | None, str]:
    """(email, api_key) of an HTTP Basic Authorization header; (None, "") if malformed."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None, ""
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error, UnicodeDecodeError, and non-ASCII base64 text
        return None, ""
    email, sep, api_key = decoded.partition(":")
    # No account has a NUL in its email or key, and PostgreSQL refuses it in a query.
    if not sep or "\x00" in decoded:
        return None, ""
    return email, api_key
