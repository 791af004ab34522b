"""Shared benchmark machinery: fresh databases, server processes, raw HTTP clients.

The raw clients speak just enough HTTP/1.1 over asyncio to park thousands of long-polls
from one process, which `tornado.httpclient` (10 connections by default) and `requests`
(one thread per request) cannot do cheaply: `http_request` opens one connection per
request, `HttpConnection` keeps one connection alive for many (an `asyncio.Protocol`,
so that a client process driving 10,000 polls costs less CPU than the server it
measures).
"""

from __future__ import annotations

import asyncio
import base64
import json
import mmap
import os
import random
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

import psycopg
from sqlalchemy import insert, select

from actions.realms import do_create_realm
from actions.users import generate_api_key
from migrations import upgrade
from models.database import Database
from models.tables import Role, UserProfile

EVENTQ = str(Path(sys.executable).parent / "eventq")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
_LISTENING = re.compile(r"eventq listening on http://[\d.]+:(\d+)")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
# How long a server process may take to start listening (migrations are already done).
SERVER_START_TIMEOUT_SECS = 60.0
USER_AGENT = "eventq-bench/1.0"
# A register answered 429 is retried after its Retry-After, at most this many times.
MAX_SHED_RETRIES = 20


def postgres_base_url() -> str:
    return os.environ.get("EVENTQ_BENCH_POSTGRES_URL") or DEFAULT_POSTGRES_URL


@contextmanager
def fresh_database(backend: str) -> Iterator[str]:
    """A migrated, empty database: a new PostgreSQL schema or a temporary SQLite file."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as directory:
            url = f"sqlite:///{directory}/bench.sqlite3"
            upgrade(url)
            yield url
        return
    base = postgres_base_url()
    schema = f"eventq_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = base + ("&" if "?" in base else "?") + "options=" + quote(f"-csearch_path={schema}")
    try:
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def rss_kb(pid: int) -> int:
    """The resident memory of process `pid`, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match is not None
    return int(match.group(1))


