"""`EventClient`: register an event queue, long-poll it and keep a `StateCache` current.

Owns the client side of the wire protocol (docs/architecture.md §6): `register`, the long-poll loop
with acknowledgements, retries with capped exponential backoff and full jitter, resync
after the server forgot the queue, and a clean stop. It speaks HTTP only (tornado's
`AsyncHTTPClient`) and imports nothing of ours but `clients.state`, so it can be copied
into any asyncio program.

Usage::

    client = EventClient("http://127.0.0.1:9993", email, api_key)
    client.on("subscription", handle)          # sync or async, receives the event dict
    client.on_resync = rebuild_ui              # the state was rebuilt from a new register
    task = asyncio.create_task(client.run())   # registers first if `register()` was not
    ...
    await client.close(delete_queue=True)      # stops run() and frees the server's queue

Semantics and caveats:

- Each event is applied to `client.state` first, then handed to the callbacks of its
  type and of `"*"` (every event), in order; a callback sees the state *after* its event.
  Heartbeats are not events: they go to `on_heartbeat` only, and are acknowledged.
- Acknowledgement is the next poll's `last_event_id` (the highest id applied). An event
  delivered again (its acknowledgement was lost with a connection) is skipped by id.
- An exception raised by a callback propagates out of `run()`. The event was already
  applied and counted, so calling `run()` again resumes after it (the remaining callbacks
  of that event are not called).
- Connection errors, timeouts, 429 and 5xx answers are retried for ever with
  `backoff_delay`; `BAD_EVENT_QUEUE_ID` (queue deleted, expired or dropped on overflow) or
  a cache that contradicts an event (`StateError`) re-registers, rebuilds `state` and
  calls `on_resync(state)`: events in between are *not* passed to callbacks, the new
  state already contains them. A replaced queue is left to expire on the server.
- 401 (`USER_DEACTIVATED`, `INVALID_API_KEY`, ...) ends `run()` with
  `AuthenticationError`; another 4xx with `RequestRejected`; a malformed answer with
  `ProtocolError` (all `ClientStopped`): retrying cannot fix them.
- `stop()` (sync, may be called from a callback) makes `run()` return before the next
  event; a poll still parked on the server is abandoned, not aborted (tornado cannot
  abort a fetch). `close()` ends it on the server (a `dont_block` poll answers the parked
  one at once; `delete_queue=True` deletes the queue, which answers it too) and waits for
  it, so no socket outlives the client. Await `close()` from outside `run()`'s callbacks.
- Not thread-safe: one client belongs to one event loop. `run()` is not re-entrant.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import logging
import random as random_module
from collections.abc import Awaitable, Callable, Mapping, Sequence
from http import HTTPStatus
from typing import Any, Literal
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse

from clients.state import REGISTER_STATE_KEYS, StateCache, StateError

log = logging.getLogger("eventq.client")

JsonDict = dict[str, Any]
ConnectionState = Literal["connecting", "connected", "reconnecting", "stopped"]
EventCallback = Callable[[JsonDict], Awaitable[None] | None]
ResyncCallback = Callable[[StateCache], Awaitable[None] | None]
ConnectionStateCallback = Callable[[str], Awaitable[None] | None]

DEFAULT_EVENT_TYPES: tuple[str, ...] = ("realm_user", "subscription", "stream")
DEFAULT_USER_AGENT = "eventq-client/0.1"
# `client.on(ALL_EVENTS, callback)` receives every event (never heartbeats).
ALL_EVENTS = "*"

# Zulip feature level 377 added `peer_remove` events on deactivation; a server below it
# only sends the `realm_user` update, so the cache removes the user from every list itself.
LEGACY_FEATURE_LEVEL = 377
# Zulip's clients give a long-poll 90 s; the server answers an idle one with a heartbeat
# after 45-55 s, so only a dead connection or server reaches this timeout.
POLL_TIMEOUT_SECS = 90.0
# `register` of a large realm reads every user and channel; a minute is generous and
# still surfaces a hung server to the retry loop.
REQUEST_TIMEOUT_SECS = 60.0
# A server that has not accepted a TCP connection in 10 s is down or overloaded; the
# retry loop's backoff handles it better than a longer wait.
CONNECT_TIMEOUT_SECS = 10.0
# Backoff after a failed request: the n-th consecutive failure waits a uniformly random
# time in [0, min(CAP, INITIAL * 2**n)) ("full jitter"), so clients dropped together by a
# restart do not come back in lock-step. 0.5 s makes a blip cost little; the 30 s cap
# bounds the time to notice a server that is back, as Zulip's clients do.
BACKOFF_INITIAL_SECS = 0.5
BACKOFF_CAP_SECS = 30.0
# Doublings past this exceed the cap anyway; stopping there keeps 2**n from overflowing
# a float after days of retries.
_BACKOFF_MAX_DOUBLINGS = 16
# How long `close()` waits for an abandoned poll to end once the server was asked to
# answer it; past this the socket closes by itself at its request timeout.
CLOSE_DRAIN_TIMEOUT_SECS = 5.0
# Keys of a `register` answer that hold state (the current user's own keys included);
# `to_register_shape` renders these.
STATE_KEYS = REGISTER_STATE_KEYS


class EventClientError(Exception):
    """Base of every error this module raises."""


class ServerUnavailable(EventClientError):
    """A request failed in a way that may pass: connection error, timeout, 429 or 5xx.

    `run()` retries these itself; `register()` and `close()` raise or log them.
    """

    def __init__(self, msg: str, *, retry_after: float | None = None) -> None:
        super().__init__(msg)
        self.retry_after = retry_after


class ClientStopped(EventClientError):
    """`run()` cannot continue: the server refused the client in a way retrying won't fix."""

    def __init__(self, msg: str, *, status: int = 0, code: str = "") -> None:
        super().__init__(msg)
        self.status = status
        self.code = code


