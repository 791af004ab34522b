"""Request bodies are bounded before they are read (`server.api.body_limits`), against a real
`eventq serve` on loopback, with raw sockets where the test must control what is sent.

* A request announcing a body over its route's limit is answered with a JSON 413 as
  soon as its header has arrived: the client never sends the body. 16 KiB for most
  routes, 64 KiB for register, 256 KiB for sending a message and for subscriptions;
  a 200 KiB message is read and sent.
* A chunked body over its route's limit is refused when its first chunk's size says so.
* The process's budget of body bytes in flight: connections that announce large bodies
  and send them slowly hold it; past it a request with a body gets a 503 with
  Retry-After before its body is read, one without a body is served; each holder gives
  its share back exactly once, whether its body completes or it goes away mid-body.

Whether a request was accepted is seen without waiting: each announcement asks
`Expect: 100-continue`, which the server answers with `100 Continue` once it has decided
to read the body, or with its refusal. Waits are for conditions, with timeouts.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
import tornado.httputil

from server.api.body_limits import (
    DEFAULT_BODY_BYTES_IN_FLIGHT,
    DEFAULT_BODY_LIMIT,
    LARGE_BODY_LIMIT,
    LARGEST_BODY_LIMIT,
    REGISTER_BODY_LIMIT,
    _body_size,
    body_limit,
)
from server.ops.config import DEFAULT_MAX_BODY_BYTES_IN_FLIGHT, MIN_MAX_BODY_BYTES_IN_FLIGHT
from tests.helpers.openapi import validate_response
from tests.helpers.realms import SampleRealm
from tests.helpers.server import LiveServer, live_server

# The limits do not depend on the database: one backend is enough.
SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"])

REQUEST_TIMEOUT_SECS = 10.0
# Generous bound on waiting for something that takes milliseconds. Shorter than the
# server's body timeout (30 s): a server that waits for the body does not answer within it.
ANSWER_TIMEOUT_SECS = 10.0
CONDITION_TIMEOUT_SECS = 15.0
KIB = 1024
MIB = 1024 * KIB
FORM = "application/x-www-form-urlencoded"
# The review's attack announced 8 MiB (the old hard cap).
ATTACK_BYTES = 8 * MIB
# The budget for the budget test: exactly four bodies of the largest route limit.
HOLDERS = 4
TEST_BUDGET = HOLDERS * LARGE_BODY_LIMIT


@dataclass
class RawAnswer:
    status: int
    headers: tornado.httputil.HTTPHeaders
    body: bytes = b""
    closed: bool = False  # the server closed the connection after the answer

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Holder:
    """A connection whose body the server has agreed to read (it answered 100)."""

    sock: socket.socket
    announced: int
    sent: int = 0
    chunked: bool = False


def header(
    method: str,
    path: str,
    *,
    length: int | None = None,
    chunked: bool = False,
    expect: bool = False,
    auth: tuple[str, str] | None = None,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {FORM}"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    if expect:
        lines.append("Expect: 100-continue")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        lines.append(f"Authorization: Basic {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=ANSWER_TIMEOUT_SECS)


def read_head(sock: socket.socket, buffer: bytearray) -> tuple[int, tornado.httputil.HTTPHeaders]:
    """The next answer's status and headers (the rest stays in `buffer`). A server that
    does not answer within ANSWER_TIMEOUT_SECS fails the test (socket timeout)."""
    while b"\r\n\r\n" not in buffer:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no answer within {ANSWER_TIMEOUT_SECS}s") from None
        assert data, f"the server closed the connection without an answer: {bytes(buffer)!r}"
        buffer += data
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    buffer[:] = rest
    status_line, _, header_text = head.decode("latin-1").partition("\r\n")
    match = re.fullmatch(r"HTTP/1\.1 (\d{3})(?: .*)?", status_line)
    assert match, status_line
    return int(match.group(1)), tornado.httputil.HTTPHeaders.parse(header_text + "\r\n")


def read_answer(sock: socket.socket, buffer: bytearray | None = None) -> RawAnswer:
    """A whole final answer (after any 100 Continue), and whether the server closed."""
    buffer = buffer if buffer is not None else bytearray()
    status, headers = read_head(sock, buffer)
    while status == 100:
        status, headers = read_head(sock, buffer)
    # No length (Tornado's bare 400): the answer ends when the connection does.
    until_close = "Content-Length" not in headers or headers.get("Connection") == "close"
    length = int(headers.get("Content-Length", "0"))
    closed = False
    while len(buffer) < length or (until_close and not closed):
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            closed = True
            break
        buffer += data
    return RawAnswer(status, headers, bytes(buffer[:length]), closed)


def announce(
    server: LiveServer,
    method: str,
    path: str,
    size: int | None,
    *,
    chunked: bool = False,
    auth: tuple[str, str] | None = None,
) -> tuple[int, socket.socket, bytearray]:
    """Send a header announcing a body of `size` (or a chunked one) with Expect:
    100-continue, and read the server's decision: 100 (it will read the body), or the
    status of its refusal. Returns (status, socket, what was read past that head)."""
    sock = connect(server)
    sock.sendall(header(method, path, length=size, chunked=chunked, expect=True, auth=auth))
    buffer = bytearray()
    status, _ = read_head(sock, buffer)
    return status, sock, buffer


def assert_json_refusal(
    answer: RawAnswer, status: int, method: str, path: str, msg_part: str
) -> dict[str, Any]:
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers["Content-Type"] == "application/json"
    assert answer.headers["Connection"] == "close"
    assert answer.headers["Cache-Control"] == "no-store"
    assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["X-Request-Id"])
    body = answer.json()
    assert body["result"] == "error" and body["code"] == "BAD_REQUEST", body
    assert msg_part in body["msg"], body
    validate_response(method, path, status, body)
    assert answer.closed, "the server must close the connection after a refusal"
    return body


def refusals(server: LiveServer, kind: str) -> float:
    """`eventq_refusals_total{kind=...}` from the server's /metrics (0 when absent)."""
    text = requests.get(f"{server.url}/metrics", timeout=REQUEST_TIMEOUT_SECS).text
    match = re.search(rf'^eventq_refusals_total\{{kind="{re.escape(kind)}"\}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def log_lines(server: LiveServer, pattern: str) -> list[str]:
    regex = re.compile(pattern)
    return [line for line in list(server.lines) if regex.search(line)]


def await_condition(check: Callable[[], bool], what: str) -> None:
    """Re-check a condition that has no event to wait on until it holds."""
    deadline = time.monotonic() + CONDITION_TIMEOUT_SECS
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {CONDITION_TIMEOUT_SECS}s"


def served(server: LiveServer) -> bool:
    response = requests.get(f"{server.url}/api/v1/server_settings", timeout=REQUEST_TIMEOUT_SECS)
    return response.status_code == 200


# -- the limits, without a server ---------------------------------------------------------


def test_each_route_has_its_limit() -> None:
    assert body_limit("POST", "/api/v1/messages") == LARGE_BODY_LIMIT == 256 * KIB
    assert body_limit("POST", "/api/v1/messages?x=1") == LARGE_BODY_LIMIT
    assert body_limit("POST", "/api/v1/users/me/subscriptions") == LARGE_BODY_LIMIT
    assert body_limit("DELETE", "/api/v1/users/me/subscriptions") == LARGE_BODY_LIMIT
    assert body_limit("POST", "/api/v1/register") == REGISTER_BODY_LIMIT == 64 * KIB
    for method, path in [
        ("GET", "/api/v1/messages"),
        ("PATCH", "/api/v1/messages"),
        ("POST", "/api/v1/messages/"),
        ("DELETE", "/api/v1/events"),
        ("POST", "/api/v1/users"),
        ("POST", "/nowhere"),
    ]:
        assert body_limit(method, path) == DEFAULT_BODY_LIMIT == 16 * KIB, (method, path)


@pytest.mark.parametrize(
    ("headers", "size"),
    [
        ({}, 0),
        ({"Content-Length": "0"}, 0),
        ({"Content-Length": "1234"}, 1234),
        ({"Content-Length": "1234, 1234"}, 1234),
        # Framing Tornado refuses itself before reading the body: nothing to reserve.
        ({"Content-Length": "12, 34"}, 0),
        ({"Content-Length": "-1"}, 0),
        ({"Content-Length": "0x10"}, 0),
        ({"Content-Length": "\u00b2"}, 0),
        ({"Content-Length": "5", "Transfer-Encoding": "chunked"}, 0),
        ({"Transfer-Encoding": "gzip"}, 0),
        # Unknown length: the route's whole limit.
        ({"Transfer-Encoding": "chunked"}, 777),
        ({"Transfer-Encoding": "Chunked"}, 777),
        # Longer than any real length: over every limit, not an int() of 10,000 digits.
        ({"Content-Length": "9" * 10_000}, 2**63 - 1),
    ],
)
def test_the_size_a_body_reserves(headers: dict[str, str], size: int) -> None:
    assert _body_size(tornado.httputil.HTTPHeaders(headers), 777) == size


# -- per route ----------------------------------------------------------------------------


@SQLITE_ONLY
def test_a_large_body_announced_to_a_small_route_is_refused_before_it_is_sent(
    database_url: str, realm: SampleRealm
) -> None:
    """The review's request: 8 MiB announced without credentials. The server answers
    from the header alone; before, it waited for the body (up to the body timeout)."""
    with live_server(database_url) as server:
        sock = connect(server)
        with sock:
            sock.sendall(header("DELETE", "/api/v1/events", length=ATTACK_BYTES))
            answer = read_answer(sock)
        assert_json_refusal(answer, 413, "DELETE", "/api/v1/events", str(DEFAULT_BODY_LIMIT))
        # The same with credentials, and with a client that waits for 100 Continue: the
        # refusal comes instead (no 100), so such a client never sends the body at all.
        credentials = (realm.emails["member"], realm.api_keys["member"])
        status, sock, _ = announce(server, "POST", "/api/v1/users", ATTACK_BYTES, auth=credentials)
        with sock:
            assert status == 413
        # A body within the limit is read as before.
        response = requests.delete(
            f"{server.url}/api/v1/events",
            data={"queue_id": "x" * (DEFAULT_BODY_LIMIT - 100)},
            auth=credentials,
            timeout=REQUEST_TIMEOUT_SECS,
        )
        assert response.status_code == 400 and response.json()["code"] == "BAD_EVENT_QUEUE_ID"
        assert served(server)
        assert refusals(server, "refused.body_size") == 2
        # Logged once for the minute, naming the address.
        lines = log_lines(server, r"refused\.body_size: 127\.0\.0\.1")
        assert len(lines) == 1 and "announced 8388608 bytes" in lines[0], lines


@SQLITE_ONLY
def test_messages_read_256_kib_and_refuse_more_before_reading(
    database_url: str, realm: SampleRealm
) -> None:
    credentials = (realm.emails["member"], realm.api_keys["member"])
    with live_server(database_url) as server:
        # 300 KiB announced: refused from the header, with or without credentials.
        for auth in (None, credentials):
            sock = connect(server)
            with sock:
                sock.sendall(header("POST", "/api/v1/messages", length=300 * KIB, auth=auth))
                answer = read_answer(sock)
            assert_json_refusal(answer, 413, "POST", "/api/v1/messages", str(LARGE_BODY_LIMIT))
        # 200 KiB is read and reaches the handler: without credentials its 401 ...
        body = urlencode(
            {"type": "stream", "to": "public", "topic": "big", "content": "x" * (200 * KIB)}
        ).encode()
        assert 190 * KIB < len(body) <= LARGE_BODY_LIMIT
        response = requests.post(
            f"{server.url}/api/v1/messages",
            data=body,
            headers={"Content-Type": FORM},
            timeout=REQUEST_TIMEOUT_SECS,
        )
        assert response.status_code == 401, response.text
        # ... and with them the message is sent (its content truncated as Zulip does).
        response = requests.post(
            f"{server.url}/api/v1/messages",
            data=body,
            headers={"Content-Type": FORM},
            auth=credentials,
            timeout=REQUEST_TIMEOUT_SECS,
        )
        assert response.status_code == 200, response.text
        assert isinstance(response.json()["id"], int)
        # Register takes 64 KiB.
        status, sock, _ = announce(
            server, "POST", "/api/v1/register", REGISTER_BODY_LIMIT + 1, auth=credentials
        )
        with sock:
            assert status == 413
        status, sock, _ = announce(
            server, "POST", "/api/v1/register", REGISTER_BODY_LIMIT, auth=credentials
        )
        with sock:
            assert status == 100


@SQLITE_ONLY
def test_a_chunked_body_over_the_limit_is_refused(database_url: str, realm: SampleRealm) -> None:
    """A chunked body has no announced length: it is refused as soon as a chunk's size
    takes it over the route's limit, before that chunk is read (Tornado's bare 400)."""
    with live_server(database_url) as server:
        for path, limit in (
            ("/api/v1/events", DEFAULT_BODY_LIMIT),
            ("/api/v1/messages", LARGE_BODY_LIMIT),
        ):
            method = "DELETE" if path.endswith("events") else "POST"
            sock = connect(server)
            with sock:
                sock.sendall(header(method, path, chunked=True))
                # One chunk at the limit is read; the next one's size goes over it.
                sock.sendall(b"%x\r\n" % limit + b"a" * limit + b"\r\n")
                sock.sendall(b"1\r\n")
                answer = read_answer(sock)
            assert answer.status == 400 and answer.closed, answer
        # Within the limit, a chunked body is read like any other.
        sock = connect(server)
        with sock:
            sock.sendall(header("DELETE", "/api/v1/events", chunked=True))
            sock.sendall(b"a\r\nqueue_id=x\r\n0\r\n\r\n")
            answer = read_answer(sock)
        assert answer.status == 401, answer
        assert served(server)


# -- the budget of bodies in flight ---------------------------------------------------------


@contextmanager
def budget_server(database_url: str) -> Iterator[LiveServer]:
    with live_server(database_url, {"EVENTQ_MAX_BODY_BYTES_IN_FLIGHT": str(TEST_BUDGET)}) as s:
        yield s


def hold(server: LiveServer, chunked: bool = False) -> Holder:
    """A connection holding LARGE_BODY_LIMIT of the budget: a message announcing that
    much (or chunked, which reserves the route's whole limit), 1 KiB of it sent."""
    size = None if chunked else LARGE_BODY_LIMIT
    status, sock, _ = announce(server, "POST", "/api/v1/messages", size, chunked=chunked)
    assert status == 100, f"refused with {status}"
    holder = Holder(sock, LARGE_BODY_LIMIT, chunked=chunked)
    if chunked:
        sock.sendall(b"400\r\n" + b"a" * KIB + b"\r\n")
    else:
        sock.sendall(b"a" * KIB)
    holder.sent = KIB
    return holder


def hold_when_free(server: LiveServer) -> Holder:
    """`hold`, retried while the budget is full: the server sees a client's close when
    it reads it, so a share given back by a close is free a moment later."""
    held: list[Holder] = []

    def attempt() -> bool:
        status, sock, _ = announce(server, "POST", "/api/v1/messages", LARGE_BODY_LIMIT)
        if status != 100:
            assert status == 503, status
            sock.close()
            return False
        sock.sendall(b"a" * KIB)
        held.append(Holder(sock, LARGE_BODY_LIMIT, sent=KIB))
        return True

    await_condition(attempt, "a share of the body budget")
    return held[0]


def assert_budget_full(server: LiveServer, path: str = "/api/v1/messages") -> None:
    """A request with a body, however small, is refused with a 503 before it is read."""
    sock = connect(server)
    with sock:
        sock.sendall(header("POST", path, length=10))
        answer = read_answer(sock)
    assert_json_refusal(answer, 503, "POST", path, "too many request bodies")
    assert answer.headers["Retry-After"] == "5"


@SQLITE_ONLY
def test_the_body_budget_is_held_by_slow_senders_and_given_back_exactly_once(
    database_url: str, realm: SampleRealm
) -> None:
    with budget_server(database_url) as server:
        holders = [hold(server) for _ in range(HOLDERS)]
        refused = 0
        try:
            # Full: the next body is refused before it is read, whatever its route ...
            assert_budget_full(server)
            assert_budget_full(server, "/api/v1/register")
            status, sock, _ = announce(server, "POST", "/api/v1/messages", None, chunked=True)
            sock.close()
            assert status == 503
            refused += 3
            # ... while requests without a body are served.
            assert served(server)
            # A holder that finishes its body gives its share back (here its 401): one
            # large body fits again, and only one.
            first = holders.pop(0)
            first.sock.sendall(b"a" * (first.announced - first.sent))
            assert read_answer(first.sock).status == 401
            first.sock.close()
            status, sock, _ = announce(server, "POST", "/api/v1/messages", LARGE_BODY_LIMIT)
            assert status == 100
            holders.append(Holder(sock, LARGE_BODY_LIMIT))
            assert_budget_full(server)
            refused += 1
        finally:
            # Every holder goes away mid-body.
            for holder in holders:
                holder.sock.close()
        # All of the budget comes back, and no more: exactly HOLDERS large bodies fit
        # again (one of them chunked, which reserves the route's whole limit), and the
        # next is refused. A share given back twice would let a fifth one in.
        holders = [hold_when_free(server) for _ in range(HOLDERS - 1)]
        try:
            await_condition(lambda: _try_chunked_hold(server, holders), "a chunked share")
            assert_budget_full(server)
            refused += 1
        finally:
            for holder in holders:
                holder.sock.close()
        await_condition(lambda: _try_hold_and_release(server), "the whole budget free")
        assert served(server)
        # Refusals while retrying are counted too: at least the deliberate ones.
        assert refusals(server, "refused.body_budget") >= refused
        lines = log_lines(server, r"refused\.body_budget: body budget")
        assert len(lines) == 1 and f"of {TEST_BUDGET} bytes in flight" in lines[0], lines
        # The server logged no error (a share released twice would assert).
        assert not log_lines(server, r"Traceback|ERROR|released twice"), server.lines[-30:]


def _try_chunked_hold(server: LiveServer, holders: list[Holder]) -> bool:
    status, sock, _ = announce(server, "POST", "/api/v1/messages", None, chunked=True)
    if status != 100:
        assert status == 503, status
        sock.close()
        return False
    sock.sendall(b"400\r\n" + b"a" * KIB + b"\r\n")
    holders.append(Holder(sock, LARGE_BODY_LIMIT, sent=KIB, chunked=True))
    return True


def _try_hold_and_release(server: LiveServer) -> bool:
    """Whether HOLDERS large bodies fit at once (then they go away again)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(HOLDERS):
            status, sock, _ = announce(server, "POST", "/api/v1/messages", LARGE_BODY_LIMIT)
            socks.append(sock)
            if status != 100:
                assert status == 503, status
                return False
        return True
    finally:
        for sock in socks:
            sock.close()


def test_the_settings_repeat_the_body_budgets_figures() -> None:
    """`server.ops.config` repeats the budget's default and minimum (it must not import
    Tornado); they must be the figures `server.api.body_limits` works with."""
    assert DEFAULT_MAX_BODY_BYTES_IN_FLIGHT == DEFAULT_BODY_BYTES_IN_FLIGHT
    assert MIN_MAX_BODY_BYTES_IN_FLIGHT == LARGEST_BODY_LIMIT
