"""One event fanned out to 10,000 parked long-polls through nginx, with 1 shard and with
2 shards on one PostgreSQL database, in one run; and the SQL each shard runs per event
(docs/deployment.md).

For each shard count, on a fresh PostgreSQL database:

* The shards are `eventq serve --shard shardK` processes with their SQL counted (this
  module's `counted-shard` entry: `bench.counted_server`'s counters, plus the
  executions of each executemany), `EVENTQ_TRUSTED_PROXY=on` as behind any proxy, and
  the longest heartbeat (85 s) so that parking 10,000 polls does not race their
  heartbeats. nginx (Debian's) runs in front of them with the whole configuration
  `server.ops.cluster.nginx.nginx_standalone_config` generates, its access log included (see
  `_nginx_config` for the one change the benchmark may have to make).
* 100 users register 100 queues each through nginx (`register` goes round-robin over
  the shards, so the queues spread over them; each queue id names its shard), and one
  keep-alive long-poll per queue parks through nginx (routed by the queue id's prefix).
  The realm's owner has no queue: it only asks each shard, on the shard's own port, how
  many polls it holds parked.
* A writer process creates a channel, which all 100 users receive: EVENTS events, each
  once every poll is parked again. Per event: the time from the commit to the last of
  the 10,000 answers (the figure is the median over the events), and answers per
  second, 10,000 divided by that time; the CPU the shards, nginx and this load
  generator used meanwhile, and how busy the whole machine was.
* SQL per event per shard: each shard's counters are read just before the commit and
  again once it has written the checkpoints of its queues' re-polls (which acknowledge
  the event; they are written behind, every second), minus what the shard runs in that
  window whether or not anything happens: the consumer's passes that found nothing (its
  one-second safety look), its liveness refresh every 10 s and its sweep every minute
  (SQL_KINDS tells them apart). The reads of credentials whose cached copy expired
  (60 s after it was read, at that user's next request) are counted apart: they follow
  the clock, not the event. "Statements" are what the shard sends (an executemany is
  one); "executions" count each row of an executemany, as PostgreSQL runs them. The
  background alone is counted for IDLE_SECS while the polls sit parked before the first
  event.
* New TCP connections opened on the machine during the fan-out (nginx to the shards,
  once its idle keep-alive connections run out; the clients keep theirs).

Each shard count gets a database of its own, not just a schema: NOTIFY reaches every
listener of a database whatever its schema, so shards on a schema of the shared test
database would be woken by every other test and benchmark that commits there, and
count the consumer reads that follow.

The load generator (this process), nginx, the shards and PostgreSQL share the machine's
cores: on a 2-core machine a second shard adds a process, not a core.
"""

from __future__ import annotations

import asyncio
import json
import mmap
import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from bench.support import (
    PollFleet,
    ServerProcess,
    SqlCounters,
    Writer,
    basic_auth,
    build_request,
    cpu_secs,
    create_realm_with_users,
    postgres_base_url,
    register_queues,
    wait_until,
    waiting_polls,
)
from migrations import upgrade
from models.database import Database
from server.ops.cluster.nginx import ShardAddress, find_nginx, nginx_standalone_config

