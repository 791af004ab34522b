"""Malformed requests to every endpoint: each gets a 4xx Zulip error and changes nothing.

One table of requests a buggy or hostile client could send: values that are not JSON,
JSON of the wrong type, negative and huge numbers, JSON nested 10,000 deep, NUL
characters and unpaired surrogates inside JSON strings, invalid UTF-8 in a form value, a
query string and a path, missing and unknown fields, bodies over the size limit, broken
Basic credentials, wrong methods and unknown paths. Each answer must be a 4xx whose body
is Zulip's error JSON (`result`, `msg`, `code`), valid against the OpenAPI document
where the document has the operation, and the database must be exactly as before.

One live server per backend answers the whole table (a server per case would cost a
process start each); every case checks the database itself, so a case that changed
something fails on its own.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import pytest
import requests
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from sqlalchemy import func, select

from migrations import upgrade
from models.database import Database
from models.tables import (
    OutboxEvent,
    QueueDescriptorRow,
    Realm,
    Stream,
    Subscription,
    UserProfile,
)
from server.api.body_limits import MAX_BODY_BYTES, body_limit
from tests.helpers.databases import BACKENDS, database_url_for
from tests.helpers.openapi import load_document, match_path, validate_response
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.server import live_server

REQUEST_TIMEOUT_SECS = 10.0
# Deeper than Python's recursion limit (1,000), so a naive decoder raises RecursionError.
DEEP = 10_000
HUGE = 10**30
# One past the largest 32-bit id: a well-formed integer that no row can have.
PAST_MAX_ID = 2**31
FORM = "application/x-www-form-urlencoded"


def deep_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode("ascii")


@dataclass(frozen=True)
class Hostile:
    """One malformed request and the error it must get.

    `path` is under /api/v1 unless it starts with "//" (then it is the whole path) and
    may hold a query string; `{member_id}`, `{admin_email}` and the like are filled in
    from the sample realm. `form` is sent form-encoded, `body` as raw bytes. `user`
    authenticates with that user's key; `authorization` replaces the header instead.
    """

    method: str
    path: str
    status: int
    code: str
    user: str | None = "member"
    form: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    authorization: str | None = None
    var_name: str | None = None


def case(case_id: str, *args: Any, **kwargs: Any) -> Any:
    return pytest.param(Hostile(*args, **kwargs), id=case_id)


BAD = "BAD_REQUEST"
MISSING = "REQUEST_VARIABLE_MISSING"
PRINCIPAL = "UNAUTHORIZED_PRINCIPAL"
BAD_QUEUE = "BAD_EVENT_QUEUE_ID"
NO_STREAM = "STREAM_DOES_NOT_EXIST"
BAD_KEY = "INVALID_API_KEY"
TOO_BIG = "x" * (MAX_BODY_BYTES + 44 * 1024)  # 300 KiB

CASES = [
    # -- POST /register -----------------------------------------------------------------
    case(
        "register-event_types-not-json",
        "POST",
        "/register",
        400,
        BAD,
        form={"event_types": "realm_user"},
    ),
    case(
        "register-event_types-a-string",
        "POST",
        "/register",
        400,
        BAD,
        form={"event_types": '"stream"'},
    ),
    case(
        "register-event_types-ints", "POST", "/register", 400, BAD, form={"event_types": "[1, 2]"}
    ),
    case(
        "register-event_types-dict", "POST", "/register", 400, BAD, form={"event_types": '{"a": 1}'}
    ),
    # A queue keeps its event types for its whole life: a list no client sends is refused.
    case(
        "register-event_types-too-many",
        "POST",
        "/register",
        400,
        BAD,
        form={"event_types": json.dumps([f"type{index}" for index in range(101)])},
    ),
    case(
        "register-event_types-name-too-long",
        "POST",
        "/register",
        400,
        BAD,
        form={"fetch_event_types": json.dumps(["message", "x" * 65])},
    ),
    case(
        "register-fetch_event_types-null-item",
        "POST",
        "/register",
        400,
        BAD,
        form={"fetch_event_types": "[null]"},
    ),
    case(
        "register-capabilities-a-list",
        "POST",
        "/register",
        400,
        BAD,
        form={"client_capabilities": "[]"},
    ),
    case(
        "register-capabilities-int-flag",
        "POST",
        "/register",
        400,
        BAD,
        form={"client_capabilities": '{"deactivation_peer_events": 1}'},
    ),
    case(
        "register-lifespan-negative",
        "POST",
        "/register",
        400,
        BAD,
        form={"queue_lifespan_secs": "-1"},
    ),
    case(
        "register-lifespan-huge",
        "POST",
        "/register",
        400,
        BAD,
        form={"queue_lifespan_secs": str(HUGE)},
    ),
    case(
        "register-lifespan-5000-digits",
        "POST",
        "/register",
        400,
        BAD,
        form={"queue_lifespan_secs": "9" * 5000},
    ),
    case(
        "register-lifespan-over-a-week",
        "POST",
        "/register",
        400,
        BAD,
        form={"queue_lifespan_secs": "604801"},
    ),
    case(
        "register-lifespan-a-string",
        "POST",
        "/register",
        400,
        BAD,
        form={"queue_lifespan_secs": '"600"'},
    ),
    case(
        "register-lifespan-float",
        "POST",
        "/register",
        400,
        BAD,
        form={"queue_lifespan_secs": "1.5"},
    ),
    case(
        "register-lifespan-infinity",
        "POST",
        "/register",
        400,
        BAD,
        form={"queue_lifespan_secs": "1e999"},
    ),
    case(
        "register-lifespan-nan", "POST", "/register", 400, BAD, form={"queue_lifespan_secs": "NaN"}
    ),
    case("register-narrow-a-dict", "POST", "/register", 400, BAD, form={"narrow": "{}"}),
    case(
        "register-include_subscribers-int",
        "POST",
        "/register",
        400,
        BAD,
        form={"include_subscribers": "1"},
    ),
    case(
        "register-include_subscribers-word",
        "POST",
        "/register",
        400,
        BAD,
        form={"include_subscribers": "yes"},
    ),
    case(
        "register-ignored-flag-wrong-type",
        "POST",
        "/register",
        400,
        BAD,
        form={"apply_markdown": '"true"'},
    ),
    case(
        "register-event_types-10000-deep",
        "POST",
        "/register",
        400,
        BAD,
        form={"event_types": deep_list(DEEP)},
    ),
    case(
        "register-narrow-100-deep", "POST", "/register", 400, BAD, form={"narrow": deep_list(100)}
    ),
    case(
        "register-capabilities-10000-deep",
        "POST",
        "/register",
        400,
        BAD,
        form={"client_capabilities": '{"a": ' + deep_list(DEEP) + "}"},
    ),
    case(
        "register-event_types-nul",
        "POST",
        "/register",
        400,
        BAD,
        form={"event_types": '["realm_user\\u0000"]'},
    ),
    case(
        "register-event_types-surrogate",
        "POST",
        "/register",
        400,
        BAD,
        form={"event_types": '["\\ud800"]'},
    ),
    case(
        "register-capabilities-surrogate-key",
        "POST",
        "/register",
        400,
        BAD,
        form={"client_capabilities": '{"\\udfff": true}'},
    ),
    case(
        "register-invalid-utf8-form-value",
        "POST",
        "/register",
        400,
        BAD,
        body=b"event_types=%5B%22%FF%22%5D",
    ),
    case(
        "register-unknown-field-and-bad-one",
        "POST",
        "/register",
        400,
        BAD,
        form={"no_such_field": "[", "event_types": "x"},
    ),
    case("register-body-over-limit", "POST", "/register", 413, BAD, form={"narrow": TOO_BIG}),
    case(
        "register-body-over-limit-anonymous",
        "POST",
        "/register",
        413,
        BAD,
        user=None,
        form={"narrow": TOO_BIG},
    ),
    # -- GET and DELETE /events ---------------------------------------------------------
    case(
        "events-missing-queue_id",
        "GET",
        "/events?dont_block=true",
        400,
        MISSING,
        var_name="queue_id",
    ),
    case("events-queue_id-invalid-utf8", "GET", "/events?queue_id=%FF%FE", 400, BAD),
    case("events-queue_id-nul", "GET", "/events?queue_id=a%00b", 400, BAD),
    case("events-unknown-queue", "GET", "/events?queue_id=nope&dont_block=true", 400, BAD_QUEUE),
    case("events-last_event_id-word", "GET", "/events?queue_id=q&last_event_id=abc", 400, BAD),
    case("events-last_event_id-huge", "GET", f"/events?queue_id=q&last_event_id={HUGE}", 400, BAD),
    case("events-last_event_id-float", "GET", "/events?queue_id=q&last_event_id=1.5", 400, BAD),
    case("events-dont_block-word", "GET", "/events?queue_id=q&dont_block=yes", 400, BAD),
    case("events-delete-missing-queue_id", "DELETE", "/events", 400, MISSING, var_name="queue_id"),
    case(
        "events-delete-unknown-queue",
        "DELETE",
        "/events",
        400,
        BAD_QUEUE,
        form={"queue_id": "nope"},
    ),
    # nginx routes a poll by the first queue_id; the server refuses a second one rather
    # than read another queue than the one the poll was routed for.
    case(
        "events-queue_id-twice",
        "GET",
        "/events?queue_id=first&queue_id=second&dont_block=true",
        400,
        BAD,
    ),
    case(
        "events-delete-queue_id-query-and-body",
        "DELETE",
        "/events?queue_id=first",
        400,
        BAD,
        form={"queue_id": "second"},
    ),
    case("events-delete-invalid-utf8", "DELETE", "/events", 400, BAD, body=b"queue_id=%C3%28"),
    case(
        "events-delete-body-over-limit", "DELETE", "/events", 413, BAD, form={"queue_id": TOO_BIG}
    ),
    # -- authentication (GET /users) ----------------------------------------------------
    case("auth-none", "GET", "/users", 401, "UNAUTHORIZED", user=None),
    case("auth-not-base64", "GET", "/users", 401, BAD_KEY, authorization="Basic !!!not-base64"),
    case("auth-non-ascii", "GET", "/users", 401, BAD_KEY, authorization="Basic \u00e9\u00e9"),
    case(
        "auth-no-colon",
        "GET",
        "/users",
        401,
        BAD_KEY,
        authorization=basic(b"member@zulip.example.com"),
    ),
    case("auth-invalid-utf8", "GET", "/users", 401, BAD_KEY, authorization=basic(b"\xff\xfe:key")),
    case(
        "auth-nul-in-email",
        "GET",
        "/users",
        401,
        BAD_KEY,
        authorization=basic(b"member\x00@zulip.example.com:key"),
    ),
    case("auth-empty", "GET", "/users", 401, BAD_KEY, authorization="Basic "),
    case("auth-other-scheme", "GET", "/users", 401, BAD_KEY, authorization="Bearer abc"),
    case(
        "auth-wrong-key",
        "GET",
        "/users",
        401,
        BAD_KEY,
        authorization=basic(b"member@zulip.example.com:wrong"),
    ),
    # -- POST /users (administrators) ---------------------------------------------------
    case(
        "create-user-missing-email", "POST", "/users", 400, MISSING, user="admin", var_name="email"
    ),
    case(
        "create-user-missing-password",
        "POST",
        "/users",
        400,
        MISSING,
        user="admin",
        form={"email": "new@zulip.example.com"},
        var_name="password",
    ),
    case(
        "create-user-missing-full_name",
        "POST",
        "/users",
        400,
        MISSING,
        user="admin",
        form={"email": "new@zulip.example.com", "password": "x"},
        var_name="full_name",
    ),
    case(
        "create-user-bad-email",
        "POST",
        "/users",
        400,
        BAD,
        user="admin",
        form={"email": "not-an-email", "password": "x", "full_name": "New"},
    ),
    case(
        "create-user-nul-email",
        "POST",
        "/users",
        400,
        BAD,
        user="admin",
        form={"email": "new\x00@zulip.example.com", "password": "x", "full_name": "New"},
    ),
    case(
        "create-user-invalid-utf8",
        "POST",
        "/users",
        400,
        BAD,
        user="admin",
        body=b"email=%FF%40zulip.example.com&password=x&full_name=New",
    ),
    case(
        "create-user-control-char-name",
        "POST",
        "/users",
        400,
        BAD,
        user="admin",
        form={"email": "new@zulip.example.com", "password": "x", "full_name": "\x07bell"},
    ),
    case(
        "create-user-long-name",
        "POST",
        "/users",
        400,
        BAD,
        user="admin",
        form={"email": "new@zulip.example.com", "password": "x", "full_name": "n" * 5000},
    ),
    case(
        "create-user-taken-email",
        "POST",
        "/users",
        400,
        BAD,
        user="admin",
        form={"email": "{member_email}", "password": "x", "full_name": "Again"},
    ),
    case(
        "create-user-as-member",
        "POST",
        "/users",
        400,
        PRINCIPAL,
        form={"email": "new@zulip.example.com", "password": "x", "full_name": "New"},
    ),
    # -- /users/{id} and /users/{id}/reactivate -----------------------------------------
    case("get-user-word", "GET", "/users/abc", 400, BAD),
    case("get-user-float", "GET", "/users/1.5", 400, BAD),
    case("get-user-superscript-digit", "GET", "/users/%C2%B2", 400, BAD),
    case("get-user-huge", "GET", f"/users/{HUGE}", 400, BAD),
    case("get-user-past-max-id", "GET", f"/users/{PAST_MAX_ID}", 400, BAD),
    case("get-user-negative", "GET", "/users/-1", 400, BAD),
    case("get-user-invalid-utf8", "GET", "/users/%FF", 400, BAD),
    case("deactivate-negative", "DELETE", "/users/-1", 400, BAD, user="admin"),
    case("deactivate-zero", "DELETE", "/users/0", 400, BAD, user="admin"),
    case("deactivate-word", "DELETE", "/users/someone", 400, BAD, user="admin"),
    # /users/me is the caller's own profile (GET only), never a user id to deactivate.
    case("deactivate-me", "DELETE", "/users/me", 405, BAD, user="admin"),
    case("deactivate-huge", "DELETE", f"/users/{HUGE}", 400, BAD, user="admin"),
    case("deactivate-past-max-id", "DELETE", f"/users/{PAST_MAX_ID}", 400, BAD, user="admin"),
    case("deactivate-as-member", "DELETE", "/users/{loner_id}", 400, PRINCIPAL),
    case("reactivate-negative", "POST", "/users/-1/reactivate", 400, BAD, user="admin"),
    case("reactivate-word", "POST", "/users/x/reactivate", 400, BAD, user="admin"),
    case("reactivate-huge", "POST", f"/users/{HUGE}/reactivate", 400, BAD, user="admin"),
    case("reactivate-active-user", "POST", "/users/{member_id}/reactivate", 400, BAD, user="admin"),
    # -- channels -----------------------------------------------------------------------
    case("streams-flag-word", "GET", "/streams?include_public=maybe", 400, BAD),
    case("streams-flag-int", "GET", "/streams?include_subscribed=1", 400, BAD),
    case("stream-id-missing", "GET", "/get_stream_id", 400, MISSING, var_name="stream"),
    case("stream-id-invalid-utf8", "GET", "/get_stream_id?stream=%FF", 400, BAD),
    case("stream-id-nul", "GET", "/get_stream_id?stream=public%00", 400, BAD),
    case("stream-id-unknown", "GET", "/get_stream_id?stream=nope", 400, NO_STREAM),
    case(
        "stream-id-invisible", "GET", "/get_stream_id?stream=private", 400, NO_STREAM, user="loner"
    ),
    case("stream-members-word", "GET", "/streams/abc/members", 400, BAD),
    case("stream-members-negative", "GET", "/streams/-1/members", 400, BAD),
    case("stream-members-huge", "GET", f"/streams/{HUGE}/members", 400, BAD),
    case("stream-members-past-max-id", "GET", f"/streams/{PAST_MAX_ID}/members", 400, BAD),
    case(
        "subscriptions-flag-word", "GET", "/users/me/subscriptions?include_subscribers=x", 400, BAD
    ),
    # -- POST /users/me/subscriptions ---------------------------------------------------
    case(
        "subscribe-missing",
        "POST",
        "/users/me/subscriptions",
        400,
        MISSING,
        form={"principals": "[]"},
        var_name="subscriptions",
    ),
    case(
        "subscribe-not-json",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": "design"},
    ),
    case(
        "subscribe-a-dict",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '{"name": "design"}'},
    ),
    case(
        "subscribe-ints", "POST", "/users/me/subscriptions", 400, BAD, form={"subscriptions": "[1]"}
    ),
    case(
        "subscribe-no-name",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '[{"nam": "design"}]'},
    ),
    case(
        "subscribe-empty", "POST", "/users/me/subscriptions", 400, BAD, form={"subscriptions": "[]"}
    ),
    case(
        "subscribe-blank-name",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["   "]'},
    ),
    case(
        "subscribe-long-name",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": json.dumps(["c" * 1000])},
    ),
    case(
        "subscribe-nul-name",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '[{"name": "a\\u0000b"}]'},
    ),
    case(
        "subscribe-surrogate-name",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["\\ud83d"]'},
    ),
    case(
        "subscribe-10000-deep",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": deep_list(DEEP)},
    ),
    case(
        "subscribe-principal-huge",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["new"]', "principals": f"[{HUGE}]"},
    ),
    case(
        "subscribe-principal-past-max-id",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["new"]', "principals": f"[{PAST_MAX_ID}]"},
    ),
    case(
        "subscribe-principal-negative",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["new"]', "principals": "[-1]"},
    ),
    case(
        "subscribe-principal-bool",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["new"]', "principals": "[true]"},
    ),
    case(
        "subscribe-principal-nul",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["new"]', "principals": '["x\\u0000@zulip.example.com"]'},
    ),
    case(
        "subscribe-principal-unknown",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["new"]', "principals": '["nobody@zulip.example.com"]'},
    ),
    case(
        "subscribe-principals-a-string",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["new"]', "principals": '"{admin_email}"'},
    ),
    case(
        "subscribe-invite_only-word",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["new"]', "invite_only": "yes"},
    ),
    case(
        "subscribe-ignored-flag-int",
        "POST",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["new"]', "announce": "1"},
    ),
    case(
        "subscribe-web-public-as-member",
        "POST",
        "/users/me/subscriptions",
        400,
        PRINCIPAL,
        form={"subscriptions": '["new"]', "is_web_public": "true"},
    ),
    case(
        "subscribe-create-as-guest",
        "POST",
        "/users/me/subscriptions",
        400,
        PRINCIPAL,
        user="guest",
        form={"subscriptions": '["new"]'},
    ),
    case(
        "subscribe-body-over-limit",
        "POST",
        "/users/me/subscriptions",
        413,
        BAD,
        form={"subscriptions": json.dumps([TOO_BIG])},
    ),
    # -- DELETE /users/me/subscriptions -------------------------------------------------
    case(
        "unsubscribe-missing",
        "DELETE",
        "/users/me/subscriptions",
        400,
        MISSING,
        var_name="subscriptions",
    ),
    case(
        "unsubscribe-objects",
        "DELETE",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '[{"name": "public"}]'},
    ),
    case(
        "unsubscribe-empty",
        "DELETE",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": "[]"},
    ),
    case(
        "unsubscribe-unknown",
        "DELETE",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["nope"]'},
    ),
    case(
        "unsubscribe-nul",
        "DELETE",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["public\\u0000"]'},
    ),
    case(
        "unsubscribe-others-as-member",
        "DELETE",
        "/users/me/subscriptions",
        400,
        PRINCIPAL,
        form={"subscriptions": '["public"]', "principals": '["{guest_email}"]'},
    ),
    case(
        "unsubscribe-principal-huge",
        "DELETE",
        "/users/me/subscriptions",
        400,
        BAD,
        form={"subscriptions": '["public"]', "principals": f"[{HUGE}]"},
    ),
    # -- eventq's admin views -----------------------------------------------------------
    case("queues-as-member", "GET", "/eventq/queues", 400, PRINCIPAL),
    case("clients-as-member", "GET", "/eventq/clients", 400, PRINCIPAL),
    # -- wrong methods and unknown paths ------------------------------------------------
    case("method-patch-users", "PATCH", "/users", 405, BAD, form={"email": "x"}),
    case("method-put-register", "PUT", "/register", 405, BAD),
    case("method-get-register", "GET", "/register", 405, BAD),
    case("method-post-server_settings", "POST", "/server_settings", 405, BAD, user=None),
    case("method-delete-streams", "DELETE", "/streams", 405, BAD),
    case("method-post-events", "POST", "/events", 405, BAD, form={"queue_id": "q"}),
    case("unknown-path", "GET", "/no_such_endpoint", 404, BAD),
    case("unknown-subpath", "GET", "/users/1/nope", 404, BAD),
    case("unknown-version", "GET", "//api/v2/users", 404, BAD),
]

# Unknown parameters are ignored: with only them, read-only requests succeed.
IGNORED = [
    pytest.param("/users?no_such_field=1&client_gravatar=true", id="users"),
    pytest.param("/streams?foo=%5B%5B%5B&include_public=true", id="streams"),
    pytest.param("/users/me/subscriptions?x=%FF%FE", id="subscriptions-invalid-utf8-unknown"),
    pytest.param("/users/{member_id}?extra=" + quote(deep_list(DEEP)), id="user-deep-unknown"),
    pytest.param("/get_stream_id?stream=public&x=%00", id="stream-id"),
]


@dataclass
class Live:
    """The server, the realm and a connection to the database under both."""

    url: str
    realm: SampleRealm
    db: Database


@pytest.fixture(scope="module", params=BACKENDS)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """One server per backend on a migrated database holding the sample realm."""
    with database_url_for(str(request.param), str(tmp_path_factory.mktemp("hostile"))) as url:
        upgrade(url)
        db = Database(url)
        try:
            realm = make_sample_realm(db)
            with live_server(url) as server:
                yield Live(server.url, realm, db)
        finally:
            db.dispose()


def database_state(live: Live) -> dict[str, Any]:
    """Everything a request could change: users, channels, subscriptions, events, queues."""
    realm_id = live.realm.realm_id
    with live.db.snapshot() as session:
        return {
            "users": sorted(
                tuple(row)
                for row in session.execute(
                    select(
                        UserProfile.id,
                        UserProfile.email,
                        UserProfile.full_name,
                        UserProfile.role,
                        UserProfile.is_active,
                        UserProfile.api_key,
                    )
                )
            ),
            "streams": sorted(
                tuple(row)
                for row in session.execute(
                    select(Stream.id, Stream.name, Stream.invite_only, Stream.is_web_public)
                )
            ),
            "subscriptions": sorted(
                tuple(row)
                for row in session.execute(
                    select(
                        Subscription.user_profile_id,
                        Subscription.stream_id,
                        Subscription.active,
                        Subscription.is_user_active,
                    )
                )
            ),
            "outbox": session.scalar(select(func.count()).where(OutboxEvent.realm_id == realm_id)),
            "last_event_seq": session.scalar(
                select(Realm.last_event_seq).where(Realm.id == realm_id)
            ),
            "queues": sorted(session.scalars(select(QueueDescriptorRow.queue_id))),
        }


def fill(text: str, realm: SampleRealm) -> str:
    """`text` with `{member_id}`, `{admin_email}` etc. of the sample realm filled in."""
    names = {f"{name}_id": str(user_id) for name, user_id in realm.users.items()}
    names.update({f"{name}_email": email for name, email in realm.emails.items()})
    for name, value in names.items():
        text = text.replace("{" + name + "}", value)
    return text


def send(live: Live, hostile: Hostile) -> requests.Response:
    path = fill(hostile.path, live.realm)
    url = live.url + (path[1:] if path.startswith("//") else "/api/v1" + path)
    headers: dict[str, str] = {}
    auth = None
    if hostile.authorization is not None:
        headers["Authorization"] = hostile.authorization
    elif hostile.user is not None:
        auth = (live.realm.emails[hostile.user], live.realm.api_keys[hostile.user])
    data: bytes | None = hostile.body
    if hostile.form:
        data = urlencode({k: fill(v, live.realm) for k, v in hostile.form.items()}).encode()
    if data is not None:
        headers["Content-Type"] = FORM
    return requests.request(
        hostile.method,
        url,
        data=data,
        headers=headers,
        auth=auth,
        timeout=REQUEST_TIMEOUT_SECS,
    )


def assert_documented_error(method: str, path: str, status: int, body: object) -> None:
    """Zulip's error JSON, and the documented answer where the document has the call."""
    error_schema = load_document()["components"]["schemas"]["JsonError"]
    Draft202012Validator(error_schema).validate(body)
    template = match_path(path)
    if template is not None and method.lower() in load_document()["paths"][template]:
        validate_response(method, path, status, body)


