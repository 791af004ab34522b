"""The `register` state keys beyond users, channels, subscriptions, presence and the
user's unread and starred messages: every other `fetch_event_types` value Zulip
documents at feature level 377, in Zulip's shapes.

This module owns:

* `KNOWN_EVENT_TYPES`, the names a register may list in `event_types` or
  `fetch_event_types` (`check_event_types` refuses any other): Zulip's, and eventq's
  probe type (`PROBE_EVENT_TYPE`); and the types whose state is built here
  (`REGISTER_KEY_EVENT_TYPES`);
* the realm-wide keys (`realm_wide_state`): the `realm` settings and server limits,
  `user_settings` and the legacy per-setting keys, the empty lists of features eventq
  does not have, and `realm_user_groups` with Zulip's eight system groups, whose
  members follow the users' roles (`system_user_groups`);
* the user's own keys read per register (`own_message_keys`): `max_message_id` and
  `recent_private_conversations`.

The realm-wide values depend on nothing but the realm's name and creation time, the
server's address and the realm's users (for the groups), so a register builds them from
the constants here and the realm state it shares with other registers
(`server.engine.registration`); nothing here is read per register but the user's own
message keys.

Kept current by events, or not: no eventq action changes the constants. Zulip documents
`max_message_id` and `recent_private_conversations` as of the register (clients follow
`message` events themselves), and eventq sends no `user_group` events, so the system
groups' `members` are as of the register too (`AS_OF_REGISTER_KEYS`): a client removes a
deactivated user from every group itself, as Zulip asks, but learns of a user created or
reactivated later only at its next register (Zulip sends `add_members`).

Where eventq has no concept behind a field, the value states what eventq does (the
table in docs/api.md): no custom emoji, linkifiers, playgrounds, drafts, snippets,
scheduled messages, alert words, muted users or topics, user statuses, custom profile
fields, default channels, invitations, uploads, video calls, GIPHY, e-mail or push
notifications.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import UTC
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import realm_settings
from models.messages.recipients import RECIPIENT_DIRECT
from models.messages.unreads import AnySelect, newest_rows_per_user
from models.presence import OFFLINE_THRESHOLD_SECS, PRESENCE_PING_INTERVAL_SECS
from models.tables import (
    MAX_MESSAGE_LENGTH,
    MAX_STREAM_DESCRIPTION_LENGTH,
    MAX_STREAM_NAME_LENGTH,
    MAX_TOPIC_NAME_LENGTH,
    Message,
    Realm,
    Recipient,
    Role,
    UserMessage,
    UserProfile,
)
from models.wire import gravatar_url

# -- event types ---------------------------------------------------------------------------

# Every event type Zulip sends (GET /events), as of feature level 377 and the types
# newer Zulip servers added since (`channel_folder`, `navigation_view`, `reminders`,
# `push_device`): a client written for a newer server lists those, and a server at 377
# accepts them without state, as Zulip accepts what it does not send.
EVENT_TYPES: Final = frozenset(
    {
        "alert_words",
        "attachment",
        "channel_folder",
        "custom_profile_fields",
        "default_stream_groups",
        "default_streams",
        "delete_message",
        "drafts",
        "has_zoom_token",
        "heartbeat",
        "hotspots",
        "invites_changed",
        "message",
        "muted_topics",
        "muted_users",
        "navigation_view",
        "onboarding_steps",
        "presence",
        "push_device",
        "reaction",
        "realm",
        "realm_bot",
        "realm_domains",
        "realm_emoji",
        "realm_export",
        "realm_export_consent",
        "realm_filters",
        "realm_linkifiers",
        "realm_playgrounds",
        "realm_user",
        "realm_user_settings_defaults",
        "reminders",
        "restart",
        "saved_snippets",
        "scheduled_messages",
        "stream",
        "submessage",
        "subscription",
        "typing",
        "typing_edit_message",
        "update_display_settings",
        "update_global_notifications",
        "update_message",
        "update_message_flags",
        "user_group",
        "user_settings",
        "user_status",
        "user_topic",
        "web_reload_client",
    }
)
# Names that select state only (POST /register's "Present if `X` is present in
# fetch_event_types"); `zulip_version` selected the version keys before feature level 3
# and is still sent by clients (zulip-terminal), who now get them with every answer.
FETCH_ONLY_TYPES: Final = frozenset(
    {
        "channel_folders",
        "giphy",
        "navigation_views",
        "realm_embedded_bots",
        "realm_incoming_webhook_bots",
        "realm_user_groups",
        "recent_private_conversations",
        "starred_messages",
        "stop_words",
        "video_calls",
        "zulip_version",
    }
)
# eventq's own event type: the monitoring probe's round trip (`server.ops.probe`), which
# only the probe bot's queue asks for.
PROBE_EVENT_TYPE: Final = "eventq_probe"
KNOWN_EVENT_TYPES: Final = EVENT_TYPES | FETCH_ONLY_TYPES | {PROBE_EVENT_TYPE}

USER_GROUPS_TYPE: Final = "realm_user_groups"
# The per-user message keys of this module (`own_message_keys`).
OWN_MESSAGE_TYPES: Final = frozenset({"message", "recent_private_conversations"})

# Keys Zulip documents as of the register, which eventq's actions change without an
# event (see the module): a client's copy and a fresh register may differ in them.
AS_OF_REGISTER_KEYS: Final = frozenset(
    {"max_message_id", "recent_private_conversations", "realm_user_groups"}
)

# -- system groups -----------------------------------------------------------------------

# Zulip's system groups, each (id, name, description, the role whose users are its
# direct members, its direct subgroups). eventq has no other groups, so the ids are
# fixed, the same in every realm (a client scopes them to its realm). A member is a
# full member at once: eventq's waiting period is 0 days (`realm_waiting_period_threshold`).
GROUP_OWNERS, GROUP_ADMINISTRATORS, GROUP_MODERATORS = 1, 2, 3
GROUP_FULL_MEMBERS, GROUP_MEMBERS, GROUP_EVERYONE, GROUP_INTERNET, GROUP_NOBODY = 4, 5, 6, 7, 8


@dataclass(frozen=True, slots=True)
class SystemGroup:
    group_id: int
    name: str
    description: str
    role: Role | None
    subgroups: tuple[int, ...]


SYSTEM_GROUPS: Final = (
    SystemGroup(GROUP_OWNERS, "role:owners", "Owners of this organization", Role.OWNER, ()),
    SystemGroup(
        GROUP_ADMINISTRATORS,
        "role:administrators",
        "Administrators of this organization, including owners",
        Role.ADMINISTRATOR,
        (GROUP_OWNERS,),
    ),
    SystemGroup(
        GROUP_MODERATORS,
        "role:moderators",
        "Moderators of this organization, including administrators",
        Role.MODERATOR,
        (GROUP_ADMINISTRATORS,),
    ),
    SystemGroup(
        GROUP_FULL_MEMBERS,
        "role:fullmembers",
        "Members of this organization, not including new accounts and guests",
        Role.MEMBER,
        (GROUP_MODERATORS,),
    ),
    SystemGroup(
        GROUP_MEMBERS,
        "role:members",
        "Members of this organization, not including guests",
        Role.MEMBER,
        (GROUP_FULL_MEMBERS,),
    ),
    SystemGroup(
        GROUP_EVERYONE,
        "role:everyone",
        "Everyone in this organization, including guests",
        Role.GUEST,
        (GROUP_MEMBERS,),
    ),
    SystemGroup(
        GROUP_INTERNET, "role:internet", "Everyone on the Internet", None, (GROUP_EVERYONE,)
    ),
    SystemGroup(GROUP_NOBODY, "role:nobody", "Nobody", None, ()),
)
# A system group's own permission settings (who may join, leave, manage or mention
# it): nobody, as in Zulip, where system groups cannot be changed by users.
_GROUP_PERMISSION_SETTINGS = (
    "can_add_members_group",
    "can_join_group",
    "can_leave_group",
    "can_manage_group",
    "can_mention_group",
    "can_remove_members_group",
)


def system_user_groups(users: Iterable[UserProfile], date_created: int) -> list[dict[str, Any]]:
    """`realm_user_groups`: Zulip's system groups, each listing its direct members (the
    active users of its role; Zulip lists no deactivated user since feature level 303)
    and its direct subgroups."""
    by_role: dict[int, list[int]] = {}
    for user in users:
        if user.is_active:
            by_role.setdefault(int(user.role), []).append(user.id)
    groups = []
    for group in SYSTEM_GROUPS:
        members = sorted(by_role.get(int(group.role), [])) if group.role is not None else []
        entry: dict[str, Any] = {
            "id": group.group_id,
            "name": group.name,
            "description": group.description,
            "members": members,
            "direct_subgroup_ids": list(group.subgroups),
            "is_system_group": True,
            "date_created": date_created,
            "creator_id": None,
            "deactivated": False,
        }
        for setting in _GROUP_PERMISSION_SETTINGS:
            entry[setting] = GROUP_NOBODY
        groups.append(entry)
    return groups


GROUP_IDS_BY_NAME: Final = {group.name: group.group_id for group in SYSTEM_GROUPS}

# -- the realm -----------------------------------------------------------------------------

# The realm's group-setting permissions, each a system group's id, stating eventq's
# rules (`models.visibility`, `actions`): who may create which channels and subscribe
# others follows roles; what eventq does not have (custom emoji, user groups,
# invitations, billing, topic summaries, bots made by users) is nobody's. The message
# permissions are those the message actions enforce (`models.realm_settings`).
REALM_GROUP_SETTINGS: Final[dict[str, int]] = {
    "realm_can_access_all_users_group": GROUP_EVERYONE,
    "realm_can_add_custom_emoji_group": GROUP_NOBODY,
    "realm_can_add_subscribers_group": GROUP_MEMBERS,
    "realm_can_create_bots_group": GROUP_NOBODY,
    "realm_can_create_groups": GROUP_NOBODY,
    "realm_can_create_private_channel_group": GROUP_MEMBERS,
    "realm_can_create_public_channel_group": GROUP_MEMBERS,
    "realm_can_create_web_public_channel_group": GROUP_ADMINISTRATORS,
    "realm_can_create_write_only_bots_group": GROUP_NOBODY,
    "realm_can_delete_any_message_group": GROUP_IDS_BY_NAME[
        realm_settings.CAN_DELETE_ANY_MESSAGE_GROUP
    ],
    "realm_can_delete_own_message_group": GROUP_IDS_BY_NAME[
        realm_settings.CAN_DELETE_OWN_MESSAGE_GROUP
    ],
    "realm_can_invite_users_group": GROUP_NOBODY,
    "realm_can_manage_all_groups": GROUP_NOBODY,
    "realm_can_manage_billing_group": GROUP_NOBODY,
    "realm_can_mention_many_users_group": GROUP_ADMINISTRATORS,
    "realm_can_move_messages_between_channels_group": GROUP_IDS_BY_NAME[
        realm_settings.CAN_MOVE_MESSAGES_BETWEEN_CHANNELS_GROUP
    ],
    "realm_can_move_messages_between_topics_group": GROUP_IDS_BY_NAME[
        realm_settings.CAN_MOVE_MESSAGES_BETWEEN_TOPICS_GROUP
    ],
    "realm_can_resolve_topics_group": GROUP_IDS_BY_NAME[realm_settings.CAN_RESOLVE_TOPICS_GROUP],
    "realm_can_set_delete_message_policy_group": GROUP_MODERATORS,
    "realm_can_summarize_topics_group": GROUP_NOBODY,
    "realm_create_multiuse_invite_group": GROUP_NOBODY,
    "realm_direct_message_initiator_group": GROUP_EVERYONE,
    "realm_direct_message_permission_group": GROUP_EVERYONE,
}
# Zulip's "no channel" for the realm's announcement channels.
NO_CHANNEL: Final = -1
# Zulip's `message_retention_days` for "retain forever": eventq deletes no messages.
RETAIN_FOREVER: Final = -1
# Zulip's self-hosted plan (`realm_plan_type` 1), `realm_org_type` 0 "unspecified",
# the "disabled" video call provider (0) and GIPHY rating (0).
PLAN_SELF_HOSTED, ORG_TYPE_UNSPECIFIED, VIDEO_CHAT_DISABLED, GIPHY_DISABLED = 1, 0, 0, 0
# A long-poll is answered with a heartbeat within 85 s at most (EVENTQ_HEARTBEAT_SECS):
# a client should wait longer than that before giving up on it.
EVENT_QUEUE_LONGPOLL_TIMEOUT_SECONDS: Final = 90
# Zulip's web app reloads when this changes between registers; eventq serves no copy of
# that app, and its processes (shards, restarts) must answer alike: a fixed 0.
SERVER_GENERATION: Final = 0

# The `realm` keys that are the same in every realm (Zulip's defaults, or what eventq
# does); `realm_state_keys` adds the realm's own and the server's address.
_REALM_CONSTANTS: Final[dict[str, Any]] = {
    # Message editing, moving and deleting: enforced by the message actions.
    "realm_allow_message_editing": realm_settings.ALLOW_MESSAGE_EDITING,
    "realm_message_content_edit_limit_seconds": realm_settings.MESSAGE_CONTENT_EDIT_LIMIT_SECONDS,
    "realm_move_messages_within_stream_limit_seconds": (
        realm_settings.MOVE_MESSAGES_WITHIN_STREAM_LIMIT_SECONDS
    ),
    "realm_move_messages_between_streams_limit_seconds": (
        realm_settings.MOVE_MESSAGES_BETWEEN_STREAMS_LIMIT_SECONDS
    ),
    "realm_message_content_delete_limit_seconds": (
        realm_settings.MESSAGE_CONTENT_DELETE_LIMIT_SECONDS
    ),
    "realm_message_edit_history_visibility_policy": (
        realm_settings.MESSAGE_EDIT_HISTORY_VISIBILITY_POLICY
    ),
    # Replaced by the policy above at feature level 358, and still read by clients
    # written before it (zulip-terminal 0.7.0 fails without it): true while any edit
    # history is shown.
    "realm_allow_edit_history": realm_settings.MESSAGE_EDIT_HISTORY_VISIBILITY_POLICY != "none",
    "realm_message_retention_days": RETAIN_FOREVER,
    "realm_mandatory_topics": False,
    "realm_empty_topic_display_name": "general chat",
    **REALM_GROUP_SETTINGS,
    # The organization's description and identity.
    "realm_description": "",
    "realm_default_language": "en",
    "realm_default_code_block_language": "",
    "realm_org_type": ORG_TYPE_UNSPECIFIED,
    "realm_plan_type": PLAN_SELF_HOSTED,
    "realm_icon_source": "G",
    "realm_logo_source": "D",
    "realm_logo_url": "",
    "realm_night_logo_source": "D",
    "realm_night_logo_url": "",
    "realm_is_zephyr_mirror_realm": False,
    # Who may join and how: only an administrator adds users, with an API key.
    "realm_invite_required": True,
    "realm_emails_restricted_to_domains": False,
    "realm_disallow_disposable_email_addresses": True,
    "realm_waiting_period_threshold": 0,
    "realm_authentication_methods": {},
    "realm_email_auth_enabled": False,
    "realm_password_auth_enabled": False,
    "realm_enable_spectator_access": False,
    "realm_want_advertise_in_communities_directory": False,
    "realm_require_unique_names": False,
    # No profile changes of one's own: eventq has no endpoints for them.
    "realm_name_changes_disabled": True,
    "realm_email_changes_disabled": True,
    "realm_avatar_changes_disabled": True,
    "realm_enable_guest_user_indicator": True,
    "realm_enable_guest_user_dm_warning": True,
    "realm_presence_disabled": False,
    "realm_enable_read_receipts": False,
    # No e-mail, push notifications, previews, video calls or GIPHY.
    "realm_send_welcome_emails": False,
    "realm_digest_emails_enabled": False,
    "realm_digest_weekday": 1,
    "realm_message_content_allowed_in_email_notifications": False,
    "realm_push_notifications_enabled": False,
    "realm_push_notifications_enabled_end_timestamp": None,
    "realm_inline_image_preview": False,
    "realm_inline_url_embed_preview": False,
    "realm_video_chat_provider": VIDEO_CHAT_DISABLED,
    "realm_available_video_chat_providers": {
        "disabled": {"name": "None", "id": VIDEO_CHAT_DISABLED}
    },
    "realm_jitsi_server_url": None,
    "realm_giphy_rating": GIPHY_DISABLED,
    "giphy_rating_options": {
        "disabled": {"name": "GIPHY integration disabled", "id": GIPHY_DISABLED}
    },
    "realm_upload_quota_mib": None,
    "realm_new_stream_announcements_stream_id": NO_CHANNEL,
    "realm_signup_announcements_stream_id": NO_CHANNEL,
    "realm_zulip_update_announcements_stream_id": NO_CHANNEL,
    "realm_moderation_request_channel_id": NO_CHANNEL,
    # The server's limits and protocol.
    "max_message_length": MAX_MESSAGE_LENGTH,
    "max_stream_name_length": MAX_STREAM_NAME_LENGTH,
    "max_stream_description_length": MAX_STREAM_DESCRIPTION_LENGTH,
    "max_topic_length": MAX_TOPIC_NAME_LENGTH,
    "max_avatar_file_size_mib": 0,
    "max_file_upload_size_mib": 0,
    "max_icon_file_size_mib": 0,
    "max_logo_file_size_mib": 0,
    "event_queue_longpoll_timeout_seconds": EVENT_QUEUE_LONGPOLL_TIMEOUT_SECONDS,
    "server_presence_ping_interval_seconds": PRESENCE_PING_INTERVAL_SECS,
    "server_presence_offline_threshold_seconds": OFFLINE_THRESHOLD_SECS,
    "server_generation": SERVER_GENERATION,
    "server_needs_upgrade": False,
    "server_avatar_changes_disabled": True,
    "server_name_changes_disabled": True,
    "server_inline_image_preview": False,
    "server_inline_url_embed_preview": False,
    "server_jitsi_server_url": None,
    "server_web_public_streams_enabled": False,
    "server_can_summarize_topics": False,
    "server_min_deactivated_realm_deletion_days": None,
    "server_thumbnail_formats": [],
    "server_emoji_data_url": "",
    # Metadata for permission-setting UI, which eventq's clients cannot change.
    "server_supported_permission_settings": {"realm": {}, "stream": {}, "group": {}},
    "settings_send_digest_emails": False,
    "password_min_length": 6,
    "password_min_guesses": 10000,
    "demo_organizations_enabled": False,
    "development_environment": False,
    "embedded_bots_enabled": False,
    "zulip_plan_is_not_limited": True,
    "upgrade_text_for_wide_organization_logo": "",
}


@dataclass(frozen=True, slots=True)
class RealmFacts:
    """What the `realm` keys say of one realm: eventq never changes either after the
    realm is created, so a process reads them once."""

    string_id: str
    name: str
    date_created: int


def read_realm_facts(session: Session, realm_id: int) -> RealmFacts | None:
    """The realm's name and creation time (Unix seconds), in the caller's snapshot."""
    realm = session.get(Realm, realm_id)
    if realm is None:
        return None
    created = realm.date_created
    if created.tzinfo is None:  # SQLite returns naive UTC datetimes
        created = created.replace(tzinfo=UTC)
    return RealmFacts(realm.string_id, realm.name, int(created.timestamp()))


# The `realm` keys that name the server's address, which eventq knows only from the
# request: a state read outside one (`models.state.fetch_initial_state` for the REST
# endpoints and the tests) leaves them out, as Zulip's document allows.
ADDRESS_KEYS: Final = ("realm_url", "realm_uri", "realm_bot_domain", "realm_icon_url")


def realm_state_keys(facts: RealmFacts, server_url: str) -> dict[str, Any]:
    """The keys of the `realm` state (see `_REALM_CONSTANTS`); the address keys only
    with `server_url` (see `ADDRESS_KEYS`)."""
    keys = {
        **_REALM_CONSTANTS,
        "realm_name": facts.name,
        "realm_date_created": facts.date_created,
    }
    if server_url:
        host = server_url.split("://", 1)[-1]
        keys["realm_url"] = server_url
        keys["realm_uri"] = server_url  # the name before feature level 257, still documented
        keys["realm_bot_domain"] = host
        keys["realm_icon_url"] = gravatar_url(f"{facts.string_id}@{host}")
    return keys


# -- the user's settings ---------------------------------------------------------------------

EMOJISET_CHOICES: Final = [
    {"key": "google", "text": "Google"},
    {"key": "twitter", "text": "Twitter"},
    {"key": "text", "text": "Plain text"},
]
AVAILABLE_NOTIFICATION_SOUNDS: Final = ["zulip"]
# Zulip's defaults for a new account (`user_settings`), as of feature level 377: eventq
# stores no per-user settings. It sends no e-mail or push notifications, whatever the
# notification settings say; clients use them for their own notifications.
USER_SETTINGS: Final[dict[str, Any]] = {
    "twenty_four_hour_time": False,
    "web_mark_read_on_scroll_policy": 1,
    "web_channel_default_view": 1,
    "starred_message_counts": True,
    "receives_typing_notifications": True,
    "web_suggest_update_timezone": True,
    "fluid_layout_width": False,
    "high_contrast_mode": False,
    "web_font_size_px": 16,
    "web_line_height_percent": 140,
    "color_scheme": 1,
    "translate_emoticons": False,
    "display_emoji_reaction_users": True,
    "default_language": "en",
    "web_home_view": "inbox",
    "web_escape_navigates_to_home_view": True,
    "left_side_userlist": False,
    "emojiset": "google",
    "demote_inactive_streams": 1,
    "user_list_style": 2,
    "web_animate_image_previews": "always",
    "web_stream_unreads_count_display_policy": 2,
    "hide_ai_features": False,
    "timezone": "",
    "enable_stream_desktop_notifications": False,
    "enable_stream_email_notifications": False,
    "enable_stream_push_notifications": False,
    "enable_stream_audible_notifications": False,
    "notification_sound": "zulip",
    "enable_desktop_notifications": True,
    "enable_sounds": True,
    "enable_offline_email_notifications": True,
    "enable_offline_push_notifications": True,
    "enable_online_push_notifications": True,
    "enable_followed_topic_desktop_notifications": True,
    "enable_followed_topic_email_notifications": True,
    "enable_followed_topic_push_notifications": True,
    "enable_followed_topic_audible_notifications": True,
    "enable_followed_topic_wildcard_mentions_notify": True,
    "enable_digest_emails": True,
    "enable_marketing_emails": True,
    "enable_login_emails": True,
    "message_content_in_email_notifications": True,
    "pm_content_in_desktop_notifications": True,
    "wildcard_mentions_notify": True,
    "desktop_icon_count_display": 1,
    "realm_name_in_email_notifications_policy": 1,
    "automatically_follow_topics_policy": 3,
    "automatically_unmute_topics_in_muted_streams_policy": 4,
    "automatically_follow_topics_where_mentioned": True,
    "presence_enabled": True,
    "enter_sends": False,
    "enable_drafts_synchronization": True,
    "email_notifications_batching_period_seconds": 120,
    "available_notification_sounds": AVAILABLE_NOTIFICATION_SOUNDS,
    "emojiset_choices": EMOJISET_CHOICES,
    "send_private_typing_notifications": True,
    "send_stream_typing_notifications": True,
    "send_read_receipts": True,
    "allow_private_data_export": False,
    "email_address_visibility": 1,
    "web_navigate_to_sent_message": True,
}
# The organization's defaults for new users: the same, without what is each user's own.
REALM_USER_SETTINGS_DEFAULTS: Final = {
    key: value for key, value in USER_SETTINGS.items() if key not in ("timezone",)
}
# The legacy top-level copies (before feature level 89), for clients that did not
# declare the `user_settings_object` capability.
DISPLAY_SETTINGS_LEGACY: Final = (
    "color_scheme",
    "default_language",
    "demote_inactive_streams",
    "emojiset",
    "enable_drafts_synchronization",
    "fluid_layout_width",
    "web_home_view",
    "high_contrast_mode",
    "left_side_userlist",
    "starred_message_counts",
    "timezone",
    "translate_emoticons",
    "twenty_four_hour_time",
    "enter_sends",
    "emojiset_choices",
)
NOTIFICATION_SETTINGS_LEGACY: Final = (
    "enable_desktop_notifications",
    "enable_digest_emails",
    "enable_login_emails",
    "enable_marketing_emails",
    "email_notifications_batching_period_seconds",
    "enable_offline_email_notifications",
    "enable_offline_push_notifications",
    "enable_online_push_notifications",
    "enable_sounds",
    "enable_stream_desktop_notifications",
    "enable_stream_email_notifications",
    "enable_stream_push_notifications",
    "enable_stream_audible_notifications",
    "wildcard_mentions_notify",
    "message_content_in_email_notifications",
    "notification_sound",
    "pm_content_in_desktop_notifications",
    "desktop_icon_count_display",
    "realm_name_in_email_notifications_policy",
    "presence_enabled",
    "available_notification_sounds",
)

# Zulip's custom profile field types, for clients with field-editing UI.
CUSTOM_PROFILE_FIELD_TYPES: Final = {
    name: {"id": type_id, "name": label}
    for type_id, name, label in (
        (1, "SHORT_TEXT", "Text (short)"),
        (2, "LONG_TEXT", "Text (long)"),
        (3, "SELECT", "List of options"),
        (4, "DATE", "Date picker"),
        (5, "URL", "Link"),
        (6, "USER", "Users"),
        (7, "EXTERNAL_ACCOUNT", "External account"),
        (8, "PRONOUNS", "Pronouns"),
    )
}

# The state of each fetch type whose keys are fixed: what eventq does not have. Each
# call copies nothing: answers are serialized, never changed (`models.state`).
_FIXED_STATE: Final[dict[str, dict[str, Any]]] = {
    "alert_words": {"alert_words": []},
    "custom_profile_fields": {
        "custom_profile_fields": [],
        "custom_profile_field_types": CUSTOM_PROFILE_FIELD_TYPES,
    },
    "default_stream_groups": {"realm_default_stream_groups": []},
    "default_streams": {"realm_default_streams": []},
    "drafts": {"drafts": []},
    "giphy": {"giphy_api_key": ""},
    "muted_users": {"muted_users": []},
    "onboarding_steps": {"onboarding_steps": [], "navigation_tour_video_url": None},
    "realm_bot": {"realm_bots": []},
    "realm_domains": {"realm_domains": []},
    "realm_embedded_bots": {"realm_embedded_bots": []},
    "realm_emoji": {"realm_emoji": {}},
    "realm_filters": {"realm_filters": []},
    "realm_incoming_webhook_bots": {"realm_incoming_webhook_bots": []},
    "realm_linkifiers": {"realm_linkifiers": []},
    "realm_playgrounds": {"realm_playgrounds": []},
    "realm_user_settings_defaults": {"realm_user_settings_defaults": REALM_USER_SETTINGS_DEFAULTS},
    "saved_snippets": {"saved_snippets": []},
    "scheduled_messages": {"scheduled_messages": []},
    "stop_words": {"stop_words": []},
    "user_settings": {"user_settings": USER_SETTINGS},
    "user_status": {"user_status": {}},
    "user_topic": {"user_topics": []},
    "video_calls": {"has_zoom_token": False},
}
# Every fetch type with keys built here (the per-user ones included).
REGISTER_KEY_EVENT_TYPES: Final = frozenset(
    {
        *_FIXED_STATE,
        "realm",
        "muted_topics",
        "update_display_settings",
        "update_global_notifications",
        USER_GROUPS_TYPE,
        *OWN_MESSAGE_TYPES,
    }
)


def realm_wide_state(
    fetch: Collection[str],
    facts: RealmFacts | None,
    server_url: str,
    *,
    user_settings_object: bool,
    user_groups: Any = None,
) -> dict[str, Any]:
    """The realm-wide keys of a register fetching `fetch`: the same for every user of
    the realm. `facts` is needed with `realm`; `user_groups`, the realm's
    `system_user_groups` or a callable building them (called only when they are asked
    for), with `realm_user_groups`."""
    state: dict[str, Any] = {}
    for kind in fetch:
        fixed = _FIXED_STATE.get(kind)
        if fixed is not None:
            state.update(fixed)
    if "realm" in fetch:
        if facts is None:
            raise ValueError("the realm state needs the realm's facts")
        state.update(realm_state_keys(facts, server_url))
    if "muted_topics" in fetch and "user_topic" not in fetch:
        # Deprecated by `user_topics` (feature level 134): sent only when that is not.
        state["muted_topics"] = []
    if not user_settings_object:
        if "update_display_settings" in fetch:
            state.update({key: USER_SETTINGS[key] for key in DISPLAY_SETTINGS_LEGACY})
        if "update_global_notifications" in fetch:
            state.update({key: USER_SETTINGS[key] for key in NOTIFICATION_SETTINGS_LEGACY})
    if USER_GROUPS_TYPE in fetch:
        state[USER_GROUPS_TYPE] = user_groups() if callable(user_groups) else user_groups
    return state


# -- the user's own message keys ------------------------------------------------------------

# Zulip's bound on `recent_private_conversations`: built from the user's newest 1,000
# direct messages.
MAX_RECENT_DIRECT_MESSAGES = 1000


def wants_own_message_keys(fetch: Collection[str]) -> bool:
    return not OWN_MESSAGE_TYPES.isdisjoint(fetch)


def own_message_keys(session: Session, user_id: int, fetch: Collection[str]) -> dict[str, Any]:
    """`max_message_id` (with `message`) and `recent_private_conversations`, read in the
    caller's snapshot for this user; empty when neither is asked for."""
    return own_message_keys_of(session, [user_id], fetch)[user_id]


