"""The wire shapes: every object eventq sends, built here and nowhere else.

One builder per kind: a user (Zulip's `User`), the current user's own keys of a
`register` answer and of `GET /users/me`, a channel (`BasicChannel`), a subscription
(`Subscription`), a never-subscribed channel, and the envelope of every event type
eventq emits. Field names, types and meanings follow Zulip's API documentation at the
feature level eventq advertises (377); `server/api/openapi.json` describes these shapes
exactly, and the conformance tests check them against Zulip's documented schemas.

Zulip settings that eventq has no concept of are sent with the value that states what
eventq does:

* eventq deletes no messages: `message_retention_days` is -1, Zulip's "retain forever";
  it tracks neither a channel's first message, its traffic nor its recent activity:
  `first_message_id` and `stream_weekly_traffic` are null, `is_recently_active` false;
* eventq has no user groups: every channel group setting is the empty anonymous group
  (`nobody_group`), which leaves exactly the role-based rules Zulip applies regardless of the
  setting: organization administrators administer channels and remove subscribers,
  who may subscribe whom follows roles (`models.visibility`), and nobody is named as
  allowed to post: a known gap now that channels carry messages, since who may post
  follows the content-access rules of `actions.messages` (see `CHANNEL_GROUP_SETTINGS`);
* eventq records no channel creators (`creator_id` null), archives no channels
  (`is_archived` false), stores no avatars (a user's avatar is the Gravatar of their
  email: null in user objects, as Zulip sends for a Gravatar avatar when
  `client_gravatar` is on, and the Gravatar URL in the current user's own keys), has no
  custom profile fields, time zones, cross-realm bots, invitations or bot owners.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Collection, Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any, Literal

from models.tables import Role, Stream, UserProfile
from models.visibility import (
    can_create_channels,
    can_create_web_public_channels,
    can_subscribe_others,
    is_realm_admin,
)

# Zulip's default subscription color for a channel the user never picked one for.
DEFAULT_STREAM_COLOR = "#c2c2c2"
# Zulip's `bot_type` of a generic bot, the only kind eventq has.
GENERIC_BOT_TYPE = 1
# `avatar_source` of an avatar served by Gravatar: eventq stores no uploaded avatars.
AVATAR_SOURCE_GRAVATAR = "G"
# eventq never changes an avatar, so its version never moves from Zulip's initial 1.
AVATAR_VERSION = 1
# Zulip's `stream_post_policy` 1, "any user can post": the deprecated field is documented
# as a superset of `can_send_message_group`; eventq's posting rules are no narrower.
STREAM_POST_POLICY_ANY = 1
# Zulip's `topics_policy` value for "follow the organization's setting".
TOPICS_POLICY_INHERIT = "inherit"
# Zulip's `message_retention_days` for "retain messages in this channel forever".
RETAIN_FOREVER = -1
# The channel settings that are group-setting values in Zulip's `BasicChannel`. With no
# user groups, a value naming "everyone" can only list every user, which would change
# every channel object at each user change: so all are the empty group for now, and
# `can_send_message_group` must become "everyone" once eventq serves Zulip's system
# user groups (channel posting follows content access in `actions.messages`).
CHANNEL_GROUP_SETTINGS = (
    "can_add_subscribers_group",
    "can_remove_subscribers_group",
    "can_administer_channel_group",
    "can_send_message_group",
    "can_subscribe_group",
)
# The keys a `register` answer carries about the current user when `realm_user` state is
# fetched (Zulip's POST /register documentation, "Present if `realm_user` is present").
OWN_USER_KEYS = (
    "user_id",
    "email",
    "delivery_email",
    "full_name",
    "is_admin",
    "is_owner",
    "is_moderator",
    "is_guest",
    "avatar_source",
    "avatar_url",
    "avatar_url_medium",
    "can_create_streams",
    "can_create_public_streams",
    "can_create_private_streams",
    "can_create_web_public_streams",
    "can_subscribe_other_users",
    "can_invite_others_to_realm",
    "cross_realm_bots",
)


def _as_utc(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; they are stored in UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def nobody_group() -> dict[str, list[int]]:
    """The empty anonymous group: a group-setting value naming no user and no group.

    A fresh dict each time, so no two wire objects share a mutable value.
    """
    return {"direct_members": [], "direct_subgroups": []}


def gravatar_url(email: str, size: int | None = None) -> str:
    """The Gravatar identicon URL for `email`, as Zulip builds it for a Gravatar avatar."""
    # MD5 is Gravatar's public addressing scheme here, not a security measure.
    digest = hashlib.md5(email.strip().lower().encode(), usedforsecurity=False).hexdigest()
    url = f"https://secure.gravatar.com/avatar/{digest}?d=identicon"
    if size is not None:
        url += f"&s={size}"
    return f"{url}&version={AVATAR_VERSION}"


def render_description(description: str) -> str:
    """`rendered_description`: the description as one HTML paragraph of escaped text.

    eventq renders no Markdown. Every Zulip client inserts this field as HTML, so the
    text is escaped: a description with markup shows as text, never becomes elements.
    """
    return f"<p>{html.escape(description)}</p>" if description else ""


# -- users ------------------------------------------------------------------------------


def user_to_api(user: UserProfile) -> dict[str, Any]:
    """A user as Zulip's `User` schema shows it: `realm_users` entries, `realm_user`
    `add` events, `GET /users` and `GET /users/{id}`."""
    data: dict[str, Any] = {
        "user_id": user.id,
        "email": user.email,
        # Every user of a realm sees every other user's real address in eventq.
        "delivery_email": user.email,
        "full_name": user.full_name,
        "role": user.role,
        "is_owner": user.role == Role.OWNER,
        "is_admin": is_realm_admin(user.role),
        "is_guest": user.role == Role.GUEST,
        "is_bot": user.is_bot,
        "bot_type": GENERIC_BOT_TYPE if user.is_bot else None,
        "bot_owner_id": None,
        "is_active": user.is_active,
        "timezone": "",
        # null: a Gravatar avatar the client computes from the email (client_gravatar).
        "avatar_url": None,
        "avatar_version": AVATAR_VERSION,
        "date_joined": _as_utc(user.date_joined).isoformat(),
    }
    if not user.is_bot:
        # Zulip: present only for non-bots; eventq has no custom profile fields.
        data["profile_data"] = {}
    return data


def own_user_keys(user: UserProfile) -> dict[str, Any]:
    """The current user's own keys of a `register` answer that fetched `realm_user`."""
    return {
        "user_id": user.id,
        "email": user.email,
        "delivery_email": user.email,
        "full_name": user.full_name,
        "is_admin": is_realm_admin(user.role),
        "is_owner": user.role == Role.OWNER,
        "is_moderator": user.role == Role.MODERATOR,
        "is_guest": user.role == Role.GUEST,
        "avatar_source": AVATAR_SOURCE_GRAVATAR,
        "avatar_url": gravatar_url(user.email),
        "avatar_url_medium": gravatar_url(user.email, size=500),
        "can_create_streams": can_create_channels(user.role),
        "can_create_public_streams": can_create_channels(user.role),
        "can_create_private_streams": can_create_channels(user.role),
        "can_create_web_public_streams": can_create_web_public_channels(user.role),
        "can_subscribe_other_users": can_subscribe_others(user.role),
        # eventq has no invitations: POST /users by an administrator is the only way in.
        "can_invite_others_to_realm": False,
        "cross_realm_bots": [],
    }


