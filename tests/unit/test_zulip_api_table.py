"""docs/api.md's "Zulip's API in eventq" tables follow the code.

The endpoint table says, for each endpoint of Zulip's API document, whether eventq serves
it; the event table says which of Zulip's event types eventq sends. A route added or
removed without the table, or an event type sent without a Zulip shape the conformance
tests check, fails here. What eventq routes is read from `server/api/openapi.json`, which
`tests/unit/test_openapi_document.py` keeps equal to the routes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import zulip_messages, zulip_schema

ROOT = Path(__file__).resolve().parents[2]
SECTION_TITLE = "## Zulip's API in eventq"
ENDPOINT = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s]*)`")
BACKTICKED = re.compile(r"`(\w+)`")
# The endpoints of eventq's OpenAPI document that are not Zulip's: eventq's own.
EVENTQ_OWN = {
    ("GET", "/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/eventq/queues"),
    ("GET", "/eventq/clients"),
    ("GET", "/eventq/metrics"),
}
HTTP_METHODS = {"get", "post", "put", "patch", "delete"}


@dataclass(frozen=True)
class EndpointRow:
    endpoints: tuple[tuple[str, str], ...]
    status: str  # served, fixed or not served


@dataclass(frozen=True)
class EventRow:
    kinds: tuple[str, ...]
    ops: tuple[str | None, ...]
    sent: bool


def _section() -> str:
    text = (ROOT / "docs" / "api.md").read_text()
    start = text.index(SECTION_TITLE)
    end = text.index("\n## ", start + len(SECTION_TITLE))
    return text[start:end]


def _table(section: str, heading: str) -> list[list[str]]:
    """The body rows of the first table under `heading`, as lists of cells."""
    after = section[section.index(heading) :]
    rows: list[list[str]] = []
    for line in after.splitlines()[1:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        rows.append(cells)
    # The header and its `|---|` line.
    assert rows[1][0].startswith("---"), f"no table under {heading}"
    return rows[2:]


def _status(cell: str) -> str:
    for status in ("served", "fixed", "not served"):
        if cell == status or cell.startswith(status + " ") or cell.startswith(status + ":"):
            return status
    raise AssertionError(f"unknown status {cell!r}")


def endpoint_rows() -> list[EndpointRow]:
    return [
        EndpointRow(tuple(ENDPOINT.findall(endpoint)), _status(status))
        for _section_name, endpoint, status in _table(_section(), "### Endpoints")
    ]


def event_rows() -> list[EventRow]:
    rows = []
    for kinds, ops, status in _table(_section(), "### Event types"):
        assert status.startswith(("sent", "never sent")), status
        rows.append(
            EventRow(
                tuple(BACKTICKED.findall(kinds)),
                tuple(BACKTICKED.findall(ops)) or (None,),
                status.startswith("sent"),
            )
        )
    return rows


def eventq_routes() -> set[tuple[str, str]]:
    document = json.loads((ROOT / "server" / "api" / "openapi.json").read_text())
    return {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }


def test_the_tables_were_read() -> None:
    endpoints = endpoint_rows()
    events = event_rows()
    assert sum(row.status == "not served" for row in endpoints) >= 10
    assert sum(row.sent for row in events) >= 10
    assert sum(not row.sent for row in events) >= 10


def test_every_served_endpoint_has_a_row_of_its_own_and_is_routed() -> None:
    routed = eventq_routes()
    served = [row for row in endpoint_rows() if row.status != "not served"]
    for row in served:
        assert len(row.endpoints) == 1, f"a served row names one endpoint: {row}"
    marked = [row.endpoints[0] for row in served]
    assert len(marked) == len(set(marked)), "an endpoint has two rows"
    missing = sorted(set(marked) - routed)
    assert missing == [], f"marked served, but eventq does not route: {missing}"


def test_every_zulip_endpoint_eventq_routes_is_marked_served() -> None:
    rows = endpoint_rows()
    served = {row.endpoints[0] for row in rows if row.status != "not served"}
    not_served = {
        endpoint for row in rows if row.status == "not served" for endpoint in row.endpoints
    }
    routed_zulip = eventq_routes() - EVENTQ_OWN
    assert sorted(routed_zulip - served) == []
    # Nothing is both, and nothing eventq routes is called not served.
    assert sorted(not_served & (served | routed_zulip)) == []


def test_every_served_endpoint_has_a_zulip_shape_or_a_fixed_value() -> None:
    """Answers are checked against `zulip_schema.ANSWERS`, the rows marked `fixed` too
    (their one answer is also named in the table)."""
    zulip_messages.install()
    rows = endpoint_rows()
    served = {row.endpoints[0] for row in rows if row.status == "served"}
    fixed = {row.endpoints[0] for row in rows if row.status == "fixed"}
    assert fixed == {("GET", "/realm/emoji"), ("GET", "/users/me/alert_words")}
    assert not (served | fixed) - set(zulip_schema.ANSWERS)


def test_every_event_marked_sent_has_a_zulip_shape() -> None:
    zulip_messages.install()
    sent = {(kind, op) for row in event_rows() if row.sent for kind in row.kinds for op in row.ops}
    never = {
        (kind, op) for row in event_rows() if not row.sent for kind in row.kinds for op in row.ops
    }
    assert sorted(sent & never) == []
    assert sorted(sent - set(zulip_schema.EVENTS)) == []
    # Every shape the tests accept is one eventq sends (an accepted shape eventq never
    # sends is marked so in the table).
    accepted = set(zulip_schema.EVENTS)
    assert sorted(accepted - sent - never) == []