def own_message_keys_of(
    session: Session, user_ids: Collection[int], fetch: Collection[str]
) -> dict[int, dict[str, Any]]:
    """`own_message_keys` of each of `user_ids`, in the same statements whatever their
    number (registers arriving together share them: `server.engine.registration`)."""
    states: dict[int, dict[str, Any]] = {user_id: {} for user_id in user_ids}
    if not states:
        return states
    if "message" in fetch:
        newest = {
            int(user_id): int(message_id)
            for user_id, message_id in session.execute(
                select(UserMessage.user_profile_id, func.max(UserMessage.message_id))
                .where(UserMessage.user_profile_id.in_(sorted(states)))
                .group_by(UserMessage.user_profile_id)
            )
        }
        for user_id, state in states.items():
            # -1: Zulip's value for a user who has received no message.
            state["max_message_id"] = int(newest.get(user_id, -1))
    if "recent_private_conversations" in fetch:
        for user_id, conversations in recent_private_conversations_of(session, states).items():
            states[user_id]["recent_private_conversations"] = conversations
    return states


def recent_private_conversations(session: Session, user_id: int) -> list[dict[str, Any]]:
    """Each direct-message conversation among the user's newest
    `MAX_RECENT_DIRECT_MESSAGES` direct messages: its newest message id and the other
    participants (none for the conversation with oneself), newest first."""
    return recent_private_conversations_of(session, [user_id])[user_id]