class AuthenticationError(ClientStopped):
    """401: the account is deactivated or the API key is wrong (`code` says which)."""


class RequestRejected(ClientStopped):
    """A 4xx answer other than 401, e.g. `BAD_REQUEST` (a bug on one side)."""


class ProtocolError(ClientStopped):
    """An answer that is not what the protocol promises (not JSON, no own user, ...)."""


class _Stopped(Exception):
    """Internal: `stop()` was called while a request or a backoff was pending."""


def backoff_delay(attempt: int, random: Callable[[], float] = random_module.random) -> float:
    """Seconds to wait before retry number `attempt` (0-based): full jitter, capped."""
    ceiling = min(
        BACKOFF_CAP_SECS, BACKOFF_INITIAL_SECS * 2 ** min(attempt, _BACKOFF_MAX_DOUBLINGS)
    )
    return ceiling * random()


def encode_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Zulip's parameter encoding: strings as they are, everything else JSON-encoded."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()}


async def _call(callback: Callable[..., object], *args: Any) -> None:
    """Call a sync or async callback."""
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


class EventClient:
    """One user's event queue on one server, and the state cache it keeps current."""

    def __init__(
        self,
        site: str,
        email: str,
        api_key: str,
        *,
        event_types: Sequence[str] | None = DEFAULT_EVENT_TYPES,
        user_agent: str = DEFAULT_USER_AGENT,
        queue_lifespan_secs: int | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        random: Callable[[], float] = random_module.random,
    ) -> None:
        self.site = site.rstrip("/")
        self.email = email
        self.event_types = tuple(event_types) if event_types is not None else None
        self.user_agent = user_agent
        self.queue_lifespan_secs = queue_lifespan_secs
        # Injectable so tests can check the backoff without waiting.
        self._sleep = sleep
        self._random = random
        self._authorization = "Basic " + base64.b64encode(f"{email}:{api_key}".encode()).decode()

        self.on_resync: ResyncCallback | None = None
        self.on_connection_state: ConnectionStateCallback | None = None
        self.on_heartbeat: EventCallback | None = None
        self.connection_state: ConnectionState = "stopped"
        self._callbacks: dict[str, list[EventCallback]] = {}

        self._state: StateCache | None = None
        self.queue_id: str | None = None
        self.last_event_id = -1
        self.feature_level = 0
        self.user_id: int | None = None

        # Created on first use: tornado binds an HTTP client to the running loop.
        self._http: AsyncHTTPClient | None = None
        self._stop_event = asyncio.Event()
        self._stop_waiter: asyncio.Future[Any] | None = None
        self._run_done = asyncio.Event()
        self._run_task: asyncio.Task[Any] | None = None
        self._running = False
        self._closed = False
        # Polls left parked on the server by stop(); close() ends and awaits them.
        self._abandoned: set[asyncio.Future[HTTPResponse]] = set()

    # -- public API -----------------------------------------------------------------------

    @property
    def state(self) -> StateCache:
        """The local state; available once `register()` (or `run()`) registered."""
        if self._state is None:
            raise RuntimeError("not registered yet: await register() or run() first")
        return self._state

    def on(self, event_type: str, callback: EventCallback) -> None:
        """Call `callback(event)` for each event of `event_type` (`"*"`: every event)."""
        self._callbacks.setdefault(event_type, []).append(callback)

    def off(self, event_type: str, callback: EventCallback) -> None:
        """Remove a callback added with `on` (ValueError if it was not added)."""
        self._callbacks.get(event_type, []).remove(callback)

    async def register(self) -> StateCache:
        """Register a new queue and rebuild `state` from its answer (one attempt).

        Raises `ServerUnavailable`, `AuthenticationError`, `RequestRejected` or
        `ProtocolError`.
        """
        params: dict[str, Any] = {
            "include_subscribers": True,
            "client_capabilities": {"deactivation_peer_events": True},
        }
        if self.event_types is not None:
            params["event_types"] = list(self.event_types)
            # The answer names the current user (`user_id` and the other own keys) only
            # when realm_user state is fetched, so it always is.
            params["fetch_event_types"] = sorted({*self.event_types, "realm_user"})
        if self.queue_lifespan_secs is not None:
            params["queue_lifespan_secs"] = self.queue_lifespan_secs
        answer = await self._request("POST", "register", params, REQUEST_TIMEOUT_SECS)
        self._adopt(answer)
        return self.state

    async def run(self) -> None:
        """Long-poll until `stop()`; registers first when no queue is registered.

        Raises `ClientStopped` (401 or another refusal) or what a callback raised.
        """
        if self._closed:
            raise RuntimeError("the client is closed")
        if self._running:
            raise RuntimeError("run() is already running")
        self._running = True
        self._run_task = asyncio.current_task()
        self._run_done.clear()
        stop_waiter = self._stop_waiter = asyncio.ensure_future(self._stop_event.wait())
        try:
            await self._set_connection_state("connecting")
            await self._loop()
        except _Stopped:
            pass
        finally:
            try:
                stop_waiter.cancel()
                await asyncio.wait({stop_waiter})
                self._stop_waiter = None
                # A stop() ends one run(); the next one starts afresh.
                self._stop_event.clear()
                await self._set_connection_state("stopped")
            finally:
                # Even if the callback raised: close() waits for this.
                self._running = False
                self._run_task = None
                self._run_done.set()

    def stop(self) -> None:
        """Make `run()` return before its next event (or the next `run()` at once)."""
        self._stop_event.set()

    async def close(self, *, delete_queue: bool = False) -> None:
        """Stop `run()`, end its parked poll on the server, release the HTTP client.

        With `delete_queue`, the server's queue is deleted (best effort: a server that is
        down lets it expire after its lifespan). Never raises for server errors.
        """
        if self._running and asyncio.current_task() is self._run_task:
            raise RuntimeError("close() from a callback would wait for itself; call stop()")
        self.stop()
        if self._running:
            await self._run_done.wait()
        self._stop_event.clear()
        if self.queue_id is not None and (delete_queue or self._abandoned):
            try:
                if delete_queue:
                    await self._request(
                        "DELETE", "events", {"queue_id": self.queue_id}, REQUEST_TIMEOUT_SECS
                    )
                    self.queue_id = None
                else:
                    # One waiting poll per queue: a second one answers the first at once.
                    # It acknowledges only what was applied; the rest stays queued.
                    await self._poll(dont_block=True)
            except EventClientError as error:
                log.info("close: could not end the queue's poll on %s: %s", self.site, error)
        if self._abandoned:
            await asyncio.wait(set(self._abandoned), timeout=CLOSE_DRAIN_TIMEOUT_SECS)
        if self._http is not None:
            self._http.close()
            self._http = None
        self._closed = True

    # -- the loop -------------------------------------------------------------------------

    async def _loop(self) -> None:
        attempt = 0
        resync = False
        # After (re)connecting, the first poll does not block: its answer says at once
        # that the server is back and catches up with what was queued meanwhile.
        catch_up = True
        while not self._stop_event.is_set():
            try:
                if self.queue_id is None:
                    await self.register()
                    await self._set_connection_state("connected")
                    attempt = 0
                    if resync:
                        resync = False
                        if self.on_resync is not None:
                            await _call(self.on_resync, self.state)
                    catch_up = False
                    continue
                answer = await self._poll(dont_block=catch_up)
                await self._set_connection_state("connected")
                attempt = 0
                catch_up = False
                await self._handle_events(answer.get("events", []))
            except ServerUnavailable as error:
                if self.connection_state == "connected":
                    await self._set_connection_state("reconnecting")
                delay = backoff_delay(attempt, self._random)
                if error.retry_after is not None:
                    delay = max(delay, error.retry_after)
                log.info("%s; retrying in %.2fs (attempt %d)", error, delay, attempt + 1)
                attempt += 1
                catch_up = True
                await self._pause(delay)
            except RequestRejected as error:
                if error.code != "BAD_EVENT_QUEUE_ID":
                    raise
                log.info("queue %s is gone on %s; registering again", self.queue_id, self.site)
                self.queue_id = None
                resync = True
            except StateError as error:
                log.warning("state cache contradicts an event (%s); registering again", error)
                self.queue_id = None
                resync = True

    async def _poll(self, *, dont_block: bool) -> JsonDict:
        assert self.queue_id is not None
        params = {
            "queue_id": self.queue_id,
            "last_event_id": self.last_event_id,
            "dont_block": dont_block,
        }
        return await self._request("GET", "events", params, POLL_TIMEOUT_SECS)

    async def _handle_events(self, events: list[JsonDict]) -> None:
        for event in events:
            if self._stop_event.is_set():
                return  # not acknowledged: the next run() gets them again
            event_id = int(event["id"])
            if event.get("type") == "heartbeat":
                # Carries the newest id already handed out: acknowledging it loses nothing.
                self.last_event_id = max(self.last_event_id, event_id)
                if self.on_heartbeat is not None:
                    await _call(self.on_heartbeat, event)
                continue
            if event_id <= self.last_event_id:
                continue  # delivered again because its acknowledgement was lost
            self.state.apply(event)
            self.last_event_id = event_id
            for callback in [
                *self._callbacks.get(str(event.get("type")), []),
                *self._callbacks.get(ALL_EVENTS, []),
            ]:
                await _call(callback, event)

    async def _pause(self, delay: float) -> None:
        """The injected sleep, cut short by `stop()` (then raises `_Stopped`)."""
        sleeper = asyncio.ensure_future(self._sleep(delay))
        try:
            await self._wait_or_stop(sleeper)
        finally:
            if not sleeper.done():
                sleeper.cancel()
                await asyncio.wait({sleeper})
        if self._stop_event.is_set():
            raise _Stopped

    async def _wait_or_stop(self, future: asyncio.Future[Any]) -> None:
        waiters: set[asyncio.Future[Any]] = {future}
        if self._stop_waiter is not None:
            waiters.add(self._stop_waiter)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)

    async def _set_connection_state(self, state: ConnectionState) -> None:
        if state == self.connection_state:
            return
        self.connection_state = state
        if self.on_connection_state is not None:
            await _call(self.on_connection_state, state)

    # -- register answers -----------------------------------------------------------------

    def _adopt(self, answer: JsonDict) -> None:
        """Take the queue and state of a `register` answer."""
        try:
            queue_id = str(answer["queue_id"])
            last_event_id = int(answer["last_event_id"])
        except (KeyError, TypeError, ValueError):
            raise ProtocolError("register answer lacks queue_id or last_event_id") from None
        # Zulip's answer names the current user in its own keys (with realm_user state).
        user_id = answer.get("user_id")
        if isinstance(user_id, bool) or not isinstance(user_id, int):
            raise ProtocolError("register answer lacks the current user's user_id")
        self.feature_level = int(answer.get("zulip_feature_level", 0))
        self._state = StateCache.from_register(
            answer, user_id, removes_deactivated_users=self.feature_level < LEGACY_FEATURE_LEVEL
        )
        self.user_id = user_id
        self.queue_id = queue_id
        self.last_event_id = last_event_id

    # -- HTTP -----------------------------------------------------------------------------

    async def _request(
        self, method: str, endpoint: str, params: Mapping[str, Any], timeout: float
    ) -> JsonDict:
        """One API call; the decoded answer on success, else a typed error."""
        url = f"{self.site}/api/v1/{endpoint}"
        encoded = urlencode(encode_params(params))
        headers = {"Authorization": self._authorization}
        body: str | None = None
        if method == "GET":
            url = f"{url}?{encoded}"
        else:
            # Zulip's clients send form-encoded bodies, also on DELETE.
            body = encoded
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = HTTPRequest(
            url,
            method=method,
            headers=headers,
            body=body,
            user_agent=self.user_agent,
            connect_timeout=CONNECT_TIMEOUT_SECS,
            request_timeout=timeout,
            follow_redirects=False,
            # tornado refuses a DELETE body unless told it is intended.
            allow_nonstandard_methods=True,
        )
        response = await self._fetch(request)
        return self._interpret(method, endpoint, response)

    async def _fetch(self, request: HTTPRequest) -> HTTPResponse:
        if self._http is None:
            self._http = AsyncHTTPClient(force_instance=True)
        future = asyncio.ensure_future(self._http.fetch(request, raise_error=False))
        try:
            await self._wait_or_stop(future)
        except asyncio.CancelledError:
            self._abandon(future)
            raise
        if not future.done():
            self._abandon(future)
            raise _Stopped
        try:
            return future.result()
        except (OSError, HTTPClientError) as error:
            # Connection refused or reset, DNS, timeouts (tornado's 599).
            raise ServerUnavailable(f"{request.method} {request.url}: {error}") from error

    def _abandon(self, future: asyncio.Future[HTTPResponse]) -> None:
        self._abandoned.add(future)

        def forget(done: asyncio.Future[HTTPResponse]) -> None:
            self._abandoned.discard(done)
            if not done.cancelled():
                done.exception()  # retrieved, so asyncio does not log it as lost

        future.add_done_callback(forget)

    def _interpret(self, method: str, endpoint: str, response: HTTPResponse) -> JsonDict:
        status = response.code
        # Worth retrying: rate limiting and server-side failures (also tornado's 599).
        retryable = (
            status == HTTPStatus.TOO_MANY_REQUESTS or status >= HTTPStatus.INTERNAL_SERVER_ERROR
        )
        where = f"{method} /api/v1/{endpoint}"
        try:
            body = json.loads(response.body or b"")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            if retryable:
                raise ServerUnavailable(f"{where}: HTTP {status}")
            raise ProtocolError(
                f"{where}: HTTP {status} with a body that is not JSON", status=status
            )
        if status == HTTPStatus.OK and body.get("result") == "success":
            return body
        code = str(body.get("code", ""))
        msg = f"{where}: HTTP {status} {code}: {body.get('msg', '')}"
        if retryable:
            # Zulip's 429 answer says how long to wait in its body's `retry-after`.
            retry_after = body.get("retry-after")
            raise ServerUnavailable(
                msg,
                retry_after=float(retry_after) if isinstance(retry_after, int | float) else None,
            )
        if status == HTTPStatus.UNAUTHORIZED:
            raise AuthenticationError(msg, status=status, code=code)
        if HTTPStatus.BAD_REQUEST <= status < HTTPStatus.INTERNAL_SERVER_ERROR:
            raise RequestRejected(msg, status=status, code=code)
        raise ProtocolError(msg, status=status, code=code)
