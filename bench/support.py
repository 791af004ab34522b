"""Shared benchmark machinery: fresh databases, a server process, a raw HTTP client.

The raw client speaks just enough HTTP/1.1 over asyncio streams to park thousands of
long-polls from one process, which `tornado.httpclient` (10 connections by default) and
`requests` (one thread per request) cannot do cheaply.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg

from migrations import upgrade

EVENTQ = str(Path(sys.executable).parent / "eventq")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
_LISTENING = re.compile(r"eventq listening on http://[\d.]+:(\d+)")


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


class ServerProcess:
    """`eventq serve` on a free port; `rss_kb()` reads its resident memory."""

    def __init__(self, database_url: str, env_extra: dict[str, str] | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTQ_")}
        env["PYTHONUNBUFFERED"] = "1"
        env.update(env_extra or {})
        self.process = subprocess.Popen(
            [EVENTQ, "--database-url", database_url, "serve", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        assert self.process.stdout is not None
        for line in self.process.stdout:
            match = _LISTENING.search(line)
            if match:
                self.port = int(match.group(1))
                break
        else:
            raise RuntimeError("server exited before listening")
        # Keep draining the log so the server never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for _ in self.process.stdout:
            pass

    def rss_kb(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match is not None
        return int(match.group(1))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        if self.process.stdout is not None:
            self.process.stdout.close()


def basic_auth(email: str, api_key: str) -> str:
    return "Basic " + base64.b64encode(f"{email}:{api_key}".encode()).decode()


async def http_request(
    port: int, method: str, path: str, auth: str, params: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """One request on a fresh connection; returns (status, decoded JSON body)."""
    encoded = urlencode(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in (params or {}).items()}
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    target = path + ("?" + encoded if method == "GET" and encoded else "")
    body = encoded.encode() if method != "GET" else b""
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {auth}\r\n"
        f"User-Agent: eventq-bench/1.0\r\nConnection: close\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    header, _, payload = raw.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    return status, json.loads(payload)


def median_ms(samples: list[float]) -> float:
    return 1000.0 * statistics.median(samples)


def p95_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return 1000.0 * ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
