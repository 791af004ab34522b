"""`POST /api/v1/users/me/subscriptions/properties`: the caller's own settings of the
channels they are subscribed to (colour, muting, pinning, notifications), Zulip's way.

`subscription_data` is a JSON list of `{"stream_id", "property", "value"}` objects. The
handler decodes each one and checks it (`actions.subscription_properties.
check_property_change`, in the order given, so the first bad change is the one reported),
then makes one call, `check_update_subscription_properties`, in a write transaction. The
list is bounded by the route's default body limit (`server.api.body_limits`): a few
hundred changes, where a client sends one or two.
"""

from __future__ import annotations

from typing import Any

from actions.subscription_properties import (
    PropertyChange,
    check_property_change,
    check_update_subscription_properties,
)
from server.api.params import check_id, check_list
from server.api.request import ApiHandler
from server.engine.errors import BadRequest

# The keys of one change, all required (Zulip's `SubscriptionPropertyChangeRequest`).
CHANGE_KEYS = ("stream_id", "property", "value")


def check_subscription_data(name: str, value: Any) -> list[PropertyChange]:
    """`subscription_data`: every change decoded and checked, in order."""
    changes: list[PropertyChange] = []
    for index, item in enumerate(check_list(name, value)):
        where = f"{name}[{index}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} is not a dict")
        for key in CHANGE_KEYS:
            if key not in item:
                raise BadRequest(f"{key} key is missing from {where}")
        stream_id = check_id(f'{where}["stream_id"]', item["stream_id"])
        prop = item["property"]
        if not isinstance(prop, str):
            raise BadRequest(f'{where}["property"] is not a string')
        changes.append(check_property_change(stream_id, prop, item["value"]))
    return changes


class SubscriptionPropertiesHandler(ApiHandler):
    """`POST /users/me/subscriptions/properties`: change one's own subscription settings."""

    async def post(self) -> None:
        user = await self.authenticate()
        changes = self.param_json("subscription_data", check_subscription_data)
        await self.act(check_update_subscription_properties, user.realm_id, user.id, changes)
        self.send_success()


SUBSCRIPTION_PROPERTY_ROUTES: list[tuple[str, type[ApiHandler]]] = [
    (r"/api/v1/users/me/subscriptions/properties", SubscriptionPropertiesHandler),
]