SHARD_COUNTS = (1, 2)
USERS = 100
QUEUES_PER_USER = 100
POLLS = USERS * QUEUES_PER_USER
# Events sent to the parked polls, one at a time (the figure is the median).
EVENTS = 5
REGISTER_CONCURRENCY = 50
PARK_TIMEOUT_SECS = 240.0
ANSWER_TIMEOUT_SECS = 300.0
NGINX_START_TIMEOUT_SECS = 15.0
# SQL is counted from the commit until every shard has written the checkpoints of the
# acknowledging re-polls (every second, behind); they take no longer than this.
CHECKPOINT_TIMEOUT_SECS = 60.0
# The background: SQL counted while every poll sits parked and nothing happens.
IDLE_SECS = 5.0
EVENT_TYPES = ["stream", "realm_user", "subscription"]
# Each parked poll holds two connections of an nginx worker (the client's and the
# shard's); a worker also needs a few for its listening socket and idle upstreams.
CONNECTIONS_PER_POLL = 2
SPARE_CONNECTIONS = 512
CATEGORIES_ENV = "BENCH_SQL_CATEGORIES"
# What a shard sends, by kind: each kind counts statements (an executemany is one) and
# executions (each of its rows, as PostgreSQL runs them). A consumer pass ("drain")
# reads the realms' positions and the claim feed; one that finds new rows reads the
# outbox too. Empty passes (the one-second safety look), the liveness refresh and the
# sweep are the shard's background, which runs whether or not anything happens.
SQL_KINDS: tuple[tuple[str, re.Pattern[str] | None], ...] = (
    ("drain_positions", re.compile(r"^SELECT realm\.id, realm\.last_event_seq\s+FROM realm\s*$")),
    ("drain_claims", re.compile(r"^SELECT .*\bFROM queue_claim\b", re.DOTALL)),
    # The sweep, once a minute: expiry, outbox pruning, the claim feed's pruning.
    (
        "sweep",
        re.compile(
            r"lifespan_secs < |pg_try_advisory_xact_lock|\boutbox_pruned_seq\b"
            r"|min\(queue_descriptor\.checkpoint_seq\)|max\(outbox_event\.seq\)"
            r"|^DELETE FROM (queue_claim|outbox_event|outbox_recipient)\b"
        ),
    ),
    ("outbox_read", re.compile(r"\bFROM outbox_event\b")),
    # One UPDATE ... FROM unnest(arrays) on PostgreSQL; an executemany elsewhere.
    ("checkpoint", re.compile(r"^UPDATE queue_descriptor (AS d )?SET .*\bcheckpoint_seq ?=")),
    ("shard_seen", re.compile(r"^UPDATE shard SET seen_at")),
    # Authentication reads a user by email when its cached entry is missing or older
    # than the cache's TTL (60 s): that depends on the time, not on the event.
    ("credentials", re.compile(r"\bFROM user_profile\s+WHERE user_profile\.email = ")),
    ("other", None),
)


_CHECKPOINT_KIND = [kind for kind, _ in SQL_KINDS].index("checkpoint")
# Per kind: statements and executions; then one more counter, checkpoint rows written.
_WRITTEN_OFFSET = 16 * len(SQL_KINDS)
_COUNTERS_BYTES = _WRITTEN_OFFSET + 8


# -- the shards ---------------------------------------------------------------------------


def _kind_of(statement: str) -> int:
    for index, (_, pattern) in enumerate(SQL_KINDS):
        if pattern is None or pattern.search(statement):
            return index
    raise AssertionError("the last kind takes everything")


