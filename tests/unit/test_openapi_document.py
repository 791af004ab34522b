"""The OpenAPI document (`server/api/openapi.json`) and the validator the tests use with it."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from referencing import Registry
from referencing.jsonschema import DRAFT202012

import server.engine.errors
from models.tables import Role, Stream, UserProfile
from models.wire import (
    never_subscribed_to_api,
    own_profile,
    own_user_keys,
    realm_user_active_event,
    realm_user_add_event,
    stream_create_event,
    stream_delete_event,
    stream_to_api,
    subscription_add_event,
    subscription_peer_event,
    subscription_remove_event,
    subscription_to_api,
    subscription_update_event,
    user_to_api,
)
from server.api.handlers.events import VERSION_FIELDS
from tests.helpers import zulip_schema
from tests.helpers.openapi import (
    DOCUMENT_PATH,
    iter_refs,
    load_document,
    match_path,
    operations,
    resolve_ref,
    validate_event,
    validate_response,
)

EXPECTED_OPERATIONS = {
    ("GET", "/server_settings"),
    ("GET", "/openapi.json"),
    ("POST", "/register"),
    ("GET", "/events"),
    ("DELETE", "/events"),
    ("GET", "/users"),
    ("POST", "/users"),
    ("GET", "/users/{user_id}"),
    ("GET", "/users/me"),
    ("DELETE", "/users/{user_id}"),
    ("GET", "/messages"),
    ("POST", "/messages"),
    ("POST", "/messages/flags"),
    ("POST", "/messages/flags/narrow"),
    ("GET", "/users/me/{stream_id}/topics"),
    ("POST", "/messages/render"),
    ("GET", "/realm/emoji"),
    ("GET", "/users/me/alert_words"),
    ("GET", "/messages/{message_id}"),
    ("PATCH", "/messages/{message_id}"),
    ("DELETE", "/messages/{message_id}"),
    ("GET", "/messages/{message_id}/history"),
    ("POST", "/messages/{message_id}/reactions"),
    ("DELETE", "/messages/{message_id}/reactions"),
    ("POST", "/typing"),
    ("POST", "/users/{user_id}/reactivate"),
    ("POST", "/users/me/presence"),
    ("GET", "/users/{user_id_or_email}/presence"),
    ("GET", "/realm/presence"),
    ("GET", "/streams"),
    ("GET", "/get_stream_id"),
    ("GET", "/streams/{stream_id}/members"),
    ("GET", "/users/me/subscriptions"),
    ("POST", "/users/me/subscriptions"),
    ("DELETE", "/users/me/subscriptions"),
    ("POST", "/users/me/subscriptions/properties"),
    ("GET", "/eventq/queues"),
    ("GET", "/eventq/clients"),
    ("GET", "/eventq/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
}
UNAUTHENTICATED = {
    ("GET", "/server_settings"),
    ("GET", "/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
}


# -- examples ---------------------------------------------------------------------------
# Built by `models.wire`, the one source of eventq's wire shapes, from rows that never
# touch a database: the examples are what eventq sends, so accepting them checks the
# builders against eventq's document and (through `validate_response`) Zulip's shapes.

JOINED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value))


def user_row(user_id: int = 10, role: Role = Role.MEMBER, **columns: Any) -> UserProfile:
    values: dict[str, Any] = {
        "id": user_id,
        "realm_id": 1,
        "email": f"user{user_id}@example.com",
        "full_name": f"User {user_id}",
        "role": int(role),
        "is_active": True,
        "is_bot": False,
        "date_joined": JOINED,
    }
    values.update(columns)
    return UserProfile(**values)


def stream_row(stream_id: int = 3, **columns: Any) -> Stream:
    values: dict[str, Any] = {
        "id": stream_id,
        "realm_id": 1,
        "name": f"channel {stream_id}",
        "description": "",
        "invite_only": False,
        "is_web_public": False,
        "date_created": JOINED,
    }
    values.update(columns)
    return Stream(**values)


def user(user_id: int = 10, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = _json(user_to_api(user_row(user_id)))
    data.update(changes)
    return data


def stream(stream_id: int = 3, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = _json(stream_to_api(stream_row(stream_id)))
    data.update(changes)
    return data


def subscription(stream_id: int = 3, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = _json(subscription_to_api(stream_row(stream_id), None))
    data.update(changes)
    return data


def register_answer() -> dict[str, Any]:
    return {
        "result": "success",
        "msg": "",
        "queue_id": "1733-abcdef",
        "last_event_id": -1,
        "zulip_version": "11.0-eventq",
        "zulip_feature_level": 377,
        "zulip_merge_base": "",
        "realm_users": [user(10), _json(user_to_api(user_row(11, Role.ADMINISTRATOR)))],
        "realm_non_active_users": [user(12, is_active=False)],
        **_json(own_user_keys(user_row(10))),
        "subscriptions": [subscription(3, subscribers=[10, 11])],
        "unsubscribed": [subscription(4, subscribers=[])],
        "never_subscribed": [
            _json(never_subscribed_to_api(stream_row(5), [11])),
            _json(never_subscribed_to_api(stream_row(6), [])),
        ],
        "streams": [
            stream(3),
            stream(4),
            stream(5),
            _json(stream_to_api(stream_row(6, invite_only=True, description="<b>x</b>"))),
        ],
    }


def one_event_of_each_kind() -> list[dict[str, Any]]:
    events = [
        realm_user_add_event(user_row(13)),
        realm_user_active_event(12, False),
        stream_create_event([stream_row(7)]),
        stream_delete_event([stream_row(7), stream_row(8)]),
        subscription_add_event(
            [
                subscription_to_api(stream_row(8), None),
                subscription_to_api(stream_row(9), [10]),
            ]
        ),
        subscription_remove_event([stream_row(8)]),
        subscription_peer_event("peer_add", [3, 4], [12]),
        subscription_peer_event("peer_remove", [3], [12, 13]),
        subscription_update_event(8, "color", "#76ce90"),
        subscription_update_event(8, "in_home_view", False),
    ]
    delivered = [{"type": "heartbeat", "id": 0}]
    delivered += [{**_json(event), "id": number} for number, event in enumerate(events, 1)]
    return delivered


def events_answer() -> dict[str, Any]:
    return {
        "result": "success",
        "msg": "",
        "events": one_event_of_each_kind(),
        "queue_id": "1733-abcdef",
    }


def own_user_answer() -> dict[str, Any]:
    return {"result": "success", "msg": "", **_json(own_profile(user_row(10)))}


def error(code: str, **extra: Any) -> dict[str, Any]:
    return {"result": "error", "msg": "Something is wrong", "code": code, **extra}


def without(data: dict[str, Any], key: str) -> dict[str, Any]:
    copied = copy.deepcopy(data)
    del copied[key]
    return copied


# -- the document ------------------------------------------------------------------------


def test_document_is_json_of_openapi_3_1() -> None:
    document = json.loads(DOCUMENT_PATH.read_text(encoding="utf-8"))
    assert document["openapi"] == "3.1.0"
    assert document["info"]["title"] == "eventq"
    assert document["servers"] == [{"url": "/api/v1"}]
    assert document["components"]["securitySchemes"]["basicAuth"] == {
        "type": "http",
        "scheme": "basic",
        "description": document["components"]["securitySchemes"]["basicAuth"]["description"],
    }
    assert document["security"] == [{"basicAuth": []}]


def test_the_document_covers_exactly_the_endpoints() -> None:
    assert {(method, path) for method, path, _ in operations()} == EXPECTED_OPERATIONS
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids)), "operationIds are unique"


def test_every_ref_resolves() -> None:
    refs = list(iter_refs())
    assert len(refs) > 50
    registry: Registry[Any] = Registry().with_resource(
        "urn:test", DRAFT202012.create_resource(load_document())
    )
    resolver = registry.resolver()
    for where, ref in refs:
        assert ref.startswith("#/"), f"{where}: only local refs: {ref}"
        resolve_ref(ref)  # KeyError if dangling
        resolver.lookup("urn:test" + ref)


def test_resolve_ref_refuses_a_dangling_ref() -> None:
    with pytest.raises(KeyError):
        resolve_ref("#/components/schemas/NoSuchSchema")


def test_every_schema_is_valid_draft_2020_12() -> None:
    for name, schema in load_document()["components"]["schemas"].items():
        try:
            Draft202012Validator.check_schema(schema)
        except Exception as exc:  # pragma: no cover - the message is the point
            raise AssertionError(f"schema {name}: {exc}") from exc


def test_every_operation_documents_its_answers() -> None:
    for method, path, operation in operations():
        responses = operation["responses"]
        for code in ("200", "400", "405", "413"):
            assert code in responses, f"{method} {path} lacks {code}"
        if (method, path) in UNAUTHENTICATED:
            assert operation["security"] == [], f"{method} {path} needs no authentication"
            assert "401" not in responses
        else:
            assert "security" not in operation, f"{method} {path} uses the global basicAuth"
            assert "401" in responses, f"{method} {path} lacks 401"
        for code, response in responses.items():
            if code != "200":
                target = resolve_ref(response["$ref"])
                schema = target["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/JsonError"}, (method, path, code)
        success = responses["200"]["content"]["application/json"]["schema"]
        if path != "/openapi.json":
            assert {"$ref": "#/components/schemas/JsonSuccessBase"} in resolve_ref(success["$ref"])[
                "allOf"
            ], (method, path)


def test_request_bodies_are_form_encoded_and_json_fields_have_valid_examples() -> None:
    for method, path, operation in operations():
        if method == "GET":
            assert "requestBody" not in operation, (method, path)
            continue
        body = operation.get("requestBody")
        if body is None:
            continue
        assert list(body["content"]) == ["application/x-www-form-urlencoded"], (method, path)
        schema = body["content"]["application/x-www-form-urlencoded"]["schema"]
        for name, field in schema["properties"].items():
            assert field["type"] == "string", f"{method} {path} {name}: strings on the wire"
            assert "pattern" not in field
            if "contentSchema" in field:
                assert field["contentMediaType"] == "application/json"
                assert field["examples"], f"{method} {path} {name} has examples"
                for example in field["examples"]:
                    Draft202012Validator(field["contentSchema"]).validate(json.loads(example))


def test_error_codes_cover_the_server_errors() -> None:
    codes = set(load_document()["components"]["schemas"]["JsonError"]["properties"]["code"]["enum"])
    assert codes == {
        "BAD_REQUEST",
        "REQUEST_VARIABLE_MISSING",
        "BAD_EVENT_QUEUE_ID",
        "UNAUTHORIZED",
        "INVALID_API_KEY",
        "USER_DEACTIVATED",
        "REALM_DEACTIVATED",
        "RATE_LIMIT_HIT",
        "BAD_NARROW",
        "STREAM_DOES_NOT_EXIST",
        "UNAUTHORIZED_PRINCIPAL",
    }
    pending = [server.engine.errors.ApiError]
    while pending:
        cls = pending.pop()
        assert cls.code in codes, f"{cls.__name__}.code {cls.code} is not documented"
        pending.extend(cls.__subclasses__())


# -- path matching -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/api/v1/users/12/reactivate", "/users/{user_id}/reactivate"),
        ("/users/12/reactivate", "/users/{user_id}/reactivate"),
        ("/api/v1/users/12", "/users/{user_id}"),
        ("/api/v1/users/-1", "/users/{user_id}"),
        ("/api/v1/users", "/users"),
        ("/api/v1/users/me/subscriptions", "/users/me/subscriptions"),
        ("/api/v1/streams/7/members", "/streams/{stream_id}/members"),
        ("/api/v1/events?queue_id=abc&last_event_id=3", "/events"),
        ("http://127.0.0.1:9991/api/v1/get_stream_id?stream=x", "/get_stream_id"),
        ("/api/v1/openapi.json", "/openapi.json"),
        ("/api/v1/users/me", "/users/me"),
        ("/api/v1/users/abc/reactivate", None),
        ("/api/v1/streams//members", None),
        ("/api/v1/realm/emoji", "/realm/emoji"),
        ("/api/v1/realm/linkifiers", None),
        ("/api/v1/users/12/reactivate/now", None),
    ],
)
def test_match_path(path: str, template: str | None) -> None:
    assert match_path(path) == template


# -- validate_response accepts -----------------------------------------------------------


def test_accepts_a_register_answer() -> None:
    validate_response("POST", "/api/v1/register", 200, register_answer())
    minimal = {
        key: value
        for key, value in register_answer().items()
        if key
        in {
            "result",
            "msg",
            "queue_id",
            "last_event_id",
            "zulip_version",
            "zulip_feature_level",
            "zulip_merge_base",
        }
    }
    validate_response("POST", "/api/v1/register", 200, minimal)


def test_accepts_an_events_answer_with_every_kind_of_event() -> None:
    validate_response("GET", "/api/v1/events?queue_id=1733-abcdef", 200, events_answer())
    validate_response("GET", "/api/v1/events", 200, json.dumps(events_answer()).encode())
    for event in one_event_of_each_kind():
        validate_event(event)


def test_register_state_comes_in_the_documented_groups() -> None:
    # The current user's keys come with realm_user state, never alone or partly.
    message = rejected("POST", "/api/v1/register", 200, without(register_answer(), "user_id"))
    assert "'user_id' is a dependency" in message
    alone = without(without(register_answer(), "realm_users"), "realm_non_active_users")
    assert "realm_users" in rejected("POST", "/api/v1/register", 200, alone)
    assert "unsubscribed" in rejected(
        "POST", "/api/v1/register", 200, without(register_answer(), "unsubscribed")
    )


def test_user_objects_carry_only_zulips_fields() -> None:
    for extra in ("is_moderator", "is_billing_admin"):
        answer = {"result": "success", "msg": "", "user": user(**{extra: False})}
        assert f"'{extra}' was unexpected" in rejected("GET", "/api/v1/users/10", 200, answer)
        with pytest.raises(AssertionError, match=extra):
            zulip_schema.check(zulip_schema.USER, answer["user"], "user")
    bot = _json(user_to_api(user_row(14, is_bot=True)))
    assert bot["bot_type"] == 1 and "profile_data" not in bot, "Zulip: no profile_data for bots"
    validate_response("GET", "/api/v1/users/14", 200, {"result": "success", "msg": "", "user": bot})
    assert "profile_data" in rejected(
        "GET",
        "/api/v1/users/14",
        200,
        {"result": "success", "msg": "", "user": {**bot, "profile_data": {}}},
    )


def test_channels_carry_zulips_required_fields() -> None:
    for name in ("creator_id", "is_recently_active", "can_subscribe_group", "topics_policy"):
        answer = {"result": "success", "msg": "", "streams": [without(stream(), name)]}
        assert f"'{name}' is a required property" in rejected("GET", "/api/v1/streams", 200, answer)
    wrong = {"result": "success", "msg": "", "streams": [stream(can_add_subscribers_group="x")]}
    assert "can_add_subscribers_group" in rejected("GET", "/api/v1/streams", 200, wrong)


def test_stream_delete_events_name_channels_by_id_only() -> None:
    (deleted,) = [e for e in one_event_of_each_kind() if e.get("op") == "delete"]
    assert deleted["stream_ids"] == [7, 8]
    assert deleted["streams"] == [{"stream_id": 7}, {"stream_id": 8}]
    with pytest.raises(AssertionError, match="unexpected"):
        validate_event({**deleted, "streams": [stream(7), stream(8)]})  # the old, full form
    with pytest.raises(AssertionError):
        validate_event(without(deleted, "stream_ids"))


def test_rendered_description_escapes_markup() -> None:
    hostile = "<img src=x onerror=alert(1)> & <b>bold</b>"
    rendered = stream_to_api(stream_row(description=hostile))["rendered_description"]
    assert rendered == "<p>&lt;img src=x onerror=alert(1)&gt; &amp; &lt;b&gt;bold&lt;/b&gt;</p>"
    assert stream_to_api(stream_row(description=""))["rendered_description"] == ""


def _closed_schema(name: str) -> tuple[set[str], set[str]]:
    """Property names and required names of a schema of the document, with its allOf."""
    schema = load_document()["components"]["schemas"][name]
    properties, required = set(schema.get("properties", {})), set(schema.get("required", []))
    for part in schema.get("allOf", []):
        if "$ref" in part and part["$ref"] != "#/components/schemas/JsonSuccessBase":
            inner = resolve_ref(part["$ref"])
            properties |= set(inner.get("properties", {}))
            required |= set(inner.get("required", []))
    return properties, required


@pytest.mark.parametrize(
    ("name", "zulip"),
    [
        ("User", zulip_schema.USER),
        ("Stream", zulip_schema.BASIC_CHANNEL),
        ("Subscription", zulip_schema.subscription()),
        ("NeverSubscribed", zulip_schema.never_subscribed()),
        ("OwnUserResponse", zulip_schema.OWN_PROFILE),
        ("RegisterResponse", zulip_schema.register()),
        ("ServerSettingsResponse", zulip_schema.SERVER_SETTINGS),
    ],
)
def test_the_document_never_contradicts_zulip(name: str, zulip: dict[str, Any]) -> None:
    """Where eventq's document and Zulip's disagree, Zulip's wins: eventq documents no
    field Zulip does not allow and makes optional no field Zulip's shape requires."""
    properties, required = _closed_schema(name)
    base = {"result", "msg"}
    assert properties - base <= set(zulip["properties"]), properties - set(zulip["properties"])
    assert set(zulip["required"]) - base <= required, set(zulip["required"]) - required


