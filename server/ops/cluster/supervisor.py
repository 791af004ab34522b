"""Several eventq shards behind one nginx: the routing configuration, and `eventq cluster`.

This module owns two things of the scale-out (issue 12):

* **The nginx configuration** that spreads requests over the shards:
  `nginx_site_config`, the `http {}`-level fragment `eventq nginx-config` prints for
  production, and `nginx_standalone_config`, a whole `nginx.conf` around it (logs, pid
  and temporary files in one folder) for `eventq cluster` and the tests.
* **`eventq cluster`** (`run_cluster`): one foreground process that runs N shards and
  an nginx in front of them on this machine, restarts a shard that dies, and stops
  everything on SIGTERM or Ctrl-C. It is for development and demos; production runs
  each shard under its own supervisor (systemd) and nginx as the system's.

It does not decide which shard holds a queue: that is a database fact the shards settle
among themselves (`models.ownership`: claims, epochs, fencing). Routing only makes a
request reach the usual holder at once. A request that reaches another shard still gets
its answer, because that shard claims the queue, so a stale configuration, a reload in
progress or a shard that just died costs a queue move, never a failed request.

Neither the configuration generators nor the supervisor import Tornado or open the
database; `eventq cluster` migrates the database before it starts anything (server.ops.cli.main).
"""

from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from models.ownership import check_shard_name

log = logging.getLogger("eventq.cluster")

MAX_PORT = 65535

# Idle keep-alive connections each nginx worker keeps open to each upstream group.
# Parked long-polls hold their connection busy, so this caps only the idle spares: enough
# for a burst of re-polls after a fan-out to reuse connections instead of opening new ones.
UPSTREAM_KEEPALIVE = 512
# How long nginx leaves a shard alone after a failed connection to it.
UPSTREAM_FAIL_TIMEOUT_SECS = 1
# nginx's connect timeout stays at its default (60 s): 10,000 clients reconnecting at
# once fill a shard's accept queue for seconds, and a shorter timeout failed such polls
# (the cluster benchmark lost 22 of 10,000 with 2 s).
# A shard closes a keep-alive connection idle for EVENTQ_HEADER_TIMEOUT_SECS (20 s by
# default). nginx must drop its idle spares before that: a request sent on a connection
# the shard is closing fails, and nginx does not retry a non-idempotent one (a POST).
UPSTREAM_KEEPALIVE_TIMEOUT_SECS = 15
# A parked poll is answered with a heartbeat within 55 s (85 s at most with
# EVENTQ_HEARTBEAT_SECS); nginx must wait longer than that for the answer.
PROXY_READ_TIMEOUT_SECS = 120
# eventq refuses bodies over 256 KiB itself, with a JSON error the client understands;
# nginx's own limit sits above it so that eventq's answer is the one clients see.
CLIENT_MAX_BODY = "1m"
# Each parked poll holds two nginx connections (client and shard): 30,000 carry the
# 10,000 parked polls of the benchmark with room to spare, where the open-file limit
# allows (`_worker_limits`).
WORKER_CONNECTIONS = 30000
WORKER_RLIMIT_NOFILE = 65536
RESERVED_FILES = 64

# `eventq cluster`: shards listen here, only nginx and local tools reach them directly.
SHARD_HOST = "127.0.0.1"
# A shard logs this once it accepts connections (server.api.app).
LISTENING = re.compile(r"eventq listening on http://\S+:(\d+)")
# A shard reads its schema, rebuilds nothing and binds in about a second; a loaded
# 2-core machine with several starting at once needs more.
SHARD_START_TIMEOUT_SECS = 60.0
# nginx binds its port before it starts its workers; it tells no one when it has.
NGINX_START_TIMEOUT_SECS = 15.0
NGINX_CHECK_TIMEOUT_SECS = 30.0
# How often the supervisor tries nginx's port while it waits for it (nothing to await).
NGINX_CONNECT_RETRY_SECS = 0.05
# A shard that dies is restarted after RESTART_DELAY_SECS, doubling with every death in
# a row up to MAX_RESTART_DELAY_SECS, so one that cannot start (port taken, database
# gone) does not spin; once it has run STABLE_RUN_SECS its next death starts over at 1 s.
RESTART_DELAY_SECS = 1.0
MAX_RESTART_DELAY_SECS = 30.0
STABLE_RUN_SECS = 60.0
# On SIGTERM the shards answer their parked polls and save their queues' checkpoints,
# and nginx finishes the requests in flight; whatever is still running after this is
# killed.
STOP_TIMEOUT_SECS = 30.0
KILL_WAIT_SECS = 10.0

