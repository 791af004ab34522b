"""Presence, Zulip's three endpoints: `POST /users/me/presence` (a client's ping, and its
poll of everyone's presence), `GET /realm/presence` and `GET /users/{user_id_or_email}/presence`.

The ping is the busiest request of a large realm (a client every minute), so its
handler does one hop to a database thread for both of its transactions: the ping
(`actions.presence.do_update_user_presence`, a write transaction that usually takes no
lock and may write nothing), then, unless `ping_only`, the read of the realm's presence
in a snapshot (`models.presence`), after the ping committed so the write lock is never
held for a read. The consumer is woken only when the ping wrote an event; an answered
ping is logged at DEBUG, like an answered poll.
"""

from __future__ import annotations

import time
from typing import Any

from actions.presence import PresenceUpdate, do_update_user_presence
from models.presence import ACTIVE, IDLE, realm_presence, realm_presence_legacy, user_presence
from server.api.params import check_bool, check_int, check_text
from server.api.request import ApiHandler
from server.engine.errors import BadRequest


class OwnPresenceHandler(ApiHandler):
    """`POST /users/me/presence`: record the caller's status; answer everyone's presence
    (modern with `last_update_id` or `slim_presence`, else legacy) unless `ping_only`."""

    # An answered ping: one line each at INFO would cost more than the ping.
    routine = True

    async def post(self) -> None:
        user = await self.authenticate()
        status = self.param_str("status")
        if status not in (ACTIVE, IDLE):
            raise BadRequest(f"Invalid status: {status}")
        ping_only = self.param_json("ping_only", check_bool, False)
        # For Zulip's usage statistics, which eventq does not keep.
        self.param_json("new_user_input", check_bool, False)
        slim = self.param_json("slim_presence", check_bool, False)
        last_update_id = self.param_json("last_update_id", check_int, None)
        history_limit_days = self.param_json("history_limit_days", check_int, None)
        if last_update_id is not None:
            slim = True  # Zulip: a client of the `last_update_id` protocol is modern
        db = self.service.db
        realm_id, user_id = user.realm_id, user.id
        pinged_at = time.time()

        def work() -> tuple[PresenceUpdate, dict[str, Any]]:
            with db.write() as session:
                update = do_update_user_presence(session, realm_id, user_id, status, now=pinged_at)
            if ping_only:
                return update, {}
            with db.snapshot() as session:
                answer = realm_presence(
                    session,
                    realm_id,
                    slim=slim,
                    now=time.time(),
                    last_update_id=last_update_id,
                    history_limit_days=history_limit_days,
                )
            return update, answer

        update, answer = await self.service.run_db(work)
        if update.event_sent:
            self.service.wake_consumer()
        self.send_success(answer)


class RealmPresenceHandler(ApiHandler):
    """`GET /realm/presence`: every active human user's legacy presence entries."""

    async def get(self) -> None:
        user = await self.authenticate()
        self.send_success(await self.query(realm_presence_legacy, user.realm_id, now=time.time()))


class UserPresenceHandler(ApiHandler):
    """`GET /users/{user_id_or_email}/presence`: one user's presence, in the legacy form."""

    async def get(self, raw_user: str) -> None:
        user = await self.authenticate()
        target = check_text("user_id_or_email", raw_user)
        answer = await self.query(user_presence, user.realm_id, target, now=time.time())
        self.send_success(answer)


PRESENCE_ROUTES: list[tuple[str, type[ApiHandler]]] = [
    # Before users/{user_id_or_email}/presence, which would take "me" for an email.
    (r"/api/v1/users/me/presence", OwnPresenceHandler),
    (r"/api/v1/users/([^/]+)/presence", UserPresenceHandler),
    (r"/api/v1/realm/presence", RealmPresenceHandler),
]