def _counted_shard_main(argv: list[str]) -> None:
    """`python -m bench.cluster counted-shard ARGS`: `eventq ARGS` with
    `bench.counted_server`'s counters, and statements and executions by kind (SQL_KINDS)
    in the file named by CATEGORIES_ENV."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from bench.counted_server import COUNTERS_ENV, install

    install(os.environ[COUNTERS_ENV])
    with open(os.environ[CATEGORIES_ENV], "r+b") as f:
        counters = mmap.mmap(f.fileno(), _COUNTERS_BYTES)
    lock = threading.Lock()
    kinds: dict[str, int] = {}

    def on_statement(
        _conn: Any, _cursor: Any, sql: str, parameters: Any, _context: Any, executemany: bool
    ) -> None:
        kind = kinds.get(sql)
        if kind is None:
            kind = kinds[sql] = _kind_of(sql)
        rows = len(parameters) if executemany else 1
        # Checkpoint rows written: an executemany's rows, or the unnest form's array.
        carried = 0
        if kind == _CHECKPOINT_KIND:
            carried = rows if executemany else len(dict(parameters).get("ids", ()))
        with lock:
            statements, executions = struct.unpack_from("qq", counters, 16 * kind)
            struct.pack_into("qq", counters, 16 * kind, statements + 1, executions + rows)
            (written,) = struct.unpack_from("q", counters, _WRITTEN_OFFSET)
            struct.pack_into("q", counters, _WRITTEN_OFFSET, written + carried)

    event.listen(Engine, "before_cursor_execute", on_statement)
    from server.ops.cli.main import main as eventq_main

    sys.exit(eventq_main(argv))


class Shard:
    """One `eventq serve --shard NAME` process with its SQL counted."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.counters = SqlCounters()
        self._kinds = tempfile.NamedTemporaryFile(prefix="eventq-bench-sql-", suffix=".bin")
        self._kinds.write(b"\0" * _COUNTERS_BYTES)
        self._kinds.flush()
        self.server = ServerProcess(
            url,
            {
                "EVENTQ_SHARD": name,
                "EVENTQ_TRUSTED_PROXY": "on",
                # The longest heartbeat: parking 10,000 polls must not race their heartbeats.
                "EVENTQ_HEARTBEAT_SECS": "85",
                "BENCH_SQL_COUNTERS": self.counters.path,
                CATEGORIES_ENV: self._kinds.name,
            },
            command=[sys.executable, "-m", "bench.cluster", "counted-shard"],
        )

    @property
    def address(self) -> ShardAddress:
        return ShardAddress(self.name, "127.0.0.1", self.server.port)

    def sql(self) -> dict[str, int]:
        """Counters so far: statements, transactions, checkouts, and per kind of SQL_KINDS
        `KIND` (statements) and `KIND_rows` (executions)."""
        figures = self.counters.read()
        with open(self._kinds.name, "rb") as f:
            raw = struct.unpack(f"{2 * len(SQL_KINDS) + 1}q", f.read(_COUNTERS_BYTES))
        for index, (kind, _) in enumerate(SQL_KINDS):
            figures[kind], figures[f"{kind}_rows"] = raw[2 * index], raw[2 * index + 1]
        figures["checkpoint_written"] = raw[-1]
        return figures

    def stop(self) -> None:
        self.server.stop()
        self.counters.close()
        self._kinds.close()