def test_every_event_kind_of_the_document_is_one_of_zulips() -> None:
    for ref in load_document()["components"]["schemas"]["Event"]["oneOf"]:
        schema = resolve_ref(ref["$ref"])
        kind = schema["properties"]["type"]["const"]
        ops = schema["properties"].get("op", {})
        for op in ops.get("enum", [ops.get("const")]):
            assert (kind, op) in zulip_schema.EVENTS, (kind, op)


@pytest.mark.parametrize(
    ("method", "path", "status", "body"),
    [
        ("GET", "/api/v1/events", 400, error("BAD_EVENT_QUEUE_ID", queue_id="nope")),
        ("GET", "/api/v1/events", 400, error("REQUEST_VARIABLE_MISSING", var_name="queue_id")),
        ("GET", "/api/v1/events", 401, error("UNAUTHORIZED")),
        ("GET", "/api/v1/get_stream_id", 400, error("STREAM_DOES_NOT_EXIST", stream="x")),
        ("DELETE", "/api/v1/users/12", 400, error("UNAUTHORIZED_PRINCIPAL")),
        ("GET", "/api/v1/server_settings", 405, error("BAD_REQUEST")),
        ("POST", "/api/v1/register", 413, error("BAD_REQUEST")),
        ("DELETE", "/api/v1/events", 200, {"result": "success", "msg": ""}),
        ("POST", "/api/v1/users/12/reactivate", 200, {"result": "success", "msg": ""}),
        (
            "GET",
            "/api/v1/server_settings",
            200,
            {
                "result": "success",
                "msg": "",
                "zulip_version": "11.0-eventq",
                "zulip_feature_level": 377,
                "zulip_merge_base": "",
                "push_notifications_enabled": False,
                "is_incompatible": False,
                "email_auth_enabled": False,
                "require_email_format_usernames": True,
                "authentication_methods": {"password": False, "dev": False, "email": False},
                "external_authentication_methods": [],
            },
        ),
        ("GET", "/api/v1/users", 200, {"result": "success", "msg": "", "members": [user()]}),
        ("POST", "/api/v1/users", 200, {"result": "success", "msg": "", "user_id": 14}),
        ("GET", "/api/v1/users/10", 200, {"result": "success", "msg": "", "user": user()}),
        ("GET", "/api/v1/users/me", 200, own_user_answer()),
        ("GET", "/api/v1/streams", 200, {"result": "success", "msg": "", "streams": [stream()]}),
        ("GET", "/api/v1/get_stream_id", 200, {"result": "success", "msg": "", "stream_id": 3}),
        (
            "GET",
            "/api/v1/streams/3/members",
            200,
            {"result": "success", "msg": "", "subscribers": [10, 11]},
        ),
        (
            "GET",
            "/api/v1/users/me/subscriptions",
            200,
            {"result": "success", "msg": "", "subscriptions": [subscription()]},
        ),
        (
            "POST",
            "/api/v1/users/me/subscriptions",
            200,
            {
                "result": "success",
                "msg": "",
                "subscribed": {"10": ["design"]},
                "already_subscribed": {},
            },
        ),
        (
            "POST",
            "/api/v1/users/me/subscriptions",
            200,
            {
                "result": "success",
                "msg": "",
                "subscribed": {},
                "already_subscribed": {"user@example.com": ["a", "b"]},
                "unauthorized": ["c"],
            },
        ),
        (
            "DELETE",
            "/api/v1/users/me/subscriptions",
            200,
            {"result": "success", "msg": "", "removed": ["a"], "not_removed": []},
        ),
        (
            "GET",
            "/api/v1/eventq/queues",
            200,
            {
                "result": "success",
                "msg": "",
                "queues": [
                    {
                        "queue_id": "q1",
                        "user_id": 10,
                        "realm_id": 1,
                        "client_name": "ZulipPython",
                        "client_version": "0.9.0",
                        "capabilities": {"notification_settings_null": True},
                        "event_types": None,
                        "pending": 0,
                        "last_active": 1735787045.5,
                        "expires_in": 599.5,
                        "legacy_deactivation": False,
                        "waiting": True,
                    }
                ],
                "delivery": {
                    "routed_seq": 41,
                    "failing": True,
                    "consecutive_failures": 2,
                    "last_error": "JSONDecodeError: unexpected character",
                    "retry_in_secs": 1.5,
                    "failures_total": 2,
                },
                "shard": "main",
            },
        ),
        (
            "GET",
            "/api/v1/eventq/clients",
            200,
            {
                "result": "success",
                "msg": "",
                "clients": [
                    {
                        "client_name": "ZulipPython",
                        "client_version": None,
                        "queues": 2,
                        "sequence": "legacy",
                    }
                ],
                "shard": "main",
            },
        ),
        ("GET", "/api/v1/openapi.json", 200, load_document()),
    ],
)
def test_accepts_valid_answers(method: str, path: str, status: int, body: object) -> None:
    validate_response(method, path, status, body)