CLUSTER_DIR_NAME = "cluster"
CONFIG_NAME = "nginx.conf"
STATE_NAME = "cluster.json"

# Hosts in the configuration: names, IPv4 and IPv6 addresses. Nothing that could end a
# directive or open a block (`;`, `{`, quotes, spaces) gets into nginx.conf.
_HOST = re.compile(r"[A-Za-z0-9.\-:]+")


@dataclass(frozen=True)
class ShardAddress:
    """A shard by name, and where it listens (its own port, not nginx's)."""

    name: str
    host: str
    port: int

    def __post_init__(self) -> None:
        check_shard_name(self.name)
        _check_host(self.host, f"shard {self.name}")
        _check_port(self.port, f"shard {self.name}")

    @property
    def address(self) -> str:
        """`HOST:PORT` as nginx writes it (`[v6]:PORT` for an IPv6 address)."""
        return _host_port(self.host, self.port)


def parse_shard(spec: str) -> ShardAddress:
    """`NAME=HOST:PORT` (`NAME=[v6 address]:PORT` for IPv6) as a `ShardAddress`."""
    name, equals, address = spec.strip().partition("=")
    if not equals:
        raise ValueError(f"a shard is NAME=HOST:PORT, like shard1=127.0.0.1:9994, not {spec!r}")
    host, colon, port_text = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port_text.isdigit():
        raise ValueError(
            f"shard {name!r}: the address is HOST:PORT, like 127.0.0.1:9994, not {address!r}"
        )
    return ShardAddress(name, host, int(port_text))


