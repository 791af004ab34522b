"""Zulip's documented shapes of the `register` keys `models.register_keys` builds, by the
`fetch_event_types` value that selects them (`POST /register`, "Present if `X` is
present in fetch_event_types", at feature level 377), for `tests.helpers.zulip_schema`.

Written from Zulip's document (`zerver/openapi/zulip.yaml`): each key's type, which may
be null, and the closed objects (a user group, a user-settings object, a recent
conversation). One key is eventq's own and marked so: `realm_allow_edit_history`,
which Zulip replaced at feature level 358 and older clients still read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# The building blocks of `tests.helpers.zulip_schema`, which imports this module while
# it is being built (its `register`), so this one cannot import it back.
Schema = dict[str, Any]
INTEGER: Schema = {"type": "integer"}
STRING: Schema = {"type": "string"}
BOOLEAN: Schema = {"type": "boolean"}


def nullable(schema: Schema) -> Schema:
    return {**schema, "type": [schema["type"], "null"]}


def array(items: Schema) -> Schema:
    return {"type": "array", "items": items}


def closed(properties: Mapping[str, Schema], required: Iterable[str] = ()) -> Schema:
    """An object with these properties and no other (`additionalProperties: false`)."""
    return {
        "type": "object",
        "properties": dict(properties),
        "required": list(required),
        "additionalProperties": False,
    }


INTEGERS = array(INTEGER)
OBJECT: Schema = {"type": "object"}
ANY_ARRAY: Schema = {"type": "array"}
STRINGS = array(STRING)


def _all(schema: Schema, *names: str) -> dict[str, Schema]:
    return dict.fromkeys(names, schema)


# A group-setting value of the realm: a user group's id, or an anonymous group.
GROUP_SETTING: Schema = {
    "oneOf": [INTEGER, closed({"direct_members": INTEGERS, "direct_subgroups": INTEGERS})]
}
# Zulip's `UserGroup` (feature level 377: permission settings up to
# `can_remove_members_group`, `date_created`, `creator_id`, `deactivated`).
USER_GROUP = closed(
    {
        "id": INTEGER,
        "name": STRING,
        "description": STRING,
        "members": INTEGERS,
        "direct_subgroup_ids": INTEGERS,
        "is_system_group": BOOLEAN,
        "date_created": nullable(INTEGER),
        "creator_id": nullable(INTEGER),
        "deactivated": BOOLEAN,
        **_all(
            GROUP_SETTING,
            "can_add_members_group",
            "can_join_group",
            "can_leave_group",
            "can_manage_group",
            "can_mention_group",
            "can_remove_members_group",
        ),
    },
    [
        "id",
        "name",
        "description",
        "members",
        "direct_subgroup_ids",
        "is_system_group",
        "can_mention_group",
    ],
)
EMOJISET_CHOICE = closed({"key": STRING, "text": STRING}, ["key", "text"])

# `user_settings` (and, without `timezone`, `realm_user_settings_defaults`).
USER_SETTINGS_PROPERTIES: dict[str, Schema] = {
    **_all(
        BOOLEAN,
        "twenty_four_hour_time",
        "starred_message_counts",
        "receives_typing_notifications",
        "web_suggest_update_timezone",
        "fluid_layout_width",
        "high_contrast_mode",
        "translate_emoticons",
        "display_emoji_reaction_users",
        "web_escape_navigates_to_home_view",
        "left_side_userlist",
        "hide_ai_features",
        "enable_stream_desktop_notifications",
        "enable_stream_email_notifications",
        "enable_stream_push_notifications",
        "enable_stream_audible_notifications",
        "enable_desktop_notifications",
        "enable_sounds",
        "enable_offline_email_notifications",
        "enable_offline_push_notifications",
        "enable_online_push_notifications",
        "enable_followed_topic_desktop_notifications",
        "enable_followed_topic_email_notifications",
        "enable_followed_topic_push_notifications",
        "enable_followed_topic_audible_notifications",
        "enable_followed_topic_wildcard_mentions_notify",
        "enable_digest_emails",
        "enable_marketing_emails",
        "enable_login_emails",
        "message_content_in_email_notifications",
        "pm_content_in_desktop_notifications",
        "wildcard_mentions_notify",
        "automatically_follow_topics_where_mentioned",
        "presence_enabled",
        "enter_sends",
        "enable_drafts_synchronization",
        "send_private_typing_notifications",
        "send_stream_typing_notifications",
        "send_read_receipts",
        "allow_private_data_export",
        "web_navigate_to_sent_message",
    ),
    **_all(
        INTEGER,
        "web_mark_read_on_scroll_policy",
        "web_channel_default_view",
        "web_font_size_px",
        "web_line_height_percent",
        "color_scheme",
        "demote_inactive_streams",
        "user_list_style",
        "web_stream_unreads_count_display_policy",
        "desktop_icon_count_display",
        "realm_name_in_email_notifications_policy",
        "automatically_follow_topics_policy",
        "automatically_unmute_topics_in_muted_streams_policy",
        "email_notifications_batching_period_seconds",
        "email_address_visibility",
    ),
    **_all(
        STRING,
        "default_language",
        "web_home_view",
        "emojiset",
        "web_animate_image_previews",
        "timezone",
        "notification_sound",
    ),
    "available_notification_sounds": STRINGS,
    "emojiset_choices": array(EMOJISET_CHOICE),
}
USER_SETTINGS = closed(USER_SETTINGS_PROPERTIES, list(USER_SETTINGS_PROPERTIES))
REALM_USER_SETTINGS_DEFAULTS = closed(
    {k: v for k, v in USER_SETTINGS_PROPERTIES.items() if k != "timezone"},
    [k for k in USER_SETTINGS_PROPERTIES if k != "timezone"],
)
LEGACY_DISPLAY_SETTINGS = (
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
LEGACY_NOTIFICATION_SETTINGS = (
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

PROVIDER = closed({"name": STRING, "id": INTEGER}, ["name", "id"])
# The `realm` state: Zulip's keys at feature level 377 that eventq sends.
REALM_KEYS: dict[str, Schema] = {
    **_all(
        GROUP_SETTING,
        "realm_can_access_all_users_group",
        "realm_can_add_custom_emoji_group",
        "realm_can_add_subscribers_group",
        "realm_can_create_bots_group",
        "realm_can_create_groups",
        "realm_can_create_private_channel_group",
        "realm_can_create_public_channel_group",
        "realm_can_create_web_public_channel_group",
        "realm_can_create_write_only_bots_group",
        "realm_can_delete_any_message_group",
        "realm_can_delete_own_message_group",
        "realm_can_invite_users_group",
        "realm_can_manage_all_groups",
        "realm_can_manage_billing_group",
        "realm_can_mention_many_users_group",
        "realm_can_move_messages_between_channels_group",
        "realm_can_move_messages_between_topics_group",
        "realm_can_resolve_topics_group",
        "realm_can_set_delete_message_policy_group",
        "realm_can_summarize_topics_group",
        "realm_create_multiuse_invite_group",
        "realm_direct_message_initiator_group",
        "realm_direct_message_permission_group",
    ),
    **_all(
        BOOLEAN,
        "realm_allow_message_editing",
        "realm_mandatory_topics",
        "realm_is_zephyr_mirror_realm",
        "realm_invite_required",
        "realm_emails_restricted_to_domains",
        "realm_disallow_disposable_email_addresses",
        "realm_email_auth_enabled",
        "realm_password_auth_enabled",
        "realm_enable_spectator_access",
        "realm_want_advertise_in_communities_directory",
        "realm_require_unique_names",
        "realm_name_changes_disabled",
        "realm_email_changes_disabled",
        "realm_avatar_changes_disabled",
        "realm_enable_guest_user_indicator",
        "realm_enable_guest_user_dm_warning",
        "realm_presence_disabled",
        "realm_enable_read_receipts",
        "realm_send_welcome_emails",
        "realm_digest_emails_enabled",
        "realm_message_content_allowed_in_email_notifications",
        "realm_push_notifications_enabled",
        "realm_inline_image_preview",
        "realm_inline_url_embed_preview",
        "server_needs_upgrade",
        "server_avatar_changes_disabled",
        "server_name_changes_disabled",
        "server_inline_image_preview",
        "server_inline_url_embed_preview",
        "server_web_public_streams_enabled",
        "server_can_summarize_topics",
        "settings_send_digest_emails",
        "demo_organizations_enabled",
        "development_environment",
        "embedded_bots_enabled",
        "zulip_plan_is_not_limited",
    ),
    **_all(
        nullable(INTEGER),
        "realm_message_content_edit_limit_seconds",
        "realm_move_messages_within_stream_limit_seconds",
        "realm_move_messages_between_streams_limit_seconds",
        "realm_message_content_delete_limit_seconds",
        "realm_upload_quota_mib",
        "realm_push_notifications_enabled_end_timestamp",
        "server_min_deactivated_realm_deletion_days",
    ),
    **_all(
        INTEGER,
        "realm_message_retention_days",
        "realm_org_type",
        "realm_plan_type",
        "realm_waiting_period_threshold",
        "realm_digest_weekday",
        "realm_video_chat_provider",
        "realm_giphy_rating",
        "realm_new_stream_announcements_stream_id",
        "realm_signup_announcements_stream_id",
        "realm_zulip_update_announcements_stream_id",
        "realm_moderation_request_channel_id",
        "realm_date_created",
        "max_message_length",
        "max_stream_name_length",
        "max_stream_description_length",
        "max_topic_length",
        "max_avatar_file_size_mib",
        "max_file_upload_size_mib",
        "max_icon_file_size_mib",
        "max_logo_file_size_mib",
        "event_queue_longpoll_timeout_seconds",
        "server_presence_ping_interval_seconds",
        "server_presence_offline_threshold_seconds",
        "server_generation",
        "password_min_length",
        "password_min_guesses",
    ),
    **_all(
        STRING,
        "realm_name",
        "realm_description",
        "realm_default_language",
        "realm_default_code_block_language",
        "realm_empty_topic_display_name",
        "realm_icon_source",
        "realm_icon_url",
        "realm_logo_source",
        "realm_logo_url",
        "realm_night_logo_source",
        "realm_night_logo_url",
        "realm_url",
        "realm_uri",
        "realm_bot_domain",
        "server_emoji_data_url",
        "upgrade_text_for_wide_organization_logo",
    ),
    "realm_message_edit_history_visibility_policy": {
        "type": "string",
        "enum": ["all", "moves", "none"],
    },
    "realm_jitsi_server_url": nullable(STRING),
    "server_jitsi_server_url": nullable(STRING),
    "realm_authentication_methods": OBJECT,
    "realm_available_video_chat_providers": {
        "type": "object",
        "additionalProperties": PROVIDER,
    },
    "giphy_rating_options": {"type": "object", "additionalProperties": PROVIDER},
    "server_thumbnail_formats": ANY_ARRAY,
    "server_supported_permission_settings": closed(
        {"realm": OBJECT, "stream": OBJECT, "group": OBJECT}, ["realm", "stream", "group"]
    ),
    # eventq's own: Zulip's name before feature level 358, which zulip-terminal reads.
    "realm_allow_edit_history": BOOLEAN,
}
RECENT_CONVERSATION = closed(
    {"max_message_id": INTEGER, "user_ids": INTEGERS}, ["max_message_id", "user_ids"]
)
CUSTOM_PROFILE_FIELD_TYPE = closed({"id": INTEGER, "name": STRING}, ["id", "name"])

# fetch type -> the keys it selects (all required together).
GROUPS: dict[str, dict[str, Schema]] = {
    "realm": REALM_KEYS,
    "message": {"max_message_id": INTEGER},
    "recent_private_conversations": {"recent_private_conversations": array(RECENT_CONVERSATION)},
    "realm_user_groups": {"realm_user_groups": array(USER_GROUP)},
    "alert_words": {"alert_words": STRINGS},
    "custom_profile_fields": {
        "custom_profile_fields": ANY_ARRAY,
        "custom_profile_field_types": {
            "type": "object",
            "additionalProperties": CUSTOM_PROFILE_FIELD_TYPE,
        },
    },
    "default_stream_groups": {"realm_default_stream_groups": ANY_ARRAY},
    "default_streams": {"realm_default_streams": INTEGERS},
    "drafts": {"drafts": ANY_ARRAY},
    "giphy": {"giphy_api_key": STRING},
    "muted_users": {"muted_users": ANY_ARRAY},
    "onboarding_steps": {
        "onboarding_steps": ANY_ARRAY,
        "navigation_tour_video_url": nullable(STRING),
    },
    "realm_bot": {"realm_bots": ANY_ARRAY},
    "realm_domains": {"realm_domains": ANY_ARRAY},
    "realm_embedded_bots": {"realm_embedded_bots": ANY_ARRAY},
    "realm_emoji": {"realm_emoji": OBJECT},
    "realm_filters": {"realm_filters": ANY_ARRAY},
    "realm_incoming_webhook_bots": {"realm_incoming_webhook_bots": ANY_ARRAY},
    "realm_linkifiers": {"realm_linkifiers": ANY_ARRAY},
    "realm_playgrounds": {"realm_playgrounds": ANY_ARRAY},
    "realm_user_settings_defaults": {"realm_user_settings_defaults": REALM_USER_SETTINGS_DEFAULTS},
    "saved_snippets": {"saved_snippets": ANY_ARRAY},
    "scheduled_messages": {"scheduled_messages": ANY_ARRAY},
    "stop_words": {"stop_words": STRINGS},
    "user_settings": {"user_settings": USER_SETTINGS},
    "user_status": {"user_status": OBJECT},
    "user_topic": {"user_topics": ANY_ARRAY},
    "video_calls": {"has_zoom_token": BOOLEAN},
}
# Selected by a type only when another is not fetched, or a capability not declared:
# `muted_topics` without `user_topic`; the legacy settings without `user_settings_object`.
CONDITIONAL_GROUPS: dict[str, dict[str, Schema]] = {
    "muted_topics": {"muted_topics": {"type": "array", "items": ANY_ARRAY}},
    "update_display_settings": {
        key: USER_SETTINGS_PROPERTIES[key] for key in LEGACY_DISPLAY_SETTINGS
    },
    "update_global_notifications": {
        key: USER_SETTINGS_PROPERTIES[key] for key in LEGACY_NOTIFICATION_SETTINGS
    },
}


# Allowed, not required: a state read outside a request leaves them out (Zulip's
# document requires none of them).
ADDRESS_KEYS = ("realm_url", "realm_uri", "realm_bot_domain", "realm_icon_url")


def selected(fetched: frozenset[str], *, user_settings_object: bool = False) -> dict[str, Any]:
    """The keys a register fetching exactly `fetched` must hold, with their schemas
    (the address keys left out: see `ADDRESS_KEYS`)."""
    keys: dict[str, Schema] = {}
    for kind, group in GROUPS.items():
        if kind in fetched:
            keys.update(group)
    for key in ADDRESS_KEYS:
        keys.pop(key, None)
    if "muted_topics" in fetched and "user_topic" not in fetched:
        keys.update(CONDITIONAL_GROUPS["muted_topics"])
    if not user_settings_object:
        for kind in ("update_display_settings", "update_global_notifications"):
            if kind in fetched:
                keys.update(CONDITIONAL_GROUPS[kind])
    return keys


def every_key() -> dict[str, Schema]:
    """Every key described here, for a register whose fetched types are not known."""
    keys: dict[str, Schema] = {}
    for group in (*GROUPS.values(), *CONDITIONAL_GROUPS.values()):
        keys.update(group)
    return keys