# -- validate_response rejects -----------------------------------------------------------


def rejected(method: str, path: str, status: int, body: object) -> str:
    with pytest.raises(AssertionError) as info:
        validate_response(method, path, status, body)
    return str(info.value)


def test_rejects_a_missing_field() -> None:
    message = rejected("POST", "/api/v1/register", 200, without(register_answer(), "queue_id"))
    assert "POST /api/v1/register -> 200" in message
    assert "'queue_id' is a required property" in message


def test_rejects_a_missing_field_deep_inside() -> None:
    answer = register_answer()
    del answer["realm_users"][1]["timezone"]
    message = rejected("POST", "/api/v1/register", 200, answer)
    assert "$.realm_users[1]" in message and "'timezone'" in message


def test_rejects_a_wrong_type() -> None:
    answer = register_answer()
    answer["last_event_id"] = "-1"
    message = rejected("POST", "/api/v1/register", 200, answer)
    assert "$.last_event_id" in message and "'integer'" in message


def test_rejects_an_extra_field_in_an_answer() -> None:
    answer = {"result": "success", "msg": "", "stream_id": 3, "name": "x"}
    assert "'name' was unexpected" in rejected("GET", "/api/v1/get_stream_id", 200, answer)


def test_rejects_an_extra_field_in_an_event_and_names_it() -> None:
    answer = events_answer()
    answer["events"][8]["stream_names"] = ["channel 3"]
    message = rejected("GET", "/api/v1/events", 200, answer)
    assert "$.events[8]" in message and "stream_names" in message
    with pytest.raises(AssertionError, match="stream_names"):
        validate_event(answer["events"][8])