def nginx_site_config(
    shards: Sequence[ShardAddress], listen_host: str, listen_port: int, *, reuseport: bool = False
) -> str:
    """The `http {}`-level fragment that routes to `shards`: upstreams, the map, a server.

    - `register` and the REST endpoints go to upstream `eventq_all`, every shard in
      turn: any shard serves them.
    - `GET /api/v1/events` goes by the shard named in `queue_id` (`NAME.hex`): upstream
      `eventq_shard_NAME` is that shard, with the next shard of the list as its backup.
    - A `GET` whose prefix names no listed shard (a removed shard's queues) goes to
      `eventq_by_queue`, a consistent hash of the queue id over every shard.
    - Anything else at `/api/v1/events` (`DELETE`, whose queue id is in the body) goes
      to `eventq_all`: any shard deletes any queue.
    """
    _check_shards(shards)
    _check_host(listen_host, "the listen address")
    _check_port(listen_port, "the listen address")
    listen = _host_port(listen_host, listen_port)
    for shard in shards:
        if shard.address == listen:
            raise ValueError(
                f"shard {shard.name} is at {listen}, where nginx listens: nginx would proxy "
                "to itself"
            )
    # nginx's default marks a server that failed once as down for 10 s: a shard and its
    # backup both restarting within that time would leave the shard's polls with no
    # upstream ("no live upstreams", 502) for up to 10 s although both are back. One
    # second keeps a dead shard from costing every poll a failed connection, and lets a
    # restarted one take its polls back at once.
    down = f"max_fails=1 fail_timeout={UPSTREAM_FAIL_TIMEOUT_SECS}s"
    keepalive = [
        f"keepalive {UPSTREAM_KEEPALIVE};",
        f"keepalive_timeout {UPSTREAM_KEEPALIVE_TIMEOUT_SECS}s;",
    ]
    lines = [
        f"# eventq: {len(shards)} shard{'s' if len(shards) != 1 else ''} behind nginx, "
        "generated by `eventq nginx-config`.",
        "# Routing is a shortcut, not a rule: a request that reaches another shard is",
        "# still answered, since that shard claims the queue (server/ops/cluster/supervisor.py).",
        "",
        "# register and the REST endpoints: any shard serves them.",
        "upstream eventq_all {",
        *(f"    server {s.address} {down};" for s in shards),
        *(f"    {line}" for line in keepalive),
        "}",
        "",
    ]
    for index, shard in enumerate(shards):
        # The backup is the next shard of the list (the last one's is the first): when a
        # shard is down, every one of its polls goes to the same successor at once, which
        # claims its queues and keeps serving them; once the shard is back, nginx returns
        # to it and each queue moves back on its next poll. A successor fixed by the list,
        # not a hash, keeps that predictable for the operator reading the logs.
        successor = shards[(index + 1) % len(shards)]
        lines += [
            f"# Polls of {shard.name}'s queues (ids {shard.name}.*).",
            f"upstream eventq_shard_{shard.name} {{",
            f"    server {shard.address} {down};",
            *([f"    server {successor.address} backup {down};"] if successor is not shard else []),
            *(f"    {line}" for line in keepalive),
            "}",
            "",
        ]
    lines += [
        "# Polls of queues whose id names no listed shard: a removed shard's, or one made",
        "# before sharding. A consistent hash of the id sends each queue to one shard and",
        "# keeps it there poll after poll (a queue that moved on every poll would pay a claim",
        "# and an outbox catch-up each time); adding or removing another shard later remaps",
        "# only about 1/N of these queues.",
        "upstream eventq_by_queue {",
        "    hash $arg_queue_id consistent;",
        *(f"    server {s.address} {down};" for s in shards),
        *(f"    {line}" for line in keepalive),
        "}",
        "",
        "# Which upstream a request to /api/v1/events goes to. Clients never URL-encode the",
        "# '.' of a queue id, so $arg_queue_id starts with the shard's name as it was made.",
        'map "$request_method:$arg_queue_id" $eventq_events_upstream {',
        *(f"    ~^GET:{s.name}\\.  eventq_shard_{s.name};" for s in shards),
        "    ~^GET:  eventq_by_queue;",
        "    default  eventq_all;",
        "}",
        "",
        "server {",
        # reuseport: with several nginx workers, the kernel spreads new connections
        # evenly over them (without it one worker may take most of them).
        f"    listen {listen}{' reuseport' if reuseport else ''};",
        f"    client_max_body_size {CLIENT_MAX_BODY};",
        "",
        "    # Keep-alive connections to the shards; the client's address for their rate",
        "    # limits and logs (set EVENTQ_TRUSTED_PROXY=on on the shards); one request id",
        "    # from nginx's access log to the shard's.",
        "    proxy_http_version 1.1;",
        '    proxy_set_header Connection "";',
        "    proxy_set_header Host $http_host;",
        "    proxy_set_header X-Real-IP $remote_addr;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "    proxy_set_header X-Request-Id $request_id;",
        "    # A parked poll is answered within 55 s (a heartbeat at worst).",
        f"    proxy_read_timeout {PROXY_READ_TIMEOUT_SECS}s;",
        "",
        "    location = /api/v1/events {",
        "        proxy_pass http://$eventq_events_upstream;",
        "        # An answer goes to the client as soon as the shard sends it.",
        "        proxy_buffering off;",
        "    }",
        "",
        "    # Each shard has its own figures: scrape and probe the shards' own ports.",
        "    location ~ ^/(metrics|healthz|readyz)$ {",
        "        allow 127.0.0.1;",
        "        allow ::1;",
        "        deny all;",
        "        proxy_pass http://eventq_all;",
        "    }",
        "",
        "    location / {",
        "        proxy_pass http://eventq_all;",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def nginx_standalone_config(
    shards: Sequence[ShardAddress],
    listen_host: str,
    listen_port: int,
    var_dir: Path,
    *,
    workers: int = 1,
) -> str:
    """A whole `nginx.conf` around `nginx_site_config`, run in the foreground.

    Its pid file, logs (`nginx-error.log`, `nginx-access.log`) and temporary files are
    under `var_dir`, which must exist; start it with `nginx -c FILE -p VAR_DIR -e stderr`.
    `workers` > 1 (for more connections than one worker may hold under this machine's
    open-file limit) listens with `reuseport`.
    """
    if workers < 1:
        raise ValueError(f"nginx needs at least one worker, not {workers}")
    site = nginx_site_config(shards, listen_host, listen_port, reuseport=workers > 1)
    var = Path(var_dir).absolute()
    open_files, connections = _worker_limits()
    lines = [
        "# eventq: a whole nginx.conf for a local cluster, generated by server/ops/cluster/supervisor.py.",
        "# In the foreground, so the process that started it supervises it.",
        "daemon off;",
        "master_process on;",
        "# The shards do the work; one worker carries every connection unless told otherwise.",
        f"worker_processes {workers};",
        f"worker_rlimit_nofile {open_files};",
        f"pid {_quote(var / 'nginx.pid')};",
        f"error_log {_quote(var / 'nginx-error.log')} warn;",
        "error_log stderr error;",
    ]
    if os.geteuid() == 0:
        # A master started by root runs its workers as `nobody`, who could not write the
        # temporary folders under var_dir. Run them as the user we are.
        account = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(account.pw_gid).gr_name
        lines.append(f"user {account.pw_name} {group};")
    lines += [
        "",
        "events {",
        f"    worker_connections {connections};",
        "}",
        "",
        "http {",
        "    # Which shard answered ($upstream_addr) and the request id the shard logs too.",
        "    log_format eventq '$remote_addr [$time_local] \"$request\" $status '",
        "                      '$body_bytes_sent $request_time upstream=$upstream_addr '",
        "                      'upstream_status=$upstream_status request_id=$request_id';",
        f"    access_log {_quote(var / 'nginx-access.log')} eventq;",
        f"    client_body_temp_path {_quote(var / 'client_body_temp')};",
        f"    proxy_temp_path {_quote(var / 'proxy_temp')};",
        f"    fastcgi_temp_path {_quote(var / 'fastcgi_temp')};",
        f"    uwsgi_temp_path {_quote(var / 'uwsgi_temp')};",
        f"    scgi_temp_path {_quote(var / 'scgi_temp')};",
        "",
        *(f"    {line}" if line else "" for line in site.splitlines()),
        "}",
    ]
    return "\n".join(lines) + "\n"


def _worker_limits() -> tuple[int, int]:
    """(worker_rlimit_nofile, worker_connections) this machine allows.

    nginx can raise its open-file limit only up to the hard limit (unless it has
    CAP_SYS_RESOURCE, which a container's root often lacks): asking for more makes it
    log an alert at every start and then run with fewer connections than configured.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_files = WORKER_RLIMIT_NOFILE
    if hard != resource.RLIM_INFINITY:
        open_files = min(open_files, hard)
    # Some descriptors go to listening sockets, logs and the pid file.
    return open_files, max(1024, min(WORKER_CONNECTIONS, open_files - RESERVED_FILES))


def _check_shards(shards: Sequence[ShardAddress]) -> None:
    if not shards:
        raise ValueError("at least one shard is needed")
    names: dict[str, ShardAddress] = {}
    addresses: dict[str, ShardAddress] = {}
    for shard in shards:
        if shard.name in names:
            raise ValueError(f"shard name {shard.name!r} is given twice")
        if shard.address in addresses:
            raise ValueError(
                f"shards {addresses[shard.address].name} and {shard.name} are both at "
                f"{shard.address}"
            )
        names[shard.name] = addresses[shard.address] = shard


def _check_host(host: str, what: str) -> None:
    if not _HOST.fullmatch(host):
        raise ValueError(
            f"{what}: bad host {host!r}: a name, an IPv4 or an IPv6 address (letters, digits, "
            "'.', '-', ':')"
        )


def _check_port(port: int, what: str) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= MAX_PORT:
        raise ValueError(f"{what}: the port must be from 1 to {MAX_PORT}, not {port!r}")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quote(path: Path) -> str:
    """A path as an nginx string: double quotes, with `"` and `\\` escaped."""
    text = str(path)
    if any(c in text for c in "\n\r\0"):
        raise ValueError(f"cannot use a path with a line break in nginx.conf: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- eventq cluster -----------------------------------------------------------------


class ClusterError(ValueError):
    """Raised by `run_cluster` when the cluster cannot start (nginx missing or refusing
    its configuration, a shard that exits or never listens) or when nginx dies; every
    process it started is stopped first. `eventq` prints it and exits with status 1."""


def find_nginx() -> str | None:
    """The nginx program: on PATH, else Debian's /usr/sbin/nginx (not on a user's PATH)."""
    import shutil

    found = shutil.which("nginx")
    if found is not None:
        return found
    debian = Path("/usr/sbin/nginx")
    return str(debian) if os.access(debian, os.X_OK) else None


def cluster_dir(var_root: Path) -> Path:
    """Where `eventq cluster` keeps nginx.conf, cluster.json, logs and pid files."""
    return var_root / CLUSTER_DIR_NAME


@dataclass(frozen=True)
class ClusterOptions:
    """What `eventq cluster` runs: N shards on the ports after nginx's."""

    shards: int
    host: str
    port: int
    database_url: str
    nginx: str
    var_dir: Path

    def shard_addresses(self) -> list[ShardAddress]:
        return [
            ShardAddress(f"shard{k}", SHARD_HOST, self.port + k) for k in range(1, self.shards + 1)
        ]


