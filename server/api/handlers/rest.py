"""State and admin endpoints the `zulip` client calls: users, channels, subscriptions,
and eventq's own admin views of live queues. Each handler parses, calls one function
of `models` or `actions` on a database thread, and answers.

Every action is called with the caller's id as its acting user. `require_admin()`
refuses a non-administrator early, on the role authentication found (possibly cached);
the action is the authority: it reads the caller again under the realm lock and refuses
one deactivated or demoted since (`actions.actors`)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from actions.subscriptions import check_add_subscriptions, check_remove_subscriptions
from actions.users import do_create_user, do_deactivate_user, do_reactivate_user
from models.state import (
    member,
    own_user,
    realm_members,
    state_for,
    visible_stream_id,
    visible_stream_members,
)
from models.tables import Role
from server.api.params import check_bool, check_id, check_list, check_str_list, parse_id_text
from server.api.quotas import check_subscription_request
from server.api.request import ApiHandler
from server.engine.errors import BadRequest, StreamNotFound


def _check_subscription_names(name: str, value: Any) -> list[str]:
    """`subscriptions` of POST: a list of {"name": ...} objects (or plain names)."""
    items = check_list(name, value)
    names = []
    for index, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            names.append(item["name"])
        elif isinstance(item, str):
            names.append(item)
        else:
            raise BadRequest(f'{name}[{index}] is not a dict with a "name" string')
    return names


def _check_principals(name: str, value: Any) -> list[str | int]:
    items = check_list(name, value)
    for index, item in enumerate(items):
        if isinstance(item, bool) or not isinstance(item, str | int):
            raise BadRequest(f"{name}[{index}] is not an email or a user id")
        if isinstance(item, int):
            check_id(f"{name}[{index}]", item)
    return items


class UsersHandler(ApiHandler):
    """`GET /users` (every user) and `POST /users` (create; administrators only)."""

    async def get(self) -> None:
        user = await self.authenticate()
        self.send_success({"members": await self.query(realm_members, user.realm_id)})

    async def post(self) -> None:
        user = await self.authenticate()
        self.require_admin()
        email = self.param_str("email")
        self.param_str("password")  # required by Zulip's API; eventq has no passwords
        full_name = self.param_str("full_name")
        created = await self.act(
            do_create_user, user.realm_id, email, full_name, Role.MEMBER, acting_user_id=user.id
        )
        self.send_success({"user_id": created.id})


class UserHandler(ApiHandler):
    """`GET /users/{id}`, and `DELETE /users/{id}` (deactivate; administrators only)."""

    async def delete(self, raw_id: str) -> None:
        user = await self.authenticate()
        self.require_admin()
        target = parse_id_text("user_id", raw_id)
        await self.act(do_deactivate_user, user.realm_id, target, acting_user_id=user.id)
        self.send_success()

    async def get(self, raw_id: str) -> None:
        user = await self.authenticate()
        found = await self.query(member, user.realm_id, parse_id_text("user_id", raw_id))
        if found is None:
            raise BadRequest("No such user")
        self.send_success({"user": found})


class OwnUserHandler(ApiHandler):
    """`GET /users/me`: the caller's own data (Zulip's "get own user")."""

    async def get(self) -> None:
        user = await self.authenticate()
        self.send_success(await self.query(own_user, user.id))


class ReactivateUserHandler(ApiHandler):
    """`POST /users/{id}/reactivate` (administrators only)."""

    async def post(self, raw_id: str) -> None:
        user = await self.authenticate()
        self.require_admin()
        target = parse_id_text("user_id", raw_id)
        await self.act(do_reactivate_user, user.realm_id, target, acting_user_id=user.id)
        self.send_success()


class StreamsHandler(ApiHandler):
    """`GET /streams`: every channel the caller may see."""

    async def get(self) -> None:
        user = await self.authenticate()
        for flag in (
            "include_public",
            "include_subscribed",
            "include_all_active",
            "include_web_public",
            "include_default",
            "include_owner_subscribed",
        ):
            self.param_json(flag, check_bool, False)
        state = await self.query(state_for, user.id, {"stream"}, False)
        self.send_success({"streams": state["streams"]})


class StreamIdHandler(ApiHandler):
    """`GET /get_stream_id?stream=NAME`."""

    async def get(self) -> None:
        user = await self.authenticate()
        name = self.param_str("stream")
        stream_id = await self.query(visible_stream_id, user.id, name)
        if stream_id is None:
            raise StreamNotFound(name)
        self.send_success({"stream_id": stream_id})


class StreamMembersHandler(ApiHandler):
    """`GET /streams/{id}/members`: subscribers of a channel the caller may see."""

    async def get(self, raw_id: str) -> None:
        user = await self.authenticate()
        members = await self.query(
            visible_stream_members, user.id, parse_id_text("stream_id", raw_id)
        )
        if members is None:
            raise BadRequest("Invalid channel ID")
        self.send_success({"subscribers": members})


class SubscriptionsHandler(ApiHandler):
    """`GET`, `POST` and `DELETE /users/me/subscriptions` (with `principals`)."""

    async def get(self) -> None:
        user = await self.authenticate()
        include = self.param_json("include_subscribers", check_bool, False)
        state = await self.query(state_for, user.id, {"subscription"}, include)
        self.send_success({"subscriptions": state["subscriptions"]})

    async def post(self) -> None:
        user = await self.authenticate()
        names = self.param_json("subscriptions", _check_subscription_names)
        principals = self.param_json("principals", _check_principals, None)
        invite_only = self.param_json("invite_only", check_bool, False)
        is_web_public = self.param_json("is_web_public", check_bool, False)
        for ignored in ("announce", "authorization_errors_fatal", "history_public_to_subscribers"):
            self.param_json(ignored, check_bool, False)
        # Before anything runs: a refused request changes nothing.
        check_subscription_request(
            user.id, len(names), None if principals is None else len(principals), self.service.abuse
        )
        result = await self.act(
            check_add_subscriptions,
            user.realm_id,
            user.id,
            names,
            principals,
            invite_only=invite_only,
            is_web_public=is_web_public,
        )
        self.send_success(
            {
                "subscribed": {str(uid): names for uid, names in result.changed.items()},
                "already_subscribed": {str(uid): names for uid, names in result.unchanged.items()},
            }
        )

    async def delete(self) -> None:
        user = await self.authenticate()
        names = self.param_json("subscriptions", check_str_list)
        principals = self.param_json("principals", _check_principals, None)
        check_subscription_request(
            user.id, len(names), None if principals is None else len(principals), self.service.abuse
        )
        result = await self.act(
            check_remove_subscriptions, user.realm_id, user.id, names, principals
        )
        removed = sorted({n for names in result.changed.values() for n in names})
        not_removed = sorted({n for names in result.unchanged.values() for n in names})
        self.send_success({"removed": removed, "not_removed": not_removed})


class QueuesAdminHandler(ApiHandler):
    """`GET /eventq/queues`: the caller's realm's queues live in this shard (administrators
    only); `eventq queues` asks every shard."""

    async def get(self) -> None:
        user = await self.authenticate()
        self.require_admin()
        self.send_success(
            {
                "queues": self.service.summaries(user.realm_id),
                "delivery": self.service.delivery_status(user.realm_id),
                "shard": self.service.shard,
            }
        )


class ClientsAdminHandler(ApiHandler):
    """`GET /eventq/clients`: live queues per client version and deactivation sequence."""

    async def get(self) -> None:
        user = await self.authenticate()
        self.require_admin()
        counts: Counter[tuple[str, str | None, str]] = Counter()
        for summary in self.service.summaries(user.realm_id):
            sequence = "legacy" if summary["legacy_deactivation"] else "full"
            counts[(summary["client_name"], summary["client_version"], sequence)] += 1
        clients = [
            {"client_name": name, "client_version": version, "sequence": sequence, "queues": count}
            for (name, version, sequence), count in sorted(
                counts.items(), key=lambda item: (item[0][0], item[0][1] or "", item[0][2])
            )
        ]
        self.send_success({"clients": clients, "shard": self.service.shard})


# Any segment is routed for an id, so that a malformed one ("abc", "1.5") is a JSON 400
# from `parse_id_text` like any other malformed parameter, not a 404 for the whole path.
_ID = r"([^/]+)"

REST_ROUTES: list[tuple[str, type[ApiHandler]]] = [
    (r"/api/v1/users", UsersHandler),
    (r"/api/v1/users/me/subscriptions", SubscriptionsHandler),
    # Before users/{id}, which would take "me" for an id.
    (r"/api/v1/users/me", OwnUserHandler),
    (rf"/api/v1/users/{_ID}", UserHandler),
    (rf"/api/v1/users/{_ID}/reactivate", ReactivateUserHandler),
    (r"/api/v1/streams", StreamsHandler),
    (r"/api/v1/get_stream_id", StreamIdHandler),
    (rf"/api/v1/streams/{_ID}/members", StreamMembersHandler),
    (r"/api/v1/eventq/queues", QueuesAdminHandler),
    (r"/api/v1/eventq/clients", ClientsAdminHandler),
]