@pytest.mark.parametrize(
    "event",
    [
        {"type": "heartbeat"},
        {"type": "heartbeat", "id": "1"},
        {"type": "realm_user", "op": "remove", "person": {"user_id": 1}, "id": 1},
        {"type": "realm_user", "op": "update", "person": {"is_active": False}, "id": 1},
        {"type": "realm_user", "op": "update", "person": {"user_id": 1, "x": 1}, "id": 1},
        {"type": "realm_user", "op": "add", "person": {"user_id": 1}, "id": 1},
        {"type": "stream", "op": "update", "streams": [], "id": 1},
        {"type": "subscription", "op": "add", "subscriptions": [stream()], "id": 1},
        {"type": "subscription", "op": "remove", "subscriptions": [{"name": "x"}], "id": 1},
        {"type": "subscription", "op": "peer_add", "stream_ids": [], "user_ids": [1], "id": 1},
        {"type": "subscription", "op": "peer_remove", "stream_ids": [1], "user_ids": [], "id": 1},
        {"type": "message", "id": 1},
    ],
)
def test_validate_event_rejects(event: dict[str, Any]) -> None:
    with pytest.raises(AssertionError, match="^event "):
        validate_event(event)


def test_rejects_an_unknown_error_code_and_a_success_shaped_error() -> None:
    assert "NOT_FOUND" in rejected("GET", "/api/v1/users/1", 400, error("NOT_FOUND"))
    assert rejected("GET", "/api/v1/users/1", 400, {"result": "success", "msg": ""})
    assert "'code' is a required property" in rejected(
        "GET", "/api/v1/users/1", 400, {"result": "error", "msg": "no code"}
    )