@pytest.mark.parametrize("hostile", CASES)
def test_malformed_request_is_refused_and_changes_nothing(live: Live, hostile: Hostile) -> None:
    before = database_state(live)
    response = send(live, hostile)
    assert response.headers["Content-Type"].startswith("application/json"), response.text
    body = response.json()
    assert (response.status_code, body.get("code")) == (hostile.status, hostile.code), body
    assert body["result"] == "error" and isinstance(body["msg"], str) and body["msg"]
    if hostile.var_name is not None:
        assert body["var_name"] == hostile.var_name
    path = fill(hostile.path, live.realm)
    if not path.startswith("//"):
        assert_documented_error(hostile.method, "/api/v1" + path, response.status_code, body)
    assert database_state(live) == before


@pytest.mark.parametrize("path", IGNORED)
def test_unknown_parameters_are_ignored(live: Live, path: str) -> None:
    before = database_state(live)
    filled = fill(path, live.realm)
    response = requests.get(
        f"{live.url}/api/v1{filled}",
        auth=(live.realm.emails["member"], live.realm.api_keys["member"]),
        timeout=REQUEST_TIMEOUT_SECS,
    )
    assert response.status_code == 200, response.text
    validate_response("GET", "/api/v1" + filled, 200, response.json())
    assert database_state(live) == before