def own_profile(user: UserProfile) -> dict[str, Any]:
    """The fields of `GET /users/me` (Zulip's "get own user").

    `max_message_id` is left out: Zulip documents the field as deprecated.
    """
    data = user_to_api(user)
    # The own-user answer carries no bot fields, and always the avatar's URL.
    del data["bot_type"], data["bot_owner_id"]
    data["avatar_url"] = gravatar_url(user.email)
    return data


# -- channels -----------------------------------------------------------------------------


def stream_to_api(stream: Stream) -> dict[str, Any]:
    """A channel as Zulip's `BasicChannel` shows it: `streams` of `register` and of
    `GET /streams`, and `stream` `create` events."""
    data: dict[str, Any] = {
        "stream_id": stream.id,
        "name": stream.name,
        "description": stream.description,
        "rendered_description": render_description(stream.description),
        "date_created": int(_as_utc(stream.date_created).timestamp()),
        "creator_id": None,
        "invite_only": stream.invite_only,
        "is_web_public": stream.is_web_public,
        "is_archived": False,
        "history_public_to_subscribers": not stream.invite_only,
        "topics_policy": TOPICS_POLICY_INHERIT,
        "is_announcement_only": False,
        "stream_post_policy": STREAM_POST_POLICY_ANY,
        "message_retention_days": RETAIN_FOREVER,
        "first_message_id": None,
        "is_recently_active": False,
        "stream_weekly_traffic": None,
    }
    for setting in CHANNEL_GROUP_SETTINGS:
        data[setting] = nobody_group()
    return data


def never_subscribed_to_api(stream: Stream, subscribers: Collection[int] | None) -> dict[str, Any]:
    """A `never_subscribed` entry: the channel, with its subscribers if asked for."""
    entry = stream_to_api(stream)
    if subscribers is not None:
        entry["subscribers"] = sorted(subscribers)
    return entry