def test_rejects_a_server_setting_eventq_does_not_serve() -> None:
    answer = {
        "result": "success",
        "msg": "",
        **VERSION_FIELDS,
        "push_notifications_enabled": False,
        "is_incompatible": False,
        "email_auth_enabled": True,
        "require_email_format_usernames": True,
        "authentication_methods": {"password": False, "dev": False, "email": False},
        "external_authentication_methods": [],
    }
    assert "email_auth_enabled" in rejected("GET", "/api/v1/server_settings", 200, answer)
    answer["email_auth_enabled"] = False
    validate_response("GET", "/api/v1/server_settings", 200, answer)
    answer["realm_name"] = "a realm-specific key"
    assert "realm_name" in rejected("GET", "/api/v1/server_settings", 200, answer)


def test_rejects_undocumented_paths_methods_and_statuses() -> None:
    ok = {"result": "success", "msg": ""}
    assert "not in the OpenAPI document" in rejected("GET", "/api/v1/realm/linkifiers", 200, ok)
    assert "documents no PATCH" in rejected("PATCH", "/api/v1/users/1", 200, ok)
    assert "status 500 is not documented" in rejected("GET", "/api/v1/users", 500, ok)
    assert "status 401 is not documented" in rejected(
        "GET", "/api/v1/server_settings", 401, error("UNAUTHORIZED")
    )
    assert "not JSON" in rejected("GET", "/api/v1/users", 200, b"<html>")


def test_every_path_template_variable_is_a_required_integer_path_parameter() -> None:
    for method, path, operation in operations():
        names = {segment[1:-1] for segment in path.split("/") if segment.startswith("{")}
        declared = {p["name"]: p for p in operation.get("parameters", []) if p["in"] == "path"}
        assert set(declared) == names, f"{method} {path}"
        for name, parameter in declared.items():
            assert parameter["required"] is True
            if name == "user_id_or_email":
                # Zulip's one path segment that also takes an email.
                assert parameter["schema"] == {"type": "string", "minLength": 1}
            else:
                assert parameter["schema"] == {"type": "integer"}
        for parameter in operation.get("parameters", []):
            assert parameter["in"] in ("path", "query"), f"{method} {path}"
            assert parameter["schema"]["type"] in ("string", "integer", "boolean")
