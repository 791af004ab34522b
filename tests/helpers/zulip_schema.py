"""Zulip's documented wire shapes as JSON Schemas, to check eventq's answers against.

Written from the facts of Zulip's API documentation (`zerver/openapi/zulip.yaml`, the
version documenting feature level 377 and just after): field names, types, which
fields may be null, and which objects allow no other fields. They cover exactly the
endpoints and event types eventq serves; anything else fails as undocumented.

"Required" here is stricter than Zulip's document, which marks few fields required: a
field is required when Zulip's document requires it, or documents it as always present,
or is a field clients read that the conformance issue names (the channel group settings,
`topics_policy`, `stream_ids`, the current user's own keys). Objects Zulip closes with
`additionalProperties: false` are closed here too, so an undocumented field fails.

Message shapes live in `tests.helpers.zulip_messages`, which adds them to the tables here
(`install()`); `tests.helpers.openapi` imports it, so every check has them.

`check(schema, instance, what)` raises AssertionError naming the failing field;
`check_answer(method, template, status, body)` picks the schema of a documented answer
(`tests.helpers.openapi.validate_response` calls it for every answer of a Zulip
endpoint, so every test that talks HTTP checks conformance too).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from jsonschema.exceptions import best_match  # type: ignore[import-untyped]

Schema = dict[str, Any]

# -- building blocks --------------------------------------------------------------------

INTEGER: Schema = {"type": "integer"}
STRING: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}
ROLE: Schema = {"type": "integer", "enum": [100, 200, 300, 400, 600]}


def nullable(schema: Schema) -> Schema:
    """The same type, or null (Zulip's `nullable: true`)."""
    result = {**schema, "type": [schema["type"], "null"]}
    if "enum" in schema:
        result["enum"] = [*schema["enum"], None]
    return result


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def closed(properties: Mapping[str, Schema], required: Iterable[str] = ()) -> Schema:
    """An object with these properties and no other (`additionalProperties: false`)."""
    needed = list(required)
    missing = set(needed) - set(properties)
    assert not missing, f"required but not described: {missing}"
    return {
        "type": "object",
        "properties": dict(properties),
        "required": needed,
        "additionalProperties": False,
    }


INTEGERS = array(INTEGER)
# A group-setting value: a user group's id, or an anonymous group of users and groups.
GROUP_SETTING_VALUE: Schema = {
    "oneOf": [
        INTEGER,
        closed({"direct_members": INTEGERS, "direct_subgroups": INTEGERS}),
    ]
}
TOPICS_POLICY: Schema = {
    "type": "string",
    "enum": ["inherit", "allow_empty_topic", "disable_empty_topic"],
}
PROFILE_DATA: Schema = {
    "type": "object",
    "additionalProperties": closed({"value": STRING, "rendered_value": STRING}, ["value"]),
}

# -- users ----------------------------------------------------------------------------------

# Zulip's `User` (UserBase with nothing else allowed). Not required: `avatar_url` (left
# out at the server's discretion for `user_avatar_url_field_optional` clients),
# `profile_data` (never for bots), `is_active` (documented as absent in `realm_users`),
# `bot_owner_id` (documented for bots).
USER_PROPERTIES: dict[str, Schema] = {
    "user_id": INTEGER,
    "delivery_email": nullable(STRING),
    "email": STRING,
    "full_name": STRING,
    "date_joined": STRING,
    "is_active": BOOLEAN,
    "is_owner": BOOLEAN,
    "is_admin": BOOLEAN,
    "is_guest": BOOLEAN,
    "is_bot": BOOLEAN,
    "bot_type": nullable({"type": "integer", "enum": [1, 2, 3, 4]}),
    "bot_owner_id": nullable(INTEGER),
    "role": ROLE,
    "timezone": STRING,
    "avatar_url": nullable(STRING),
    "avatar_version": INTEGER,
    "profile_data": PROFILE_DATA,
}
USER = closed(
    USER_PROPERTIES,
    [
        "user_id",
        "delivery_email",
        "email",
        "full_name",
        "date_joined",
        "is_owner",
        "is_admin",
        "is_guest",
        "is_bot",
        "bot_type",
        "role",
        "timezone",
        "avatar_version",
    ],
)

# The current user's own keys of a `register` answer that fetched `realm_user`; all of
# them are "present if realm_user is present in fetch_event_types".
CROSS_REALM_BOT = closed({**USER_PROPERTIES, "is_system_bot": BOOLEAN}, ["user_id", "email"])
OWN_USER_KEYS: dict[str, Schema] = {
    "avatar_source": STRING,
    "avatar_url_medium": STRING,
    "avatar_url": STRING,
    "can_create_streams": BOOLEAN,
    "can_create_public_streams": BOOLEAN,
    "can_create_private_streams": BOOLEAN,
    "can_create_web_public_streams": BOOLEAN,
    "can_subscribe_other_users": BOOLEAN,
    "can_invite_others_to_realm": BOOLEAN,
    "is_admin": BOOLEAN,
    "is_owner": BOOLEAN,
    "is_moderator": BOOLEAN,
    "is_guest": BOOLEAN,
    "user_id": INTEGER,
    "email": STRING,
    "delivery_email": STRING,
    "full_name": STRING,
    "cross_realm_bots": array(CROSS_REALM_BOT),
}

# `GET /users/me` (Zulip's "get own user"); `max_message_id` is deprecated.
OWN_PROFILE_PROPERTIES: dict[str, Schema] = {
    "avatar_url": STRING,
    "avatar_version": INTEGER,
    "email": STRING,
    "full_name": STRING,
    "is_admin": BOOLEAN,
    "is_owner": BOOLEAN,
    "role": ROLE,
    "is_guest": BOOLEAN,
    "is_bot": BOOLEAN,
    "is_active": BOOLEAN,
    "timezone": STRING,
    "date_joined": STRING,
    "max_message_id": INTEGER,
    "user_id": INTEGER,
    "delivery_email": STRING,
    "profile_data": PROFILE_DATA,
}
OWN_PROFILE_REQUIRED = [
    "avatar_url",
    "avatar_version",
    "email",
    "full_name",
    "is_admin",
    "is_owner",
    "role",
    "is_guest",
    "is_bot",
    "is_active",
    "timezone",
    "date_joined",
    "user_id",
    "delivery_email",
]

# -- channels -------------------------------------------------------------------------------

# BasicChannelBase: the fields of a channel wherever one is sent.
CHANNEL_PROPERTIES: dict[str, Schema] = {
    "stream_id": INTEGER,
    "name": STRING,
    "is_archived": BOOLEAN,
    "description": STRING,
    "date_created": INTEGER,
    "creator_id": nullable(INTEGER),
    "invite_only": BOOLEAN,
    "rendered_description": STRING,
    "is_web_public": BOOLEAN,
    "stream_post_policy": {"type": "integer", "enum": [1, 2, 3, 4]},
    "message_retention_days": nullable(INTEGER),
    "history_public_to_subscribers": BOOLEAN,
    "topics_policy": TOPICS_POLICY,
    "first_message_id": nullable(INTEGER),
    "is_recently_active": BOOLEAN,
    "is_announcement_only": BOOLEAN,
    "can_add_subscribers_group": GROUP_SETTING_VALUE,
    "can_remove_subscribers_group": GROUP_SETTING_VALUE,
    "can_administer_channel_group": GROUP_SETTING_VALUE,
    "can_send_message_group": GROUP_SETTING_VALUE,
    "can_subscribe_group": GROUP_SETTING_VALUE,
    "stream_weekly_traffic": nullable(INTEGER),
}
# Zulip's `required` list of BasicChannel (and of GET /streams entries) ...
CHANNEL_REQUIRED_BY_ZULIP = [
    "stream_id",
    "name",
    "is_archived",
    "description",
    "date_created",
    "creator_id",
    "invite_only",
    "rendered_description",
    "is_web_public",
    "stream_post_policy",
    "message_retention_days",
    "history_public_to_subscribers",
    "first_message_id",
    "is_recently_active",
    "is_announcement_only",
    "can_remove_subscribers_group",
    "stream_weekly_traffic",
    "can_subscribe_group",
]
# ... plus the documented settings clients read, which the conformance issue names.
CHANNEL_REQUIRED = [
    *CHANNEL_REQUIRED_BY_ZULIP,
    "topics_policy",
    "can_add_subscribers_group",
    "can_administer_channel_group",
    "can_send_message_group",
]
BASIC_CHANNEL = closed(CHANNEL_PROPERTIES, CHANNEL_REQUIRED)
GET_STREAMS_ENTRY = closed({**CHANNEL_PROPERTIES, "is_default": BOOLEAN}, CHANNEL_REQUIRED)
SUBSCRIBERS = array(INTEGER)

# Zulip's `Subscription`: the channel's fields (but `stream_weekly_traffic`'s own
# description) and the user's own settings for it.
SUBSCRIPTION_PROPERTIES: dict[str, Schema] = {
    **CHANNEL_PROPERTIES,
    "subscribers": SUBSCRIBERS,
    "desktop_notifications": nullable(BOOLEAN),
    "email_notifications": nullable(BOOLEAN),
    "wildcard_mentions_notify": nullable(BOOLEAN),
    "push_notifications": nullable(BOOLEAN),
    "audible_notifications": nullable(BOOLEAN),
    "pin_to_top": BOOLEAN,
    "is_muted": BOOLEAN,
    "in_home_view": BOOLEAN,
    "color": STRING,
}
SUBSCRIPTION_REQUIRED = [
    *CHANNEL_REQUIRED,
    "desktop_notifications",
    "email_notifications",
    "wildcard_mentions_notify",
    "push_notifications",
    "audible_notifications",
    "pin_to_top",
    "is_muted",
    "in_home_view",
    "color",
]


def subscription(subscribers: bool | None = None) -> Schema:
    """A `Subscription`; `subscribers` True: required, False: absent, None: either."""
    return _with_subscribers(closed(SUBSCRIPTION_PROPERTIES, SUBSCRIPTION_REQUIRED), subscribers)


def never_subscribed(subscribers: bool | None = None) -> Schema:
    """A `never_subscribed` entry: BasicChannelBase fields and, if asked for, subscribers."""
    schema = closed({**CHANNEL_PROPERTIES, "subscribers": SUBSCRIBERS}, CHANNEL_REQUIRED)
    return _with_subscribers(schema, subscribers)


def _with_subscribers(schema: Schema, subscribers: bool | None) -> Schema:
    if subscribers is True:
        return {**schema, "required": [*schema["required"], "subscribers"]}
    if subscribers is False:
        properties = {k: v for k, v in schema["properties"].items() if k != "subscribers"}
        return {**schema, "properties": properties}
    return schema


# -- events ---------------------------------------------------------------------------------


def event(kind: str, op: str | None, payload: Mapping[str, Schema]) -> Schema:
    """One event as delivered: `id`, `type`, `op` (if the type has ops) and its payload."""
    properties: dict[str, Schema] = {"id": INTEGER, "type": {"const": kind}}
    if op is not None:
        properties["op"] = {"const": op}
    properties.update(payload)
    return closed(properties, list(properties))


def _person_update(field: str, schema: Schema) -> Schema:
    return closed({"user_id": INTEGER, field: schema}, ["user_id", field])


# realm_user update: one of the documented forms, each naming one change.
PERSON_UPDATE: Schema = {
    "oneOf": [
        _person_update("full_name", STRING),
        _person_update("role", ROLE),
        _person_update("delivery_email", nullable(STRING)),
        _person_update("new_email", STRING),
        _person_update("timezone", STRING),
        _person_update("is_active", BOOLEAN),
    ]
}
STREAM_DELETE_ENTRY = closed({"stream_id": INTEGER}, ["stream_id"])
# typing start/stop: `sender` and each of `recipients` is `{user_id, email}`; a direct
# message's event lists the recipients (the sender among them), a channel's names the
# channel and topic instead.
TYPING_USER = closed({"user_id": INTEGER, "email": STRING}, ["user_id", "email"])


def _typing(op: str) -> Schema:
    return {
        "oneOf": [
            event(
                "typing",
                op,
                {
                    "message_type": {"const": "direct"},
                    "sender": TYPING_USER,
                    "recipients": array(TYPING_USER),
                },
            ),
            event(
                "typing",
                op,
                {
                    "message_type": {"const": "stream"},
                    "sender": TYPING_USER,
                    "stream_id": INTEGER,
                    "topic": STRING,
                },
            ),
        ]
    }


# -- message flags: update_message_flags, unread_msgs, starred_messages --
# `message_details` of a `remove` of `read`: each message's conversation; `mentioned`
# only when it mentions the user; `unmuted_stream_msg` is deprecated but allowed.
MESSAGE_DETAILS_ENTRY: Schema = {
    **closed(
        {
            "type": {"type": "string", "enum": ["private", "stream"]},
            "mentioned": BOOLEAN,
            "user_ids": INTEGERS,
            "stream_id": INTEGER,
            "topic": STRING,
            "unmuted_stream_msg": BOOLEAN,
        },
        ["type"],
    ),
    "allOf": [
        {
            "if": {"properties": {"type": {"const": "stream"}}},
            "then": {"required": ["stream_id", "topic"], "not": {"required": ["user_ids"]}},
            "else": {"required": ["user_ids"], "not": {"required": ["stream_id"]}},
        }
    ],
}


def _flags_event(op: str) -> Schema:
    payload: dict[str, Schema] = {
        "operation": {"const": op},
        "flag": STRING,
        "messages": INTEGERS,
        "all": BOOLEAN,
    }
    schema = event("update_message_flags", op, payload)
    if op == "remove":
        schema["properties"]["message_details"] = {
            "type": "object",
            "additionalProperties": MESSAGE_DETAILS_ENTRY,
        }
        # Zulip: present only if the flag is `read`.
        schema["allOf"] = [
            {
                "if": {"properties": {"flag": {"const": "read"}}},
                "then": {"required": ["message_details"]},
                "else": {"not": {"required": ["message_details"]}},
            }
        ]
    return schema


UNREAD_IDS = INTEGERS
UNREAD_MSGS = closed(
    {
        "count": INTEGER,
        "pms": array(
            closed(
                {"other_user_id": INTEGER, "sender_id": INTEGER, "unread_message_ids": UNREAD_IDS},
                ["other_user_id", "unread_message_ids"],
            )
        ),
        "streams": array(
            closed(
                {"topic": STRING, "stream_id": INTEGER, "unread_message_ids": UNREAD_IDS},
                ["topic", "stream_id", "unread_message_ids"],
            )
        ),
        "huddles": array(
            closed(
                {"user_ids_string": STRING, "unread_message_ids": UNREAD_IDS},
                ["user_ids_string", "unread_message_ids"],
            )
        ),
        "mentions": INTEGERS,
        "old_unreads_missing": BOOLEAN,
    },
    ["count", "pms", "streams", "huddles", "mentions", "old_unreads_missing"],
)
# The per-user message state of a register, by the fetch types that select it: Zulip's
# `unread_msgs` needs both `message` and `update_message_flags`.
MESSAGE_STATE: dict[frozenset[str], dict[str, Schema]] = {
    frozenset({"message", "update_message_flags"}): {"unread_msgs": UNREAD_MSGS},
    frozenset({"starred_messages"}): {"starred_messages": INTEGERS},
}

# -- presence -------------------------------------------------------------------------------

NUMBER: Schema = {"type": "number"}
PRESENCE_STATUS: Schema = {"type": "string", "enum": ["idle", "active"]}
# Zulip's `ModernPresenceFormat` (keyed by user id); eventq always sends both times.
MODERN_PRESENCE = closed(
    {"active_timestamp": INTEGER, "idle_timestamp": INTEGER},
    ["active_timestamp", "idle_timestamp"],
)
# Zulip's `LegacyPresenceFormat`: the one client's entry (`website` since level 178), and
# the same without `pushable` as `aggregated`.
LEGACY_CLIENT_PRESENCE = closed(
    {"client": STRING, "status": PRESENCE_STATUS, "timestamp": INTEGER, "pushable": BOOLEAN},
    ["client", "status", "timestamp", "pushable"],
)
LEGACY_AGGREGATED_PRESENCE = closed(
    {"client": STRING, "status": PRESENCE_STATUS, "timestamp": INTEGER, "pushable": BOOLEAN},
    ["client", "status", "timestamp"],
)
# Keyed by email: since level 178 exactly these two keys.
LEGACY_USER_PRESENCE = closed(
    {"aggregated": LEGACY_AGGREGATED_PRESENCE, "website": LEGACY_CLIENT_PRESENCE},
    ["aggregated", "website"],
)
PRESENCES: Schema = {
    "type": "object",
    "additionalProperties": {"oneOf": [MODERN_PRESENCE, LEGACY_USER_PRESENCE]},
}
PRESENCE_STATE: dict[str, Schema] = {
    "presences": PRESENCES,
    "presence_last_update_id": INTEGER,
    "server_timestamp": NUMBER,
}
PRESENCE_EVENT = event(
    "presence",
    None,
    {
        "user_id": INTEGER,
        "email": STRING,
        "server_timestamp": NUMBER,
        "presence": closed({"website": LEGACY_CLIENT_PRESENCE}, ["website"]),
    },
)
# `GET /users/{user_id_or_email}/presence`: each entry's status and time only, the
# aggregated status `offline` when it is old.
USER_PRESENCE_ENTRY = closed({"status": STRING, "timestamp": INTEGER}, ["status", "timestamp"])

EVENTS: dict[tuple[str, str | None], Schema] = {
    ("heartbeat", None): event("heartbeat", None, {}),
    ("realm_user", "add"): event("realm_user", "add", {"person": USER}),
    ("realm_user", "update"): event("realm_user", "update", {"person": PERSON_UPDATE}),
    ("realm_user", "remove"): event(
        "realm_user",
        "remove",
        {"person": closed({"user_id": INTEGER, "full_name": STRING}, ["user_id"])},
    ),
    ("stream", "create"): event("stream", "create", {"streams": array(BASIC_CHANNEL)}),
    # Since feature level 343: `stream_ids`, with `streams` holding only ids.
    ("stream", "delete"): event(
        "stream", "delete", {"streams": array(STREAM_DELETE_ENTRY), "stream_ids": INTEGERS}
    ),
    # Zulip sends the subscriber lists in `add` events whatever `include_subscribers` was.
    ("subscription", "add"): event("subscription", "add", {"subscriptions": array(subscription())}),
    ("subscription", "remove"): event(
        "subscription",
        "remove",
        {"subscriptions": array(closed({"stream_id": INTEGER, "name": STRING}, ["stream_id"]))},
    ),
    ("subscription", "peer_add"): event(
        "subscription", "peer_add", {"stream_ids": INTEGERS, "user_ids": INTEGERS}
    ),
    ("subscription", "peer_remove"): event(
        "subscription", "peer_remove", {"stream_ids": INTEGERS, "user_ids": INTEGERS}
    ),
    # One of the user's own settings of a channel; `value` is Zulip's integer, boolean or
    # string.
    ("subscription", "update"): event(
        "subscription",
        "update",
        {
            "stream_id": INTEGER,
            "property": STRING,
            "value": {"oneOf": [INTEGER, BOOLEAN, STRING]},
        },
    ),
    ("update_message_flags", "add"): _flags_event("add"),
    ("update_message_flags", "remove"): _flags_event("remove"),
    ("typing", "start"): _typing("start"),
    ("typing", "stop"): _typing("stop"),
    ("presence", None): PRESENCE_EVENT,
}

# -- answers ----------------------------------------------------------------------------------


def success(properties: Mapping[str, Schema], required: Iterable[str] = ()) -> Schema:
    """A success answer: `result`, `msg`, optionally `ignored_parameters_unsupported`."""
    base: dict[str, Schema] = {
        "result": {"const": "success"},
        "msg": STRING,
        "ignored_parameters_unsupported": array(STRING),
    }
    return closed({**base, **properties}, ["result", "msg", *required])


VERSION_KEYS: dict[str, Schema] = {
    "zulip_feature_level": INTEGER,
    "zulip_version": STRING,
    "zulip_merge_base": STRING,
}
EXTERNAL_AUTHENTICATION_METHOD = closed(
    {
        "name": STRING,
        "display_name": STRING,
        "display_icon": nullable(STRING),
        "login_url": STRING,
        "signup_url": STRING,
    }
)
AUTHENTICATION_METHODS = closed(
    {
        name: BOOLEAN
        for name in (
            "password",
            "dev",
            "email",
            "ldap",
            "remoteuser",
            "github",
            "azuread",
            "gitlab",
            "apple",
            "google",
            "saml",
            "openid connect",
        )
    }
)
SERVER_SETTINGS = success(
    {
        **VERSION_KEYS,
        "authentication_methods": AUTHENTICATION_METHODS,
        "external_authentication_methods": array(EXTERNAL_AUTHENTICATION_METHOD),
        "push_notifications_enabled": BOOLEAN,
        "is_incompatible": BOOLEAN,
        "email_auth_enabled": BOOLEAN,
        "require_email_format_usernames": BOOLEAN,
        "realm_uri": STRING,
        "realm_url": STRING,
        "realm_name": STRING,
        "realm_icon": STRING,
        "realm_description": STRING,
        "realm_web_public_access_enabled": BOOLEAN,
    },
    [
        *VERSION_KEYS,
        "authentication_methods",
        "external_authentication_methods",
        "push_notifications_enabled",
        "is_incompatible",
        "email_auth_enabled",
        "require_email_format_usernames",
    ],
)


def register(
    fetched: Iterable[str] | None = None,
    include_subscribers: bool | None = None,
    *,
    complete: bool = False,
) -> Schema:
    """A `register` answer holding the state of `fetched` event types.

    `fetched` None accepts any of eventq's state types, with what belongs together
    required together (the current user's keys with `realm_users`, say); a set requires
    exactly those types' keys and refuses the others. The keys of
    `tests.helpers.zulip_register_schema` (the realm's settings, `max_message_id`, ...)
    are allowed with their types, and required too with `complete`: a state read without
    them (`models.state.fetch_initial_state` without `register_keys`) is checked without.
    `include_subscribers` as in `subscription`. The same arguments give the same
    (shared, not to be changed) schema.
    """
    frozen = None if fetched is None else frozenset(fetched)
    return _register(frozen, include_subscribers, complete)


@cache
def _register(
    fetched: frozenset[str] | None, include_subscribers: bool | None, complete: bool = False
) -> Schema:
    properties: dict[str, Schema] = {"queue_id": nullable(STRING), "last_event_id": INTEGER}
    properties.update(VERSION_KEYS)
    required = list(properties)
    kinds = (
        {"realm_user", "subscription", "stream", "realm", "presence"}
        if fetched is None
        else set(fetched)
    )
    groups: dict[str, dict[str, Schema]] = {
        "realm_user": {
            "realm_users": array(USER),
            "realm_non_active_users": array(USER),
            **OWN_USER_KEYS,
        },
        "subscription": {
            "subscriptions": array(subscription(include_subscribers)),
            "unsubscribed": array(subscription(include_subscribers)),
            "never_subscribed": array(never_subscribed(include_subscribers)),
        },
        "stream": {"streams": array(BASIC_CHANNEL)},
        # Of Zulip's `realm` state, the typing protocol's periods (eventq serves no other).
        "realm": {
            "server_typing_started_expiry_period_milliseconds": INTEGER,
            "server_typing_stopped_wait_period_milliseconds": INTEGER,
            "server_typing_started_wait_period_milliseconds": INTEGER,
        },
        "presence": PRESENCE_STATE,
    }
    dependent: dict[str, list[str]] = {}
    for kind in sorted(kinds & set(groups)):
        keys = groups[kind]
        properties.update(keys)
        if fetched is not None:
            required += list(keys)
        else:
            for key in keys:
                dependent[key] = [other for other in keys if other != key]
    for selecting, keys in MESSAGE_STATE.items():
        # Any register may hold it when `fetched` is None; else exactly when selected.
        if fetched is None or selecting <= fetched:
            properties.update(keys)
            if fetched is not None:
                required += list(keys)
    # Every other fetch type's keys (`models.register_keys`); imported here, as that
    # module builds on this one's building blocks.
    from tests.helpers import zulip_register_schema

    if fetched is None:
        properties.update(zulip_register_schema.every_key())
    else:
        # The legacy settings are allowed, not required: they depend on a capability.
        properties.update(zulip_register_schema.selected(fetched))
        if "realm" in fetched:
            properties.update(
                {
                    key: zulip_register_schema.REALM_KEYS[key]
                    for key in zulip_register_schema.ADDRESS_KEYS
                }
            )
        selected = zulip_register_schema.selected(fetched, user_settings_object=True)
        properties.update(selected)
        if complete:
            required += [key for key in selected if key not in required]
    schema = success(properties, required)
    if dependent:
        schema["dependentRequired"] = dependent
    return schema


OWN_PROFILE = success(OWN_PROFILE_PROPERTIES, OWN_PROFILE_REQUIRED)

# The 200 answer of every Zulip endpoint eventq serves, by (method, templated path).
ANSWERS: dict[tuple[str, str], Schema] = {
    ("GET", "/server_settings"): SERVER_SETTINGS,
    ("POST", "/messages/flags"): success(
        {"messages": INTEGERS, "ignored_because_not_subscribed_channels": INTEGERS}, ["messages"]
    ),
    ("POST", "/messages/flags/narrow"): success(
        {
            "processed_count": INTEGER,
            "updated_count": INTEGER,
            "first_processed_id": nullable(INTEGER),
            "last_processed_id": nullable(INTEGER),
            "found_oldest": BOOLEAN,
            "found_newest": BOOLEAN,
            "ignored_because_not_subscribed_channels": INTEGERS,
        },
        [
            "processed_count",
            "updated_count",
            "first_processed_id",
            "last_processed_id",
            "found_oldest",
            "found_newest",
        ],
    ),
    ("GET", "/users/me/{stream_id}/topics"): success(
        {"topics": array(closed({"name": STRING, "max_id": INTEGER}, ["name", "max_id"]))},
        ["topics"],
    ),
    # Zulip's `POST /messages/render`, `GET /realm/emoji` (custom emoji by id; eventq
    # has none) and `GET /users/me/alert_words`.
    ("POST", "/messages/render"): success({"rendered": STRING}, ["rendered"]),
    ("GET", "/realm/emoji"): success(
        {"emoji": {"type": "object", "additionalProperties": {"type": "object"}}}, ["emoji"]
    ),
    ("GET", "/users/me/alert_words"): success({"alert_words": array(STRING)}, ["alert_words"]),
    ("POST", "/register"): register(),
    # Each event is checked against the schema of its kind (`check_event`), which names
    # the failing field where a oneOf over every kind could not.
    ("GET", "/events"): success(
        {"events": array({"type": "object"}), "queue_id": STRING}, ["events"]
    ),
    ("DELETE", "/events"): success({}),
    ("GET", "/users"): success({"members": array(USER)}, ["members"]),
    ("POST", "/users"): success({"user_id": INTEGER}, ["user_id"]),
    ("GET", "/users/me"): OWN_PROFILE,
    ("GET", "/users/{user_id}"): success({"user": USER}, ["user"]),
    ("DELETE", "/users/{user_id}"): success({}),
    ("POST", "/users/{user_id}/reactivate"): success({}),
    ("GET", "/streams"): success({"streams": array(GET_STREAMS_ENTRY)}, ["streams"]),
    ("GET", "/get_stream_id"): success({"stream_id": INTEGER}, ["stream_id"]),
    ("GET", "/streams/{stream_id}/members"): success({"subscribers": INTEGERS}, ["subscribers"]),
    ("GET", "/users/me/subscriptions"): success(
        {"subscriptions": array(subscription())}, ["subscriptions"]
    ),
    ("POST", "/users/me/subscriptions"): success(
        {
            "subscribed": {"type": "object", "additionalProperties": array(STRING)},
            "already_subscribed": {"type": "object", "additionalProperties": array(STRING)},
            "unauthorized": array(STRING),
        },
        ["subscribed", "already_subscribed"],
    ),
    ("POST", "/users/me/subscriptions/properties"): success({}),
    ("DELETE", "/users/me/subscriptions"): success(
        {"removed": array(STRING), "not_removed": array(STRING)}, ["removed", "not_removed"]
    ),
    ("POST", "/typing"): success({}),
    # With `ping_only` none of the three; else all three.
    ("POST", "/users/me/presence"): {
        **success({**PRESENCE_STATE, "zephyr_mirror_active": BOOLEAN}),
        "dependentRequired": {
            key: [other for other in PRESENCE_STATE if other != key] for key in PRESENCE_STATE
        },
    },
    ("GET", "/realm/presence"): success(
        {
            "server_timestamp": NUMBER,
            "presences": {"type": "object", "additionalProperties": LEGACY_USER_PRESENCE},
        },
        ["server_timestamp", "presences"],
    ),
    ("GET", "/users/{user_id_or_email}/presence"): success(
        {
            "presence": closed(
                {"aggregated": USER_PRESENCE_ENTRY, "website": USER_PRESENCE_ENTRY},
                ["aggregated", "website"],
            )
        },
        ["presence"],
    ),
}

# An error answer: Zulip's CodedError, with the extra field its documented kinds carry.
ERROR: Schema = {
    **closed(
        {
            "result": {"const": "error"},
            "msg": STRING,
            "code": STRING,
            "queue_id": STRING,
            "var_name": STRING,
            "stream": STRING,
            "stream_id": INTEGER,
            "retry-after": {"type": "number"},
        },
        ["result", "msg", "code"],
    ),
    "allOf": [
        {
            "if": {"properties": {"code": {"const": "BAD_EVENT_QUEUE_ID"}}},
            "then": {"required": ["queue_id"]},
        },
        {
            "if": {"properties": {"code": {"const": "REQUEST_VARIABLE_MISSING"}}},
            "then": {"required": ["var_name"]},
        },
    ],
}

# -- checking ---------------------------------------------------------------------------------

# Compiled validators by schema identity; the schema is kept alive with its validator,
# so an id is never reused for another schema while cached.
_validators: dict[int, tuple[Schema, Any]] = {}


def _validator(schema: Schema) -> Any:
    cached = _validators.get(id(schema))
    if cached is None or cached[0] is not schema:
        Draft202012Validator.check_schema(schema)
        cached = _validators[id(schema)] = (schema, Draft202012Validator(schema))
    return cached[1]


def errors(schema: Schema, instance: object) -> list[str]:
    """Every violation of `schema` by `instance`, as readable lines (empty: conforms)."""
    found = []
    for error in _validator(schema).iter_errors(instance):
        deepest = best_match([error])
        found.append(f"at {deepest.json_path}: {deepest.message}")
    return found


def check(schema: Schema, instance: object, what: str) -> None:
    """Assert `instance` conforms to `schema`, naming the first violations."""
    problems = errors(schema, instance)
    if problems:
        shown = json.dumps(instance, sort_keys=True, default=repr)
        if len(shown) > 1500:
            shown = shown[:1500] + "..."
        raise AssertionError(
            f"{what} does not match Zulip's documented shape:\n  "
            + "\n  ".join(problems[:10])
            + f"\n  body: {shown}"
        )


def check_event(delivered: Mapping[str, Any]) -> None:
    """Assert one delivered event (with its `id`) is a documented event of its kind."""
    kind, op = delivered.get("type"), delivered.get("op")
    key = (str(kind), None if op is None else str(op))
    schema = EVENTS.get(key)
    if schema is None or not isinstance(kind, str):
        raise AssertionError(f"event {key} is not an event type eventq serves: {delivered}")
    check(schema, delivered, f"event {key[0]}/{key[1]}")


def is_zulip_endpoint(method: str, template: str) -> bool:
    """Whether the templated path is one of Zulip's endpoints (not one of eventq's own)."""
    return (method.upper(), template) in ANSWERS


def check_answer(method: str, template: str, status: int, body: object) -> None:
    """Assert an answer of a Zulip endpoint (`template`: `/users/{user_id}`, say) has
    Zulip's documented shape.

    Successes are checked against the endpoint's schema (`register` against any valid
    combination of fetched state; see `register` for an exact check), errors against
    Zulip's error shape. Events inside a `GET /events` answer are checked by kind.
    """
    assert is_zulip_endpoint(method, template), f"{method} {template} is not a Zulip endpoint"
    what = f"{method.upper()} {template} -> {status}"
    if status != 200:
        check(ERROR, body, what)
        return
    check(ANSWERS[(method.upper(), template)], body, what)
    if template == "/events" and isinstance(body, dict):
        for delivered in body.get("events", []):
            check_event(delivered)