@dataclass
class _Child:
    """A process the supervisor runs: a shard, or nginx."""

    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    pidfd: int | None = None
    started_at: float = 0.0
    restarts: int = 0
    delay: float = RESTART_DELAY_SECS
    restart_at: float | None = None
    listening: threading.Event = field(default_factory=threading.Event)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.alive and self.process is not None else None


def describe_status(returncode: int) -> str:
    """`exited with status 1`, or `was killed by SIGKILL` for a negative Popen code."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


class _Supervisor:
    """The processes of one `eventq cluster` and the loop that watches them.

    Single-threaded: one selector waits for a child's exit (a pidfd turns readable), a
    signal (`signal.set_wakeup_fd`), a shard's "listening" line (its log reader thread
    writes a byte) and the next restart that is due. Only the reader threads run
    elsewhere: they copy each shard's output to our stderr.
    """

    def __init__(self, options: ClusterOptions, on_ready: Callable[[], None]) -> None:
        self.options = options
        self.on_ready = on_ready
        self.var_dir = options.var_dir.absolute()
        self.config_path = self.var_dir / CONFIG_NAME
        self.state_path = self.var_dir / STATE_NAME
        self.shards = [_Child(s.name, s.port) for s in options.shard_addresses()]
        self.nginx = _Child("nginx", options.port)
        self.selector = selectors.DefaultSelector()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        os.set_blocking(self.wake_write, False)
        self.selector.register(self.wake_read, selectors.EVENT_READ, None)
        self.stop_signal: int | None = None
        self.signals_seen = 0
        self.stopping = False
        # Set once nginx accepts connections: from then on a dead shard is restarted.
        self.started = False
        self.output_lock = threading.Lock()
        self.prefix_width = max(len(s.name) for s in self.shards)

    # -- the main line ---------------------------------------------------------------

    def run(self) -> None:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        previous_wakeup = signal.set_wakeup_fd(self.wake_write, warn_on_full_buffer=False)
        try:
            self._start()
            if self.stop_signal is None:
                self.on_ready()
                self._supervise()
        finally:
            self.stopping = True
            self._stop_all()
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.state_path.unlink(missing_ok=True)
            self.selector.close()
            os.close(self.wake_read)
            os.close(self.wake_write)
        if self.stop_signal is not None:
            log.info("stopped on %s", signal.Signals(self.stop_signal).name)

    def _start(self) -> None:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        config = nginx_standalone_config(
            self.options.shard_addresses(), self.options.host, self.options.port, self.var_dir
        )
        self.config_path.write_text(config)
        self._check_nginx_config()
        for shard in self.shards:
            self._spawn_shard(shard)
        deadline = time.monotonic() + SHARD_START_TIMEOUT_SECS
        while self.stop_signal is None and not all(s.listening.is_set() for s in self.shards):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waiting = ", ".join(s.name for s in self.shards if not s.listening.is_set())
                raise ClusterError(
                    f"{waiting} did not listen within {SHARD_START_TIMEOUT_SECS:g}s; "
                    "see the log above"
                )
            self._turn(remaining)
        if self.stop_signal is not None:
            return
        self._spawn_nginx()
        self._wait_for_nginx()
        self.started = self.stop_signal is None

    def _supervise(self) -> None:
        while self.stop_signal is None:
            due = [s.restart_at for s in self.shards if s.restart_at is not None]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            self._turn(timeout)
            now = time.monotonic()
            for shard in self.shards:
                if (
                    self.stop_signal is None
                    and shard.restart_at is not None
                    and shard.restart_at <= now
                ):
                    shard.restart_at = None
                    shard.restarts += 1
                    self._spawn_shard(shard)

    def _turn(self, timeout: float | None) -> None:
        """Wait up to `timeout` for anything, and handle what happened."""
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._drain_wakeups()
            else:
                self._on_exit(key.data)

    # -- children --------------------------------------------------------------------

    def _spawn(self, child: _Child, argv: list[str], env: dict[str, str], pipe: bool) -> None:
        child.listening.clear()
        # A process group of its own: Ctrl-C in the terminal reaches only the supervisor,
        # which stops the children in order (nginx first, then the shards).
        child.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            # A shard's stdout carries only `serve`'s connection help, which names the
            # shard's own port: the cluster prints its own. Its log is on stderr.
            stdout=subprocess.DEVNULL if pipe else None,
            stderr=subprocess.PIPE if pipe else None,
            env=env,
            process_group=0,
        )
        child.started_at = time.monotonic()
        child.pidfd = os.pidfd_open(child.process.pid)
        self.selector.register(child.pidfd, selectors.EVENT_READ, child)

    def _spawn_shard(self, shard: _Child) -> None:
        env = dict(os.environ)
        # The URL goes through the environment, not argv, where `ps` would show a password.
        env["EVENTQ_DATABASE_URL"] = self.options.database_url
        env["EVENTQ_TRUSTED_PROXY"] = "on"  # every request comes through nginx
        env["PYTHONUNBUFFERED"] = "1"
        # One address cannot serve N shards' metrics: each serves its own on its port.
        env.pop("EVENTQ_METRICS_ADDRESS", None)
        env.pop("EVENTQ_SHARD", None)
        argv = [
            sys.executable,
            "-m",
            "server.ops.cli.main",
            "serve",
            "--shard",
            shard.name,
            "--host",
            SHARD_HOST,
            "--port",
            str(shard.port),
        ]
        self._spawn(shard, argv, env, pipe=True)
        assert shard.process is not None and shard.process.stderr is not None
        threading.Thread(
            target=self._copy_output,
            args=(shard, shard.process.stderr),
            name=f"eventq-cluster-{shard.name}",
            daemon=True,
        ).start()
        log.info("started %s on %s:%d (pid %d)", shard.name, SHARD_HOST, shard.port, shard.pid)
        self._write_state()

    def _spawn_nginx(self) -> None:
        self._spawn(self.nginx, self._nginx_argv(), dict(os.environ), pipe=False)
        log.info(
            "started nginx on %s (pid %d), configuration %s",
            _host_port(self.options.host, self.options.port),
            self.nginx.pid,
            self.config_path,
        )
        self._write_state()

    def _nginx_argv(self, *extra: str) -> list[str]:
        # -e: nginx's own messages before it has read the configuration go to stderr,
        # not to the compiled-in /var/log/nginx/error.log.
        return [
            self.options.nginx,
            *extra,
            "-e",
            "stderr",
            "-p",
            str(self.var_dir),
            "-c",
            str(self.config_path),
        ]

    def _check_nginx_config(self) -> None:
        try:
            checked = subprocess.run(
                self._nginx_argv("-t", "-q"),
                capture_output=True,
                text=True,
                timeout=NGINX_CHECK_TIMEOUT_SECS,
                check=False,
            )
        except OSError as error:
            raise ClusterError(f"cannot run {self.options.nginx}: {error}") from None
        if checked.returncode != 0:
            raise ClusterError(
                f"nginx refuses {self.config_path}:\n{(checked.stderr or checked.stdout).strip()}"
            )

    def _wait_for_nginx(self) -> None:
        host = self.options.host
        if host in ("0.0.0.0", "::", "*"):
            host = "::1" if host == "::" else "127.0.0.1"
        deadline = time.monotonic() + NGINX_START_TIMEOUT_SECS
        while self.stop_signal is None:
            try:
                with socket.create_connection((host, self.options.port), timeout=1.0):
                    return
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"nginx does not accept connections on port {self.options.port} after "
                    f"{NGINX_START_TIMEOUT_SECS:g}s; see {self.var_dir / 'nginx-error.log'}"
                )
            self._turn(NGINX_CONNECT_RETRY_SECS)

    def _copy_output(self, shard: _Child, stream: IO[bytes]) -> None:
        """Copy a shard's log to our stderr, each line marked with its name, and
        tell the main loop when it listens. Runs on the shard's reader thread."""
        prefix = f"{shard.name.ljust(self.prefix_width)} | "
        # JSON log lines stay one JSON object each: they carry the shard in their fields.
        prefixed = os.environ.get("EVENTQ_LOG_FORMAT", "").strip().lower() != "json"
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self.output_lock:
                sys.stderr.write((prefix + line if prefixed else line) + "\n")
                sys.stderr.flush()
            match = LISTENING.search(line)
            if match is not None and int(match.group(1)) == shard.port:
                shard.listening.set()
                self._wake()
        stream.close()

    def _on_exit(self, child: _Child) -> None:
        assert child.process is not None and child.pidfd is not None
        returncode = child.process.wait()
        self.selector.unregister(child.pidfd)
        os.close(child.pidfd)
        child.pidfd = None
        # What it leaves behind goes with it: workers of an nginx master that was killed
        # keep its port open, and a restarted nginx could not bind it. Its process group
        # (its pid, `_spawn`) stays reserved while any member lives, so this reaches
        # only its own.
        try:
            os.killpg(child.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.stopping:
            return
        ran = time.monotonic() - child.started_at
        if child is self.nginx:
            raise ClusterError(
                f"nginx (pid {child.process.pid}) {describe_status(returncode)}; "
                f"see {self.var_dir / 'nginx-error.log'}"
            )
        if not self.started:
            # A shard that cannot start now (port taken, database unreachable) will not
            # start later either: say so instead of restarting it forever.
            raise ClusterError(
                f"{child.name} {describe_status(returncode)} before the cluster "
                f"started (it was to listen on port {child.port}); see its log above"
            )
        if ran >= STABLE_RUN_SECS:
            child.delay = RESTART_DELAY_SECS
        delay = child.delay
        child.delay = min(child.delay * 2, MAX_RESTART_DELAY_SECS)
        child.restart_at = time.monotonic() + delay
        log.warning(
            "%s (pid %d) %s after %.1fs; restarting it in %gs",
            child.name,
            child.process.pid,
            describe_status(returncode),
            ran,
            delay,
        )
        self._write_state()

    def _stop_all(self) -> None:
        """nginx first (it stops accepting), then the shards; bounded, then SIGKILL."""
        for shard in self.shards:
            shard.restart_at = None
        if self.nginx.alive:
            self._signal(self.nginx, signal.SIGQUIT)  # graceful: finish requests in flight
        for shard in self.shards:
            if shard.alive:
                self._signal(shard, signal.SIGTERM)
        children = [*self.shards, self.nginx]
        self._reap(children, STOP_TIMEOUT_SECS, interrupted_by_signal=True)
        survivors = [c for c in children if c.alive]
        for child in survivors:
            log.warning("%s (pid %d) did not stop; killing it", child.name, child.pid)
            self._signal(child, signal.SIGKILL)
        self._reap(survivors, KILL_WAIT_SECS, interrupted_by_signal=False)

    def _reap(
        self, children: Iterable[_Child], timeout: float, interrupted_by_signal: bool
    ) -> None:
        """Wait until `children` have exited, at most `timeout`; a second stop signal
        (Ctrl-C again) ends the wait at once when `interrupted_by_signal`."""
        signals_before = self.signals_seen
        deadline = time.monotonic() + timeout
        children = list(children)
        while any(c.pidfd is not None for c in children):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if interrupted_by_signal and self.signals_seen > signals_before:
                return
            self._turn(remaining)

    def _signal(self, child: _Child, sig: int) -> None:
        if child.process is not None and child.process.returncode is None:
            try:
                child.process.send_signal(sig)
            except ProcessLookupError:
                pass

    # -- signals, wake-ups and the state file ----------------------------------------

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals_seen += 1
        if self.stop_signal is None:
            self.stop_signal = signum

    def _wake(self) -> None:
        try:
            os.write(self.wake_write, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of wake-ups already: the loop will look

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def _write_state(self) -> None:
        """cluster.json: who runs where, for operators and tests (rewritten on every
        start and exit of a process; removed when the cluster stops)."""
        state: dict[str, Any] = {
            "supervisor_pid": os.getpid(),
            "url": f"http://{_host_port(self.options.host, self.options.port)}",
            "config": str(self.config_path),
            "nginx": {"pid": self.nginx.pid, "port": self.options.port},
            "shards": [
                {
                    "name": s.name,
                    "host": SHARD_HOST,
                    "port": s.port,
                    "pid": s.pid,
                    "restarts": s.restarts,
                }
                for s in self.shards
            ],
        }
        temporary = self.state_path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(temporary, self.state_path)  # readers never see half a file


_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def run_cluster(options: ClusterOptions, on_ready: Callable[[], None]) -> None:
    """Run nginx and `options.shards` shards until SIGTERM or SIGINT, then stop them all.

    Shard K is `shardK` on port `options.port + K`; nginx listens on `options.port`
    with the configuration written to `options.var_dir/nginx.conf`, and
    `options.var_dir/cluster.json` names every process. `on_ready` runs once nginx
    accepts connections. Returns after a clean stop; raises ClusterError when the
    cluster could not start or nginx died (having stopped everything it started).
    """
    if options.shards < 1:
        raise ClusterError("--shards must be 1 or more")
    last_port = options.port + options.shards
    _check_port(options.port, "--port")
    if last_port > MAX_PORT:
        raise ClusterError(
            f"{options.shards} shards on the ports after {options.port} would need port "
            f"{last_port}, above {MAX_PORT}"
        )
    log.setLevel(logging.INFO)  # `eventq` logs warnings only for commands other than serve
    _Supervisor(options, on_ready).run()