def recent_private_conversations_of(
    session: Session, user_ids: Collection[int]
) -> dict[int, list[dict[str, Any]]]:
    """`recent_private_conversations` of each user, in one query that walks each user's
    rows newest first through their primary key."""

    def newest_direct(user_id: int) -> AnySelect:
        return (
            select(UserMessage.user_profile_id, UserMessage.message_id, Recipient.dm_user_ids)
            .join(Message, Message.id == UserMessage.message_id)
            .join(Recipient, Recipient.id == Message.recipient_id)
            .where(UserMessage.user_profile_id == user_id, Recipient.type == RECIPIENT_DIRECT)
            .order_by(UserMessage.message_id.desc())
        )

    rows: dict[int, list[tuple[int, str | None]]] = {user_id: [] for user_id in user_ids}
    query = newest_rows_per_user(user_ids, newest_direct, MAX_RECENT_DIRECT_MESSAGES)
    for user_id, message_id, dm_user_ids in session.execute(query):
        rows[int(user_id)].append((int(message_id), dm_user_ids))
    answers: dict[int, list[dict[str, Any]]] = {}
    for user_id, found in rows.items():
        found.sort(key=lambda row: -row[0])  # a UNION ALL keeps no order
        newest: dict[str, int] = {}
        for message_id, dm_user_ids in found:
            newest.setdefault(dm_user_ids or "[]", message_id)
        answers[user_id] = [
            {
                "max_message_id": message_id,
                "user_ids": sorted(int(u) for u in json.loads(key) if int(u) != user_id),
            }
            for key, message_id in newest.items()
        ]
    return answers