def test_a_huge_body_is_refused_unread(live: Live) -> None:
    """8 MiB (the review's attack, and the old hard cap): refused from the Content-Length
    alone with the JSON 413 of the route's limit (`server.api.body_limits`), the connection
    closed after a short linger without the body being kept; the server goes on
    answering others. (`tests/test_body_bounds.py` shows the answer comes before the
    body is sent.)"""
    big = b"narrow=" + b"x" * (8 * 1024 * 1024)
    try:
        response = requests.post(
            f"{live.url}/api/v1/register",
            data=big,
            headers={"Content-Type": FORM},
            auth=(live.realm.emails["member"], live.realm.api_keys["member"]),
            timeout=REQUEST_TIMEOUT_SECS,
        )
    except requests.ConnectionError:
        pass  # closed before the client finished sending: refused all the same
    else:
        assert response.status_code == 413, response.text
        assert response.headers["Connection"] == "close"
        assert response.json()["msg"] == (
            f"The request body is larger than {body_limit('POST', '/api/v1/register')} bytes."
        )
    response = requests.get(f"{live.url}/api/v1/server_settings", timeout=REQUEST_TIMEOUT_SECS)
    assert response.status_code == 200


def test_event_types_at_their_bounds_register(live: Live) -> None:
    """The bounds are not the only check: 100 names Zulip documents register, and a name
    within the length bound that Zulip does not document is refused by name."""
    auth = (live.realm.emails["member"], live.realm.api_keys["member"])
    names = ["message", "realm_user", "subscription", "stream"] * 25
    response = requests.post(
        f"{live.url}/api/v1/register",
        data={"event_types": json.dumps(names), "fetch_event_types": json.dumps(names)},
        auth=auth,
        timeout=REQUEST_TIMEOUT_SECS,
    )
    assert response.status_code == 200, response.text
    unknown = "x" * 64
    response = requests.post(
        f"{live.url}/api/v1/register",
        data={"event_types": json.dumps(["message", unknown])},
        auth=auth,
        timeout=REQUEST_TIMEOUT_SECS,
    )
    assert response.status_code == 400, response.text
    assert response.json()["msg"] == f"Invalid event type {unknown!r} in event_types"
