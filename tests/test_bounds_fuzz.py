"""Property-based fuzzing of the hardening bounds, against a real `eventq serve`.

What an adversarial review did by hand, as properties Hypothesis keeps trying:

* **Bodies** (`server.api.body_limits`): any route, framing (a length or chunked), size,
  credentials or none, a body sent whole or dropped halfway. A length over the route's
  limit is refused with a JSON 413 before a byte of the body is sent; a chunked body over
  it is refused as it arrives; any other body is read and answered without a 5xx. The
  server's body budget is set to exactly one largest body, so a reservation that was not
  given back (a leak on any path) shows as a 503 for the next large body.
* **Narrows** (`models.messages.narrows.parse_narrow`): random well-formed narrows of random size
  register exactly when they are within the bounds the test computes itself (terms, users
  named, characters of text), and are refused as Zulip refuses them otherwise.
* **Rendered sizes** (`models.messages.rendering.render_markdown`): random Markdown of tables,
  quotes, lists and emphasis. A message the server accepts reads back rendered within
  `MAX_RENDERED_LENGTH`; one it refuses says Zulip's "Unable to render message", writes
  nothing, and is one that an unbounded renderer built here shows to be over a bound.
* **Acknowledgement values** (`server.api.ratelimit.PollLedger`): any `last_event_id`, in
  range or not, on a queue with a few events. No answer is a 5xx, and a user's polls that
  made no progress (no new event acknowledged, none handed out) are answered at most as
  often as the wasted-poll budget allows before the 429s begin.
"""

from __future__ import annotations

import base64
import itertools
import json
import socket
import string
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import urlencode

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt
from sqlalchemy import func, select

from actions.users import do_create_user
from migrations import upgrade
from models.database import Database
from models.messages.narrows import MAX_NARROW_OPERAND_CHARS, MAX_NARROW_TERMS, MAX_NARROW_USERS
from models.messages.rendering import MAX_RENDER_BLOCK_TOKENS, MAX_RENDERED_LENGTH
from models.tables import Message, OutboxEvent
from server.api.body_limits import LARGEST_BODY_LIMIT, body_limit
from tests.helpers.databases import database_url_for
from tests.helpers.realms import SampleRealm, make_sample_realm
from tests.helpers.server import LiveServer, live_server

REQUEST_TIMEOUT_SECS = 10.0
# How long a freed reservation may take to show (the server hears of a close at once).
RELEASE_TIMEOUT_SECS = 10.0
# The wasted-poll budget of the acknowledgement server.
POLL_BUDGET = 5
FORM = "application/x-www-form-urlencoded"
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@dataclass
class Served:
    """A live server on the sample realm, and its database."""

    server: LiveServer
    realm: SampleRealm
    db: Database

    def auth(self, name: str = "member") -> tuple[str, str]:
        return self.realm.emails[name], self.realm.api_keys[name]


def served(tmp_path_factory: pytest.TempPathFactory, env: dict[str, str]) -> Iterator[Served]:
    """A migrated SQLite database with the sample realm, and a server on it. The bounds
    are the server's, whatever the database (tests/test_body_bounds.py,
    tests/test_render_bounds.py and tests/test_narrow_bounds.py run both)."""
    with database_url_for("sqlite", str(tmp_path_factory.mktemp("bounds"))) as url:
        upgrade(url)
        db = Database(url)
        try:
            realm = make_sample_realm(db)
            with live_server(url, env) as server:
                yield Served(server, realm, db)
        finally:
            db.dispose()


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Rate limits off (each 429 would be a case that tests nothing), and a body budget
    of exactly one largest body, so that one reservation not given back shows."""
    env = {
        "EVENTQ_RATE_LIMITING": "off",
        "EVENTQ_MAX_BODY_BYTES_IN_FLIGHT": str(LARGEST_BODY_LIMIT),
    }
    yield from served(tmp_path_factory, env)


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Rate limits on, with a small wasted-poll budget."""
    yield from served(tmp_path_factory, {"EVENTQ_RATE_LIMIT_POLLS": f"60:{POLL_BUDGET}"})


# -- bodies ---------------------------------------------------------------------------------


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def read_answer(reader: BinaryIO) -> RawAnswer:
    """One HTTP/1.1 answer from a socket's file: status line, headers, a sized body."""
    status_line = reader.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = reader.read(int(headers.get("content-length", "0")))
    return RawAnswer(status, headers, body)