@dataclass(frozen=True, slots=True)
class SubscriptionSettings:
    """One user's own settings of one subscription, as stored (`Subscription`'s columns
    of the same names, revision 0012); null notification settings inherit the user's
    global ones. `in_home_view`, the legacy inverse of `is_muted`, is derived."""

    color: str = DEFAULT_STREAM_COLOR
    is_muted: bool = False
    pin_to_top: bool = False
    desktop_notifications: bool | None = None
    audible_notifications: bool | None = None
    push_notifications: bool | None = None
    email_notifications: bool | None = None
    wildcard_mentions_notify: bool | None = None

    def to_api(self) -> dict[str, Any]:
        """The settings' fields of a `Subscription` object."""
        return {
            "color": self.color,
            "is_muted": self.is_muted,
            "in_home_view": not self.is_muted,
            "pin_to_top": self.pin_to_top,
            "desktop_notifications": self.desktop_notifications,
            "audible_notifications": self.audible_notifications,
            "push_notifications": self.push_notifications,
            "email_notifications": self.email_notifications,
            "wildcard_mentions_notify": self.wildcard_mentions_notify,
        }


# The `Subscription` columns behind `SubscriptionSettings`, in its fields' order.
SUBSCRIPTION_SETTING_COLUMNS = tuple(field.name for field in fields(SubscriptionSettings))
DEFAULT_SUBSCRIPTION_SETTINGS = SubscriptionSettings()


def subscription_to_api(
    stream: Stream,
    subscribers: Collection[int] | None,
    settings: SubscriptionSettings = DEFAULT_SUBSCRIPTION_SETTINGS,
) -> dict[str, Any]:
    """A `Subscription`: the channel plus the user's own settings for it, and its
    subscribers if given (`subscriptions`, `unsubscribed`, `subscription` `add`)."""
    entry = stream_to_api(stream)
    entry.update(settings.to_api())
    if subscribers is not None:
        entry["subscribers"] = sorted(subscribers)
    return entry


# -- events -------------------------------------------------------------------------------
# The envelopes without the per-queue `id`, which the queue adds at delivery.


def realm_user_add_event(user: UserProfile) -> dict[str, Any]:
    """`realm_user` `add`: a user joined the realm."""
    return {"type": "realm_user", "op": "add", "person": user_to_api(user)}


def realm_user_active_event(user_id: int, is_active: bool) -> dict[str, Any]:
    """`realm_user` `update` of the deactivation form: `{user_id, is_active}`."""
    return {
        "type": "realm_user",
        "op": "update",
        "person": {"user_id": user_id, "is_active": is_active},
    }


def stream_create_event(streams: Iterable[Stream]) -> dict[str, Any]:
    """`stream` `create`: channels the recipients can now see."""
    return {"type": "stream", "op": "create", "streams": [stream_to_api(s) for s in streams]}


def stream_delete_event(streams: Iterable[Stream]) -> dict[str, Any]:
    """`stream` `delete`: channels the recipients can no longer see.

    `stream_ids` since Zulip feature level 343; `streams` kept for older clients in the
    form Zulip documents for it since then, objects holding only `stream_id`.
    """
    ids = [s.id for s in streams]
    return {
        "type": "stream",
        "op": "delete",
        "streams": [{"stream_id": stream_id} for stream_id in ids],
        "stream_ids": ids,
    }


def subscription_add_event(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """`subscription` `add`: `entries` are `subscription_to_api` objects."""
    return {"type": "subscription", "op": "add", "subscriptions": entries}


def subscription_remove_event(streams: Iterable[Stream]) -> dict[str, Any]:
    """`subscription` `remove`: the recipient left these channels."""
    return {
        "type": "subscription",
        "op": "remove",
        "subscriptions": [{"name": s.name, "stream_id": s.id} for s in streams],
    }


def subscription_update_event(stream_id: int, prop: str, value: str | bool) -> dict[str, Any]:
    """`subscription` `update`: one of the recipient's own settings of a channel changed."""
    return {
        "type": "subscription",
        "op": "update",
        "stream_id": stream_id,
        "property": prop,
        "value": value,
    }


def subscription_peer_event(
    op: Literal["peer_add", "peer_remove"], stream_ids: Iterable[int], user_ids: Iterable[int]
) -> dict[str, Any]:
    """`subscription` `peer_add` / `peer_remove`: other users joined or left channels."""
    return {
        "type": "subscription",
        "op": op,
        "stream_ids": sorted(set(stream_ids)),
        "user_ids": sorted(set(user_ids)),
    }
