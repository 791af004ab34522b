"""Property-based fuzzing of the HTTP API from its OpenAPI document (schemathesis).

For every documented operation schemathesis generates requests, valid ones and ones that
break the document (wrong types, missing fields, odd strings, NUL characters, huge
numbers), sends them to a real `eventq serve` as the sample realm's member, and checks
that no answer is a server error and that every answer matches the document: its status
is documented, and its body is JSON of the documented schema.

The member cannot deactivate anyone or use the admin endpoints, so every generated case
leaves the realm usable for the next one; what it may create (channels, subscriptions,
queues) is harmless. One server per backend serves every operation's cases.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from migrations import upgrade
from models.database import Database
from tests.helpers.databases import BACKENDS, database_url_for
from tests.helpers.openapi import DOCUMENT_PATH, load_document
from tests.helpers.realms import make_sample_realm
from tests.helpers.server import live_server

# Enough cases per operation to reach the odd corners of each parameter (schemathesis
# also runs the document's examples and its boundary "coverage" cases first), while the
# whole fuzz stays well within a minute per backend (about 30 s each when measured).
MAX_EXAMPLES = 50
# Every generated request is answered at once (no valid queue id is ever guessed, so no
# poll waits); this only stops a hung server from hanging the suite.
REQUEST_TIMEOUT_SECS = 10.0

SCHEMA = schemathesis.openapi.from_path(DOCUMENT_PATH)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass(frozen=True)
class Target:
    """Where the cases go and as whom."""

    base_url: str
    auth: tuple[str, str]
    # The server's root, for the operations whose path item names a server of its own
    # (the probes /healthz and /readyz live outside /api/v1).
    root_url: str = ""

    def base_for(self, path: str) -> str:
        servers = load_document()["paths"][path].get("servers")
        return self.root_url + servers[0]["url"].rstrip("/") if servers else self.base_url


@pytest.fixture(scope="module", params=BACKENDS)
def target(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Target]:
    """A live server on a migrated database holding the sample realm, once per backend."""
    with database_url_for(str(request.param), str(tmp_path_factory.mktemp("fuzz"))) as url:
        upgrade(url)
        db = Database(url)
        try:
            realm = make_sample_realm(db)
        finally:
            db.dispose()
        # Rate limits off: a 429 is documented and harmless, but each one is a case that
        # never reaches the handler under test (tests/test_abuse.py covers the limits).
        with live_server(url, env={"EVENTQ_RATE_LIMITING": "off"}) as server:
            yield Target(
                f"{server.url}/api/v1",
                (realm.emails["member"], realm.api_keys["member"]),
                server.url,
            )


@SCHEMA.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    # Drawing a whole request (path, query and form body) can outlast Hypothesis's
    # budget for generating data on a slow machine; that says nothing about the server.
    suppress_health_check=[HealthCheck.too_slow],
)
def test_no_server_error_and_every_answer_is_documented(
    case: schemathesis.Case, target: Target
) -> None:
    case.call_and_validate(
        base_url=target.base_for(case.operation.path),
        auth=target.auth,
        timeout=REQUEST_TIMEOUT_SECS,
        checks=CHECKS,
    )
