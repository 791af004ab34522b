"""Handlers of the event system: server settings, register, long-poll, delete, OpenAPI."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from models.messages.narrows import check_event_narrow, parse_narrow
from queues.descriptor import MAX_QUEUE_LIFESPAN_SECS
from queues.types import Capabilities
from server.api.params import (
    check_bool,
    check_dict,
    check_event_types,
    check_int,
    check_list,
    or_null,
)
from server.api.poll_ledger import PollTicket
from server.api.request import ApiHandler
from server.engine.errors import ApiError, BadRequest, RateLimited
from server.engine.live_queues import WakeReason
from server.engine.registration import RegisterRequest
from server.engine.service import ZULIP_FEATURE_LEVEL, ZULIP_VERSION

OPENAPI_PATH = Path(__file__).parent.parent / "openapi.json"
# `zulip_merge_base` is "" (Zulip: "if unavailable"): eventq is not a fork of Zulip's
# server repository, so it has no merge base with it.
VERSION_FIELDS = {
    "zulip_version": ZULIP_VERSION,
    "zulip_feature_level": ZULIP_FEATURE_LEVEL,
    "zulip_merge_base": "",
}


class ServerSettingsHandler(ApiHandler):
    """`GET /api/v1/server_settings`: what a client checks before it logs in."""

    public = True

    def get(self) -> None:
        # Only what eventq does: it sends no push notifications, and the only way to
        # authenticate is an API key with the account's email (no password, email or
        # external login), so no login method is offered. No realm-specific keys: the
        # endpoint is answered for the whole server, like Zulip's root domain.
        self.send_success(
            {
                **VERSION_FIELDS,
                "push_notifications_enabled": False,
                "is_incompatible": False,
                "email_auth_enabled": False,
                "require_email_format_usernames": True,
                "authentication_methods": {"password": False, "dev": False, "email": False},
                "external_authentication_methods": [],
            }
        )


class OpenApiHandler(ApiHandler):
    """`GET /api/v1/openapi.json`: the document describing this API."""

    public = True

    def get(self) -> None:
        self.finish(OPENAPI_PATH.read_bytes())


class RegisterHandler(ApiHandler):
    """`POST /api/v1/register`: a new queue and the state it starts from."""

    async def post(self) -> None:
        user = await self.authenticate()
        # Bounded: a queue keeps its event types in memory and in its descriptor. JSON
        # `null` is the parameter's absence, as in Zulip, for these and `narrow`.
        event_types = self.param_json("event_types", or_null(check_event_types), None)
        fetch_event_types = self.param_json("fetch_event_types", or_null(check_event_types), None)
        raw_capabilities = self.param_json("client_capabilities", check_dict, {})
        try:
            capabilities = Capabilities.from_client_capabilities(raw_capabilities)
        except ValueError as error:
            raise BadRequest(f"Invalid client_capabilities: {error}") from None
        lifespan = self.param_json("queue_lifespan_secs", check_int, None)
        if lifespan is not None and not 0 <= lifespan <= MAX_QUEUE_LIFESPAN_SECS:
            raise BadRequest(f"queue_lifespan_secs must be between 0 and {MAX_QUEUE_LIFESPAN_SECS}")
        # Filters `message` events only (models.messages.narrows); fixed for the queue's life.
        narrow = parse_narrow(self.param_json("narrow", or_null(check_list), None) or [])
        # A queue filters by what an event carries: Zulip refuses the other operators.
        check_event_narrow(narrow)
        # Zulip's default for a register (GET /messages defaults to true).
        apply_markdown = self.param_json("apply_markdown", check_bool, False)
        # Accepted for compatibility: avatars are always computed by the client, and
        # eventq has no all-public-channels queues. Both may be null in Zulip.
        for ignored in ("client_gravatar", "all_public_streams"):
            self.param_json(ignored, or_null(check_bool), None)
        # Declared: the client reads `user_settings`, not the legacy per-setting keys.
        user_settings_object = raw_capabilities.get("user_settings_object", False) is True
        request = RegisterRequest(
            event_types=frozenset(event_types) if event_types is not None else None,
            fetch_event_types=frozenset(fetch_event_types)
            if fetch_event_types is not None
            else None,
            capabilities=capabilities,
            include_subscribers=self.param_json("include_subscribers", check_bool, False),
            queue_lifespan_secs=lifespan,
            user_agent=self.request.headers.get("User-Agent"),
            narrow=narrow,
            apply_markdown=apply_markdown,
            slim_presence=self.param_json("slim_presence", check_bool, False),
            presence_history_limit_days=self.param_json(
                "presence_history_limit_days", or_null(check_int), None
            ),
            server_url=f"{self.request.protocol}://{self.request.host}",
            user_settings_object=user_settings_object,
        )
        answer = await self.service.register(user, request)
        self.send_success({**VERSION_FIELDS, **answer})


class EventsHandler(ApiHandler):
    """`GET /api/v1/events` (long-poll) and `DELETE /api/v1/events`."""

    _queue_id: str | None = None
    _waiter: asyncio.Future[WakeReason] | None = None

    def counts_against_user_budget(self) -> bool:
        # Polls have their own budget, counting only wasted ones (server.api.ratelimit).
        return self.request.method != "GET"

    async def get(self) -> None:
        user = await self.authenticate()
        limiter = self.rate_limiter
        ticket: PollTicket | None = None
        try:
            queue_id = self.param_str("queue_id")
            last_event_id = self.param_json("last_event_id", or_null(check_int), None)
            dont_block = self.param_json("dont_block", check_bool, False)
            ticket = limiter.begin_poll(user.id, queue_id, last_event_id)
            self._queue_id = queue_id
            self._waiter = asyncio.get_running_loop().create_future()
            started = time.monotonic()
            answer = await self.service.get_events(
                user, queue_id, last_event_id, dont_block, self._waiter
            )
        except RateLimited:
            raise
        except ApiError:
            # A refused poll (bad parameters, unknown queue) is a wasted one.
            if ticket is None:
                ticket = limiter.begin_poll(user.id, None, None)
            limiter.end_poll(ticket, answered=False, newest_event=None, held=False)
            raise
        # Held until its heartbeat was due, not cut short by a newer poll of the queue.
        held = answer.heartbeat and time.monotonic() - started >= self.service.heartbeat_secs[0]
        newest = None if answer.heartbeat else _newest_event_id(answer.events)
        limiter.end_poll(
            ticket, answered=True, newest_event=newest, held=held, ephemeral=answer.ephemeral
        )
        self.quiet = answer.heartbeat
        self.routine = True
        if self.request.connection is None or self._finished:
            return
        # Each event was encoded once when it was committed; only the id is spliced in.
        body = b'{"result":"success","msg":"","events":[%s],"queue_id":%s}' % (
            b",".join(answer.events),
            orjson.dumps(answer.queue_id),
        )
        self.finish_json(body)

    async def delete(self) -> None:
        user = await self.authenticate()
        queue_id = self.param_str("queue_id")
        await self.service.delete_queue(user, queue_id)
        self.rate_limiter.queue_deleted(queue_id)
        self.send_success()

    def on_connection_close(self) -> None:
        # The client went away mid-poll: free the queue's waiting slot.
        if self._queue_id is not None and self._waiter is not None:
            self.service.cancel_wait(self._queue_id, self._waiter)


def _newest_event_id(events: list[bytes]) -> int | None:
    """The id of the last (newest) encoded event: its last key (`queues.types`)."""
    if not events:
        return None
    try:
        return int(events[-1].rsplit(b'"id":', 1)[1].rstrip(b"} "))
    except (IndexError, ValueError):
        return None