@contextmanager
def open_request(
    served: Served, method: str, path: str, framing: str, size: int, authenticated: bool
) -> Iterator[tuple[socket.socket, BinaryIO]]:
    """Send a request's header with `Expect: 100-continue`: the server then answers
    "100 Continue" once it will read the body, or its refusal instead. The connection is
    closed on leaving (the socket and its reader both, so that the server sees it)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {FORM}"]
    lines.append("Expect: 100-continue")
    if framing == "chunked":
        lines.append("Transfer-Encoding: chunked")
    else:
        lines.append(f"Content-Length: {size}")
    if authenticated:
        email, key = served.auth()
        token = base64.b64encode(f"{email}:{key}".encode()).decode()
        lines.append(f"Authorization: Basic {token}")
    address = ("127.0.0.1", served.server.port)
    with socket.create_connection(address, REQUEST_TIMEOUT_SECS) as connection:
        with connection.makefile("rb") as reader:
            connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
            yield connection, reader


def body_of(size: int) -> bytes:
    """A form body of exactly `size` bytes: one unknown parameter (ignored)."""
    return (b"filler=" + b"a" * size)[:size] if size >= 7 else b"a" * size


def send_body(connection: socket.socket, body: bytes, framing: str) -> None:
    if framing == "length":
        connection.sendall(body)
        return
    for start in range(0, len(body), 8192):
        chunk = body[start : start + 8192]
        connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    connection.sendall(b"0\r\n\r\n")


def assert_budget_is_free(served: Served) -> None:
    """A body of the largest size any route allows is admitted: nothing else holds the
    budget (it holds exactly one). The server frees a reservation when it hears that a
    connection closed, so this asks again until then, up to a deadline. The probe then
    sends its body whole: the server frees its reservation once the body is in, before
    it answers, so the budget is free again when the answer arrives."""
    deadline = time.monotonic() + RELEASE_TIMEOUT_SECS
    while True:
        with open_request(
            served, "POST", "/api/v1/messages", "length", LARGEST_BODY_LIMIT, False
        ) as (connection, reader):
            interim = reader.readline()
            if interim.startswith(b"HTTP/1.1 100"):
                reader.readline()
                connection.sendall(body_of(LARGEST_BODY_LIMIT))
                assert read_answer(reader).status == 401  # read whole, then refused
                return
            assert interim.startswith(b"HTTP/1.1 503"), interim
        assert time.monotonic() < deadline, "a body reservation was never given back"


ROUTES = [
    ("POST", "/api/v1/messages"),
    ("POST", "/api/v1/register"),
    ("POST", "/api/v1/users/me/subscriptions"),
    ("DELETE", "/api/v1/users/me/subscriptions"),
    ("DELETE", "/api/v1/events"),
    ("POST", "/api/v1/users"),
    ("POST", "/api/v1/no/such/path"),
]
SIZES = st.one_of(
    st.integers(0, 2 * LARGEST_BODY_LIMIT),
    st.sampled_from([16 * 1024, 16 * 1024 + 1, 64 * 1024, 64 * 1024 + 1]),
    st.sampled_from([LARGEST_BODY_LIMIT, LARGEST_BODY_LIMIT + 1, 8 * 1024 * 1024, 10**30]),
)


@FUZZ
@given(
    route=st.sampled_from(ROUTES),
    framing=st.sampled_from(["length", "chunked"]),
    size=SIZES,
    authenticated=st.booleans(),
    complete=st.booleans(),
)
def test_bodies_are_bounded_before_they_are_read(
    open_server: Served,
    route: tuple[str, str],
    framing: str,
    size: int,
    authenticated: bool,
    complete: bool,
) -> None:
    method, path = route
    limit = body_limit(method, path)
    if framing == "chunked":
        size = min(size, 2 * LARGEST_BODY_LIMIT)  # a chunked body is sent, not announced
    with open_request(open_server, method, path, framing, size, authenticated) as (
        connection,
        reader,
    ):
        if framing == "length" and size > limit:
            refused = read_answer(reader)
            assert refused.status == 413, refused
            assert refused.json()["code"] == "BAD_REQUEST"
            assert refused.headers["connection"] == "close"
        else:
            assert reader.readline().startswith(b"HTTP/1.1 100"), "the body was not asked for"
            reader.readline()  # the blank line after the interim answer
            body = body_of(size)
            if not complete:
                connection.sendall(body[: size // 2])  # then hang up halfway
            else:
                try:
                    send_body(connection, body, framing)
                except OSError:
                    # Only a chunked body over the limit is cut off while it is sent.
                    assert framing == "chunked" and size > limit
                answer = read_answer(reader)
                if framing == "chunked" and size > limit:
                    assert answer.status == 400, answer
                else:
                    assert answer.status < 500 and answer.status != 413, answer
    assert_budget_is_free(open_server)


# -- narrows --------------------------------------------------------------------------------

TEXT = st.text(alphabet=string.ascii_letters, min_size=1, max_size=1500)


@st.composite
def narrow_terms(draw: st.DrawFn) -> tuple[list[dict[str, Any]], int, int]:
    """Well-formed terms (each as Zulip's dict form, some negated), with the users their
    `dm` operands name and the characters of their text operands, counted here."""
    terms: list[dict[str, Any]] = []
    users = characters = 0
    for _ in range(draw(st.integers(0, MAX_NARROW_TERMS + 2))):
        operator = draw(st.sampled_from(["dm", "pm-with", "topic", "channel", "is"]))
        operand: Any
        if operator in ("dm", "pm-with"):
            operand = draw(st.lists(st.integers(1, 10**6), unique=True, min_size=1, max_size=120))
            users += len(operand)
        elif operator == "is":
            operand = "dm"
            characters += len(operand)
        elif operator == "channel":
            operand = draw(st.text(alphabet=string.ascii_letters, min_size=1, max_size=60))
            characters += len(operand)
        else:
            operand = draw(TEXT)
            characters += len(operand)
        terms.append({"operator": operator, "operand": operand, "negated": draw(st.booleans())})
    return terms, users, characters


@FUZZ
@given(drawn=narrow_terms())
def test_a_narrow_registers_exactly_when_it_is_within_its_bounds(
    open_server: Served, drawn: tuple[list[dict[str, Any]], int, int]
) -> None:
    terms, users, characters = drawn
    answer = requests.post(
        open_server.server.url + "/api/v1/register",
        data={"event_types": json.dumps(["message"]), "narrow": json.dumps(terms)},
        auth=open_server.auth(),
        timeout=REQUEST_TIMEOUT_SECS,
    )
    body = answer.json()
    if len(terms) > MAX_NARROW_TERMS:
        assert (answer.status_code, body["code"]) == (400, "BAD_REQUEST"), body
    elif users > MAX_NARROW_USERS or characters > MAX_NARROW_OPERAND_CHARS:
        assert (answer.status_code, body["code"]) == (400, "BAD_NARROW"), body
    else:
        assert answer.status_code == 200, body
        deleted = requests.delete(
            open_server.server.url + "/api/v1/events",
            data={"queue_id": body["queue_id"]},
            auth=open_server.auth(),
            timeout=REQUEST_TIMEOUT_SECS,
        )
        assert deleted.ok, deleted.text


# -- rendered sizes -------------------------------------------------------------------------

# The renderer eventq configures, without its bounds: the oracle for a refusal.
UNBOUNDED = (
    MarkdownIt("commonmark", {"html": False, "breaks": True})
    .enable(["strikethrough", "table"])
    .disable("image")
)
CELL = st.text(alphabet=string.ascii_letters + '"&<', min_size=0, max_size=3)


@st.composite
def table(draw: st.DrawFn) -> str:
    """A Markdown table; a header wider than its rows makes the renderer fill in cells."""
    columns = draw(st.integers(1, 60))
    header = "|" + "|".join(draw(CELL) or "h" for _ in range(columns)) + "|"
    align = "|" + "|".join(draw(st.sampled_from(["-", ":-", "-:", ":-:"])) for _ in range(columns))
    rows = [
        "|" + "|".join(draw(CELL) for _ in range(draw(st.integers(1, columns)))) + "|"
        for _ in range(draw(st.integers(0, 400)))
    ]
    return "\n".join([header, align + "|", *rows])


BLOCK = st.one_of(
    table(),
    st.text(alphabet='"&<> *_~abc\n', max_size=2000),
    st.builds(lambda n: "> " * n + "quote", st.integers(1, 60)),
    st.builds(lambda n: "\n".join(f"{i}. item" for i in range(n)), st.integers(1, 500)),
    st.builds(lambda n: "**" * n + "x" + "**" * n, st.integers(1, 500)),
)


def stored_rows(db: Database) -> tuple[int, int]:
    with db.snapshot() as session:
        return (
            int(session.execute(select(func.count()).select_from(Message)).scalar_one()),
            int(session.execute(select(func.count()).select_from(OutboxEvent)).scalar_one()),
        )


@FUZZ
@given(blocks=st.lists(BLOCK, min_size=1, max_size=6))
def test_a_message_is_rendered_within_the_bound_or_refused_with_zulips_wording(
    open_server: Served, blocks: list[str]
) -> None:
    content = "\n\n".join(blocks)[:10_000].strip() or "x"
    before = stored_rows(open_server.db)
    sent = requests.post(
        open_server.server.url + "/api/v1/messages",
        data={"type": "stream", "to": "public", "topic": "fuzz", "content": content},
        auth=open_server.auth(),
        timeout=REQUEST_TIMEOUT_SECS,
    )
    body = sent.json()
    if sent.status_code == 200:
        fetched = requests.get(
            open_server.server.url + "/api/v1/messages",
            params={
                "anchor": body["id"],
                "num_before": 0,
                "num_after": 0,
                "apply_markdown": "true",
            },
            auth=open_server.auth(),
            timeout=REQUEST_TIMEOUT_SECS,
        )
        (message,) = fetched.json()["messages"]
        assert len(message["content"]) <= MAX_RENDERED_LENGTH
        return
    assert (sent.status_code, body["code"], body["msg"]) == (
        400,
        "BAD_REQUEST",
        "Unable to render message",
    ), body
    assert stored_rows(open_server.db) == before
    tokens = len(UNBOUNDED.parse(content))
    assert tokens > MAX_RENDER_BLOCK_TOKENS or len(UNBOUNDED.render(content)) > MAX_RENDERED_LENGTH


# -- acknowledgement values -----------------------------------------------------------------

_emails = itertools.count()


@st.composite
def acknowledgements(draw: st.DrawFn) -> tuple[int, list[int]]:
    """Events the queue receives first, then the `last_event_id` of each poll."""
    events = draw(st.integers(0, 3))
    ids = st.one_of(
        st.integers(-3, events + 3),
        st.integers(-(2**53), 2**53),
        st.sampled_from([10**6, 2**31, -(2**31)]),
    )
    return events, draw(st.lists(ids, min_size=1, max_size=3 * POLL_BUDGET))


@FUZZ
@given(drawn=acknowledgements())
def test_polls_that_make_no_progress_are_answered_at_most_the_budget(
    limited_server: Served, drawn: tuple[int, list[int]]
) -> None:
    events, last_event_ids = drawn
    url = limited_server.server.url + "/api/v1"
    realm_id = limited_server.realm.realm_id
    # A user of their own, so that each example starts with a whole budget.
    with limited_server.db.write() as session:
        poller = do_create_user(session, realm_id, f"poller{next(_emails)}@fuzz.example.com")
        auth = (poller.email, poller.api_key)
    queue_id = requests.post(
        url + "/register",
        data={"event_types": json.dumps(["realm_user"])},
        auth=auth,
        timeout=REQUEST_TIMEOUT_SECS,
    ).json()["queue_id"]
    for _ in range(events):
        with limited_server.db.write() as session:
            do_create_user(session, realm_id, f"event{next(_emails)}@fuzz.example.com")
    handed_out = acknowledged = -1
    unproductive_answers = 0
    for last_event_id in last_event_ids:
        query = urlencode(
            {"queue_id": queue_id, "last_event_id": last_event_id, "dont_block": "true"}
        )
        answer = requests.get(f"{url}/events?{query}", auth=auth, timeout=REQUEST_TIMEOUT_SECS)
        assert answer.status_code in (200, 400, 429), answer.text
        if answer.status_code == 429:
            continue
        progress = acknowledged < last_event_id <= handed_out and answer.status_code == 200
        if answer.status_code == 200:
            acknowledged = max(acknowledged, last_event_id)
            newest = max((e["id"] for e in answer.json()["events"]), default=-1)
            progress = progress or newest > handed_out
            handed_out = max(handed_out, newest)
        unproductive_answers += not progress
        assert unproductive_answers <= POLL_BUDGET, (last_event_ids, answer.text)