# -- nginx --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nginx_config(shards: list[ShardAddress], port: int, var_dir: Path) -> tuple[str, str]:
    """The generated standalone configuration, and the workers the benchmark asked for.

    10,000 parked polls need 20,000 connections in nginx. One worker holds at most its
    worker_connections, which the generator caps below the hard open-file limit (20,000
    on this machine, so 19,936): not enough. Then the benchmark asks for as many workers
    as it takes (the generator then listens with `reuseport`, so the kernel spreads the
    client connections evenly over them).
    """
    config = nginx_standalone_config(shards, "127.0.0.1", port, var_dir)
    found = re.search(r"worker_connections (\d+);", config)
    assert found is not None, "the generated configuration sets worker_connections"
    per_worker = int(found.group(1))
    needed = CONNECTIONS_PER_POLL * POLLS + SPARE_CONNECTIONS
    if per_worker >= needed:
        return config, "none"
    # Spreads are never perfectly even: give each worker room for 1.5 times its share.
    workers = -(-3 * needed // (2 * per_worker))
    config = nginx_standalone_config(shards, "127.0.0.1", port, var_dir, workers=workers)
    return config, (
        f"worker_processes {workers} with reuseport (one worker holds {per_worker} "
        f"connections; {POLLS} parked polls need {CONNECTIONS_PER_POLL * POLLS})"
    )


class Nginx:
    """nginx in the foreground with the configuration above, in a folder of its own."""

    def __init__(self, shards: list[ShardAddress]) -> None:
        nginx = find_nginx()
        if nginx is None:
            raise RuntimeError("nginx is not installed: apt-get install nginx-light")
        self.var_dir = Path(tempfile.mkdtemp(prefix="eventq-bench-nginx-"))
        self.port = _free_port()
        config, self.adjusted = _nginx_config(shards, self.port, self.var_dir)
        config_path = self.var_dir / "nginx.conf"
        config_path.write_text(config)
        options = ["-e", "stderr", "-p", str(self.var_dir), "-c", str(config_path)]
        checked = subprocess.run(
            [nginx, "-t", "-q", *options], capture_output=True, text=True, check=False
        )
        if checked.returncode != 0:
            shutil.rmtree(self.var_dir, ignore_errors=True)
            raise RuntimeError(f"nginx refuses its configuration: {checked.stderr.strip()}")
        self._stderr = open(self.var_dir / "nginx-stderr.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [nginx, *options], stdout=self._stderr, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + NGINX_START_TIMEOUT_SECS
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    errors = self.errors()
                    self.stop()
                    raise RuntimeError(f"nginx did not start: {errors}") from None
                time.sleep(0.05)  # nginx tells no one when it listens

    def pids(self) -> list[int]:
        """The master and its workers."""
        master = self.process.pid
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return [master, *(int(pid) for pid in children)]

    def cpu_secs(self) -> float:
        return sum(cpu_secs(pid) for pid in self.pids())

    def errors(self) -> str:
        """nginx's own complaints (its stderr and its error log), for a failure report."""
        parts = []
        for name in ("nginx-stderr.log", "nginx-error.log"):
            path = self.var_dir / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(p for p in parts if p.strip())

    def error_lines(self) -> int:
        """Lines nginx logged at error level or worse (e.g. too few connections)."""
        path = self.var_dir / "nginx-error.log"
        if not path.exists():
            return 0
        return len(re.findall(r"\[(error|crit|alert|emerg)\]", path.read_text(errors="replace")))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # fast shutdown: the benchmark is over
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._stderr.close()
        shutil.rmtree(self.var_dir, ignore_errors=True)


# -- the database -------------------------------------------------------------------------


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """A migrated, empty PostgreSQL database of its own (see the module's docstring)."""
    base = postgres_base_url()
    name = f"eventq_bench_cluster_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(base).set(database=name).render_as_string(hide_password=False)
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _busy_secs() -> float:
    """CPU seconds the whole machine has spent busy (every core), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# -- the measurement ----------------------------------------------------------------------


async def _parked(shards: list[Shard], admin: str) -> int:
    """Polls parked on every shard together, asked of each shard on its own port."""
    counts = await asyncio.gather(*(waiting_polls(s.server.port, admin) for s in shards))
    return sum(counts)


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


async def _checkpointed(
    shards: list[Shard], since: list[dict[str, int]], queues: Counter[str]
) -> None:
    """Wait until each shard has written, since `since`, a checkpoint row for every
    queue it holds (each poll marks its queue for one; they are written every second)."""
    deadline = time.monotonic() + CHECKPOINT_TIMEOUT_SECS
    while True:
        behind = [
            s.name
            for s, before in zip(shards, since, strict=True)
            if s.sql()["checkpoint_written"] - before["checkpoint_written"] < queues[s.name]
        ]
        if not behind:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{', '.join(behind)} did not write the polls' checkpoints")
        await asyncio.sleep(0.2)  # the shards write them behind, every second


def _tcp_active_opens() -> int:
    """TCP connections this machine has opened so far (/proc/net/snmp, ActiveOpens)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    # The Tcp: lines come in pairs, the names and then the values.
    names, values = (line for line in lines if line[0] == "Tcp:")
    return int(values[names.index("ActiveOpens")])


async def _measure(
    shards: list[Shard], nginx: Nginx, credentials: list[tuple[int, str, str]], writer: Writer
) -> dict[str, Any]:
    admin = basic_auth(*credentials[0][1:])
    # Users 1..100 hold the queues; the owner (user 0) only asks the shards for figures.
    auths = [basic_auth(email, key) for _, email, key in credentials[1:]]
    owners = [auths[i % USERS] for i in range(POLLS)]
    started = time.monotonic()
    queue_ids = await register_queues(
        nginx.port,
        owners,
        {"event_types": EVENT_TYPES, "fetch_event_types": []},
        concurrency=REGISTER_CONCURRENCY,
    )
    register_secs = time.monotonic() - started
    spread = Counter(q.partition(".")[0] for q in queue_ids)

    prefixes = [f"/api/v1/events?queue_id={q}&last_event_id=" for q in queue_ids]

    def poll(index: int, last: int) -> bytes:
        return build_request("GET", f"{prefixes[index]}{last}", owners[index])

    fleet = PollFleet(nginx.port, POLLS, poll)
    started = time.monotonic()
    before_polls = [s.sql() for s in shards]
    await fleet.start()
    try:
        parked = await wait_until(lambda: _parked(shards, admin), POLLS, PARK_TIMEOUT_SECS, 1.0)
        if parked < POLLS:
            raise RuntimeError(f"only {parked} of {POLLS} polls parked")
        park_secs = time.monotonic() - started

        # Every poll's arrival marks its queue for a checkpoint (its activity time).
        await _checkpointed(shards, before_polls, spread)
        idle_from = [s.sql() for s in shards]
        await asyncio.sleep(IDLE_SECS)
        idle = [_delta(s.sql(), b) for s, b in zip(shards, idle_from, strict=True)]

        events: list[dict[str, Any]] = []
        for index in range(EVENTS):
            if index:
                again = await wait_until(
                    lambda: _parked(shards, admin), POLLS, PARK_TIMEOUT_SECS, 0.5
                )
                if again < POLLS:
                    raise RuntimeError(f"only {again} of {POLLS} polls parked again")
            sql_from = [s.sql() for s in shards]
            window_start = time.monotonic()
            cpu_from = (
                sum(cpu_secs(s.server.pid) for s in shards),
                nginx.cpu_secs(),
                time.process_time(),
                _busy_secs(),
                time.monotonic(),
            )
            opens_from = _tcp_active_opens()
            fleet.start_round()
            _, committed = await writer.commit()
            await fleet.wait_round(ANSWER_TIMEOUT_SECS)
            wall = time.monotonic() - cpu_from[4]
            cpu = {
                "shards_cpu_secs": sum(cpu_secs(s.server.pid) for s in shards) - cpu_from[0],
                "nginx_cpu_secs": nginx.cpu_secs() - cpu_from[1],
                "client_cpu_secs": time.process_time() - cpu_from[2],
                "machine_busy_pct": 100
                * (_busy_secs() - cpu_from[3])
                / (wall * (os.cpu_count() or 1)),
                "wall_secs": wall,
            }

            last_ms = 1000 * (max(fleet.round_answers) - committed)
            median_ms = 1000 * (statistics.median(fleet.round_answers) - committed)
            opens = _tcp_active_opens() - opens_from
            await _checkpointed(shards, sql_from, spread)
            window = time.monotonic() - window_start
            sql = [_delta(s.sql(), f) for s, f in zip(shards, sql_from, strict=True)]
            events.append(
                {
                    "last_ms": last_ms,
                    "median_ms": median_ms,
                    "window_secs": window,
                    "sql": sql,
                    "tcp_opens": opens,
                }
                | cpu
            )
        if fleet.errors:
            raise RuntimeError(f"{len(fleet.errors)} clients failed: {fleet.errors[0]}")
    finally:
        await fleet.stop()

    def split(d: dict[str, int]) -> dict[str, int]:
        """A window's counts, the shard's background (passes of the consumer that found
        nothing, the liveness refresh) taken out: what the event cost."""
        empty_drains = d["drain_positions"] - d["outbox_read"]
        # Positions + claims per pass; the credential reads are counted apart.
        background = 2 * empty_drains + d["shard_seen"] + d["sweep"] + d["credentials"]
        statements = sum(d[kind] for kind, _ in SQL_KINDS)
        rows = sum(d[f"{kind}_rows"] for kind, _ in SQL_KINDS)
        return {
            "statements": statements - background,
            "executions": rows - background,
            # The sweep's statements run in a few transactions; count them as one.
            "transactions": d["transactions"]
            - empty_drains
            - d["shard_seen"]
            - d["credentials"]
            - min(d["sweep"], 1),
            "outbox_reads": d["outbox_read"],
            "checkpoint_statements": d["checkpoint"],
            "checkpoint_rows": d["checkpoint_written"],
            "other_statements": d["other"],
            "background_statements": background - d["credentials"],
            "credential_reads": d["credentials"],
        }

    per_shard = {
        s.name: {
            key: statistics.mean(split(e["sql"][k])[key] for e in events)
            for key in split(events[0]["sql"][k])
        }
        for k, s in enumerate(shards)
    }

    def mean_over_shards(key: str) -> float:
        return statistics.mean(figures[key] for figures in per_shard.values())

    idle_statements_per_sec = statistics.mean(
        sum(i[kind] for kind, _ in SQL_KINDS) / IDLE_SECS for i in idle
    )
    last_each = [e["last_ms"] for e in events]
    last = statistics.median(last_each)
    return {
        "shards": len(shards),
        "queues_per_shard": {name: spread[name] for name in sorted(spread)},
        "registers_per_sec": POLLS / register_secs,
        "park_secs": park_secs,
        "parked": parked,
        "last_answer_ms": last,
        "last_answer_each_ms": last_each,
        "median_answer_ms": statistics.median(e["median_ms"] for e in events),
        "answers_per_sec": POLLS / (last / 1000),
        "answers_per_sec_each": [POLLS / (v / 1000) for v in last_each],
        "statements_per_event_per_shard": mean_over_shards("statements"),
        "executions_per_event_per_shard": mean_over_shards("executions"),
        "transactions_per_event_per_shard": mean_over_shards("transactions"),
        "checkpoint_rows_per_event_per_shard": mean_over_shards("checkpoint_rows"),
        "checkpoint_statements_per_event_per_shard": mean_over_shards("checkpoint_statements"),
        "other_statements_per_event_per_shard": mean_over_shards("other_statements"),
        "credential_reads_per_event_per_shard": mean_over_shards("credential_reads"),
        "sql_per_event_each_shard": per_shard,
        "idle_statements_per_sec_per_shard": idle_statements_per_sec,
        "statement_window_secs": statistics.mean(e["window_secs"] for e in events),
        "shards_cpu_ms_per_answer": 1000
        * statistics.mean(e["shards_cpu_secs"] for e in events)
        / POLLS,
        "nginx_cpu_ms_per_answer": 1000
        * statistics.mean(e["nginx_cpu_secs"] for e in events)
        / POLLS,
        "client_cpu_ms_per_answer": 1000
        * statistics.mean(e["client_cpu_secs"] for e in events)
        / POLLS,
        "machine_busy_pct": statistics.mean(e["machine_busy_pct"] for e in events),
        "tcp_opens_per_event": statistics.mean(e["tcp_opens"] for e in events),
        "heartbeats": fleet.heartbeats,
        "reconnects": fleet.reconnects,
        "nginx_changes": nginx.adjusted,
        "nginx_errors": nginx.error_lines(),
        "server_errors": sum(s.server.log_count(r" (ERROR|WARNING) ") for s in shards),
        "moves": sum(s.server.log_count(r" moved from ") for s in shards),
        "load_average": os.getloadavg()[0],
    }


def run_shards(count: int) -> dict[str, Any]:
    """The fan-out through nginx to `count` shards on a fresh PostgreSQL database."""
    with fresh_postgres_database() as url:
        db = Database(url)
        realm_id, credentials = create_realm_with_users(db, "cluster", USERS + 1)
        db.dispose()
        shards: list[Shard] = []
        nginx: Nginx | None = None
        writer: Writer | None = None
        try:
            for k in range(1, count + 1):
                shards.append(Shard(f"shard{k}", url))
            nginx = Nginx([s.address for s in shards])
            writer = Writer(url, realm_id)
            return asyncio.run(_measure(shards, nginx, credentials, writer))
        except Exception:
            if nginx is not None and nginx.errors():
                print(f"nginx said:\n{nginx.errors()}", file=sys.stderr)
            raise
        finally:
            if writer is not None:
                writer.close()
            if nginx is not None:
                nginx.stop()
            for shard in shards:
                shard.stop()


def run() -> dict[str, Any]:
    """Every shard count of SHARD_COUNTS, one after the other, in this run."""
    return {f"{count}": run_shards(count) for count in SHARD_COUNTS}


if __name__ == "__main__":
    if sys.argv[1:2] == ["counted-shard"]:
        _counted_shard_main(sys.argv[2:])
    else:
        print(json.dumps(run(), indent=2))