def cpu_secs(pid: int) -> float:
    """User plus system CPU seconds process `pid` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """`eventq serve` on a free port; `rss_kb()` reads its resident memory.

    The server's log goes to a temporary file, not a pipe: a thread draining a pipe in
    the benchmark process would take CPU (and the GIL) from the clients it measures.
    `command` replaces the `eventq` executable (e.g. `bench.counted_server`).
    """

    def __init__(
        self,
        database_url: str,
        env_extra: dict[str, str] | None = None,
        command: Sequence[str] | None = None,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTQ_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(env_extra or {})
        self._log: IO[bytes] = tempfile.NamedTemporaryFile(prefix="eventq-bench-", suffix=".log")
        self.process = subprocess.Popen(
            [*(command or [EVENTQ]), "--database-url", database_url, "serve", "--port", "0"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECS
        while True:
            match = _LISTENING.search(self.log_text())
            if match:
                self.port = int(match.group(1))
                break
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                self.process.wait(10)
                tail = self.log_text()[-2000:]
                self._log.close()
                raise RuntimeError(f"server did not start listening:\n{tail}")
            time.sleep(0.05)  # waiting for a child process to start: no event to wait on

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        """Everything the server has logged so far."""
        return Path(self._log.name).read_text(errors="replace")

    def log_count(self, pattern: str) -> int:
        """How many log lines match `pattern` (e.g. errors or evictions)."""
        return len(re.findall(pattern, self.log_text(), re.MULTILINE))

    def rss_kb(self) -> int:
        return rss_kb(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


class BareTornado:
    """The baseline process (`bench.bare_tornado`): parks requests with no eventq code."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_tornado"], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.port = int(self.process.stdout.readline())

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_kb(self) -> int:
        return rss_kb(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        if self.process.stdout is not None:
            self.process.stdout.close()


class SqlCounters:
    """Counters a `bench.counted_server` process bumps in a shared file, read here.

    `statements`: SQL statements SQLAlchemy sent; `transactions`: transactions begun;
    `checkouts`: connections taken from the pool (each one is pinged first).
    """

    NAMES = ("statements", "transactions", "checkouts")

    def __init__(self) -> None:
        self._file = tempfile.NamedTemporaryFile(prefix="eventq-bench-sql-", suffix=".bin")
        self._file.write(b"\0" * 8 * len(self.NAMES))
        self._file.flush()
        self.path = self._file.name

    def read(self) -> dict[str, int]:
        with open(self.path, "rb") as f:
            raw = f.read(8 * len(self.NAMES))
        return dict(zip(self.NAMES, struct.unpack(f"{len(self.NAMES)}q", raw), strict=True))

    def close(self) -> None:
        self._file.close()


def open_counters(path: str) -> mmap.mmap:
    """The counters file mapped for writing (the counted server's side)."""
    with open(path, "r+b") as f:
        return mmap.mmap(f.fileno(), 8 * len(SqlCounters.NAMES))


class Writer:
    """A `bench.writer` process: each `commit()` commits one channel creation there.

    The action runs in another process, as Zulip's Django writes while Tornado delivers;
    every active user of the realm receives its `stream` `create` event (only the
    administrators, for a private channel).
    """

    def __init__(self, database_url: str, realm_id: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.writer", database_url, str(realm_id)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def commit_sync(self, private: bool = False) -> tuple[float, float]:
        """Commit one action; returns the wall-clock times it started and committed.
        Its channel is named `bench {writer pid}-{number of earlier commits}`."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("private\n" if private else "go\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the writer process exited")
        started, committed = line.split()
        return float(started), float(committed)

    async def commit(self, private: bool = False) -> tuple[float, float]:
        return await asyncio.get_running_loop().run_in_executor(None, self.commit_sync, private)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(30)
        if self.process.stdout is not None:
            self.process.stdout.close()


def create_realm_with_users(
    db: Database, name: str, users: int
) -> tuple[int, list[tuple[int, str, str]]]:
    """A realm of `users` active users, the first its owner, inserted in bulk (no
    events); returns the realm id and every user's (id, email, api_key) in id order."""
    with db.write() as session:
        realm_id = do_create_realm(session, name).id
    rows = [
        {
            "realm_id": realm_id,
            "email": f"user{index}@{name}.example.com",
            "full_name": f"User {index}",
            "role": int(Role.OWNER if index == 0 else Role.MEMBER),
            "api_key": generate_api_key(),
        }
        for index in range(users)
    ]
    with db.write() as session:
        session.execute(insert(UserProfile), rows)
    with db.snapshot() as session:
        credentials = [
            (int(u.id), u.email, u.api_key)
            for u in session.scalars(
                select(UserProfile).where(UserProfile.realm_id == realm_id).order_by(UserProfile.id)
            )
        ]
    return realm_id, credentials


def basic_auth(email: str, api_key: str) -> str:
    return "Basic " + base64.b64encode(f"{email}:{api_key}".encode()).decode()


def _encode(params: dict[str, Any] | None) -> str:
    return urlencode(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in (params or {}).items()}
    )


def build_request(
    method: str,
    path: str,
    auth: str | None = None,
    params: dict[str, Any] | None = None,
    *,
    keep_alive: bool = True,
) -> bytes:
    """The bytes of one HTTP/1.1 request; parameters go in the query of a GET and in a
    form-encoded body otherwise, JSON-encoding non-strings as Zulip's clients do."""
    encoded = _encode(params)
    target = path + ("?" + encoded if method == "GET" and encoded else "")
    body = encoded.encode() if method != "GET" else b""
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", f"User-Agent: {USER_AGENT}"]
    if auth is not None:
        lines.append(f"Authorization: {auth}")
    if not keep_alive:
        lines.append("Connection: close")
    if method != "GET":
        lines.append("Content-Type: application/x-www-form-urlencoded")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def http_request(
    port: int, method: str, path: str, auth: str, params: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """One request on a fresh connection; returns (status, decoded JSON body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(build_request(method, path, auth, params, keep_alive=False))
    await writer.drain()
    raw = await reader.read()
    writer.close()
    header, _, payload = raw.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    return status, json.loads(payload)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    head: bytes
    body: bytes

    def header(self, name: str) -> str | None:
        match = re.search(
            rb"\r\n" + re.escape(name.encode()) + rb":\s*([^\r]*)", self.head, re.IGNORECASE
        )
        return match.group(1).decode() if match else None

    def json(self) -> Any:
        return json.loads(self.body)


def retry_after(answer: HttpResponse, default: float = 1.0) -> float:
    """The seconds a 429 answer asks to wait (its Retry-After header)."""
    value = answer.header("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time.

    Answers must carry a Content-Length (Tornado's always do). A closed connection
    fails the request in flight with ConnectionResetError; open a new one to go on.
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._head_end = -1
        self._total = -1
        self.closed = False

    @classmethod
    async def open(cls, port: int, timeout: float = 30.0) -> HttpConnection:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            _, protocol = await loop.create_connection(cls, "127.0.0.1", port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is not None:
            self._parse()

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("connection closed by the server"))

    def _parse(self) -> None:
        if self._head_end < 0:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _CONTENT_LENGTH.search(self._buffer, 0, end + 2)
            if match is None:
                raise ValueError("an answer without Content-Length")
            self._head_end = end
            self._total = end + 4 + int(match.group(1))
        if len(self._buffer) < self._total:
            return
        head = bytes(self._buffer[: self._head_end])
        body = bytes(self._buffer[self._head_end + 4 : self._total])
        del self._buffer[: self._total]
        self._head_end = self._total = -1
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(HttpResponse(int(head[9:12]), head, body))

    def send(self, request: bytes) -> asyncio.Future[HttpResponse]:
        """Send `request`; the future resolves with its answer."""
        if self._waiter is not None:
            raise RuntimeError("one request at a time per connection")
        if self.closed or self._transport is None or self._transport.is_closing():
            raise ConnectionResetError("connection closed")
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(request)
        waiter = self._waiter
        if self._buffer:
            self._parse()
        return waiter

    async def request(self, request: bytes, timeout: float = 120.0) -> HttpResponse:
        try:
            async with asyncio.timeout(timeout):
                return await self.send(request)
        except BaseException:
            # The answer may still come: this connection cannot be used again.
            self._waiter = None
            self.close()
            raise

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def open_many(port: int, count: int, concurrency: int = 200) -> list[HttpConnection]:
    """`count` keep-alive connections, opened `concurrency` at a time (a burst larger
    than the listen backlog would be reset); a refused connect is retried."""
    limit = asyncio.Semaphore(concurrency)

    async def one() -> HttpConnection:
        async with limit:
            for attempt in range(20):
                try:
                    return await HttpConnection.open(port)
                except (ConnectionError, TimeoutError):
                    await asyncio.sleep(0.05 * (attempt + 1))  # back off, then retry
            raise ConnectionError(f"could not connect to port {port}")

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def register_queues(
    port: int,
    auths: Sequence[str],
    params: dict[str, Any],
    concurrency: int = 50,
) -> list[str]:
    """Register one queue per entry of `auths` (repeat an auth for several queues of one
    user), `concurrency` at a time on keep-alive connections; returns the queue ids."""
    queue_ids: list[str] = [""] * len(auths)
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        conn = await HttpConnection.open(port)
        try:
            while next_index < len(auths):
                index = next_index
                next_index += 1
                request = build_request("POST", "/api/v1/register", auths[index], params)
                answer = await conn.request(request)
                for _ in range(MAX_SHED_RETRIES):
                    if answer.status != 429:
                        break
                    # Shed (or rate limited): wait as told, then try again.
                    await asyncio.sleep(min(retry_after(answer), 60.0) * (1 + random.random()))
                    answer = await conn.request(request)
                if answer.status != 200:
                    raise RuntimeError(f"register: {answer.status} {answer.body[:200]!r}")
                queue_ids[index] = answer.json()["queue_id"]
        finally:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(auths)))))
    return queue_ids


async def waiting_polls(port: int, admin_auth: str) -> int:
    """How many of the realm's queues have a poll waiting on the server."""
    conn = await HttpConnection.open(port)
    try:
        answer = await conn.request(build_request("GET", "/api/v1/eventq/queues", admin_auth))
    finally:
        conn.close()
    return sum(1 for q in answer.json()["queues"] if q["waiting"])


async def bare_parked(port: int) -> int:
    """How many polls the bare Tornado process holds parked."""
    conn = await HttpConnection.open(port)
    try:
        answer = await conn.request(build_request("GET", "/parked"))
    finally:
        conn.close()
    return int(answer.json()["parked"])


async def wait_until(
    check: Callable[[], Awaitable[int]], target: int, timeout: float, interval: float = 0.5
) -> int:
    """Call `check` every `interval` seconds until it returns at least `target` or
    `timeout` passes; returns its last answer (benchmark set-up, not a test)."""
    deadline = time.monotonic() + timeout
    value = await check()
    while value < target and time.monotonic() < deadline:
        await asyncio.sleep(interval)
        value = await check()
    return value


class PollFleet:
    """Many clients long-polling in a loop, each on its own keep-alive connection.

    `make_request(index, last_event_id)` builds client `index`'s next poll; every answer
    is a Zulip events answer (`{"events": [...]}`), heartbeats included, and the client
    re-polls at once with the newest id it got. A round starts with `start_round()`;
    it is complete when every client has received a real event and sent its next poll.
    """

    def __init__(
        self,
        port: int,
        count: int,
        make_request: Callable[[int, int], bytes],
        *,
        dont_block_pause: float | None = None,
        record_poll_times: bool = False,
    ) -> None:
        self.port = port
        self.record_poll_times = record_poll_times
        self.count = count
        self.make_request = make_request
        self.dont_block_pause = dont_block_pause
        self.connections: list[HttpConnection] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        self.sent = 0  # polls sent in all
        self.deliveries = 0  # real events received in all
        self.heartbeats = 0
        self.refused_429 = 0
        self.errors: list[str] = []
        self.reconnects = 0
        # Wall times at which clients received a real event since `start_round`.
        self.round_answers: list[float] = []
        self.poll_times: list[tuple[float, float]] = []  # (answered at, poll round trip)
        self._in_round: list[bool] = []
        self._round_left = 0
        self._round_done: asyncio.Event = asyncio.Event()
        self.on_event: Callable[[int, dict[str, Any], float], None] | None = None

    async def start(self, concurrency: int = 200) -> None:
        self.connections = await open_many(self.port, self.count, concurrency)
        self._in_round = [False] * self.count
        self.tasks = [
            asyncio.create_task(self._client(index), name=f"client-{index}")
            for index in range(self.count)
        ]

    def start_round(self) -> None:
        """An event is about to be sent: count the clients until each has received it and
        re-polled. Call it before sending the event, whose answers may come at once."""
        self.round_answers = []
        self._in_round = [True] * self.count
        self._round_left = self.count
        self._round_done.clear()

    async def wait_round(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._round_done.wait()
        except TimeoutError:
            raise RuntimeError(
                f"{self._round_left} of {self.count} clients did not get the event within "
                f"{timeout:.0f} s; client errors: {self.errors[:3]}"
            ) from None

    async def _client(self, index: int) -> None:
        last = -1
        loop = asyncio.get_running_loop()
        while not self.stopping:
            conn = self.connections[index]
            sent_at = loop.time()
            try:
                future = conn.send(self.make_request(index, last))
                self.sent += 1
                answer = await future
            except (ConnectionError, RuntimeError) as error:
                if self.stopping:
                    return
                self.reconnects += 1
                if self.reconnects > 10 * self.count:
                    self.errors.append(f"client {index}: {error}")
                    return
                await asyncio.sleep(0.05 * random.random())  # spread the reconnects
                try:
                    self.connections[index] = await HttpConnection.open(self.port)
                except (ConnectionError, TimeoutError):
                    pass
                continue
            now = time.time()
            if self.record_poll_times:
                self.poll_times.append((now, loop.time() - sent_at))
            if answer.status == 429:
                # Load shedding or a rate limit: wait as told, then poll again.
                self.refused_429 += 1
                await asyncio.sleep(min(retry_after(answer), 60.0) * (1 + 0.1 * random.random()))
                continue
            if answer.status != 200:
                self.errors.append(f"client {index}: {answer.status} {answer.body[:200]!r}")
                return
            real = 0
            for event in json.loads(answer.body)["events"]:
                last = max(last, event["id"])
                if event["type"] == "heartbeat":
                    self.heartbeats += 1
                else:
                    real += 1
                    if self.on_event is not None:
                        self.on_event(index, event, now)
            if real:
                self.deliveries += real
                self.round_answers.append(now)
                if self._in_round[index]:
                    # Nothing is awaited between here and sending the next poll (at the
                    # loop's top), so the round may count this client as re-polled now.
                    self._in_round[index] = False
                    self._round_left -= 1
                    if self._round_left == 0:
                        self._round_done.set()
            if self.dont_block_pause is not None:
                await asyncio.sleep(self.dont_block_pause * (0.5 + random.random()))

    async def stop(self) -> None:
        self.stopping = True
        for conn in self.connections:
            conn.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def percentile_ms(samples: Sequence[float], fraction: float) -> float:
    """The `fraction` percentile (0-1, nearest rank) of `samples` seconds, in ms."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return 1000.0 * ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def median_ms(samples: list[float]) -> float:
    return 1000.0 * statistics.median(samples)


def p95_ms(samples: list[float]) -> float:
    return percentile_ms(samples, 0.95)


def ratio(value: float, baseline: float) -> str:
    """`value / baseline` as "1.23x" (or "n/a")."""
    if not baseline or value != value or baseline != baseline:
        return "n/a"
    return f"{value / baseline:.2f}x"
