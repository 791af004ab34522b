"""The nginx configuration that puts eventq shards behind one address (issue 12).

* `nginx_site_config`: the `http {}`-level fragment `eventq nginx-config` prints for
  production: keep-alive upstreams, and the map that sends each poll to the shard its
  queue id names.
* `nginx_standalone_config`: a whole `nginx.conf` around it (logs, pid and temporary
  files in one folder), for `eventq cluster` (server.ops.cluster.supervisor) and the tests.
* `ShardAddress` and `parse_shard`: a shard's name and address, as `--shard` gives them;
  `find_nginx`: where the nginx program is.

It does not decide which shard holds a queue: that is a database fact the shards settle
among themselves (`models.ownership`: claims, epochs, fencing). Routing only makes a
request reach the usual holder at once. A request that reaches another shard still gets
its answer, because that shard claims the queue, so a stale configuration, a reload in
progress or a shard that just died costs a queue move, never a failed request.

Text only: nothing here imports Tornado, opens the database or starts a process.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import resource
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from models.ownership import check_shard_name

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
        check_port(self.port, f"shard {self.name}")

    @property
    def address(self) -> str:
        """`HOST:PORT` as nginx writes it (`[v6]:PORT` for an IPv6 address)."""
        return host_port(self.host, self.port)


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
    check_port(listen_port, "the listen address")
    listen = host_port(listen_host, listen_port)
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
        "# still answered, since that shard claims the queue (server/ops/cluster/nginx.py).",
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
        "# eventq: a whole nginx.conf for a local cluster, generated by "
        "server/ops/cluster/nginx.py.",
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


def check_port(port: int, what: str) -> None:
    """Refuse a port nginx or a shard could not listen on (`what` names it in the error)."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= MAX_PORT:
        raise ValueError(f"{what}: the port must be from 1 to {MAX_PORT}, not {port!r}")


def host_port(host: str, port: int) -> str:
    """`HOST:PORT` as nginx and URLs write it: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _quote(path: Path) -> str:
    """A path as an nginx string: double quotes, with `"` and `\\` escaped."""
    text = str(path)
    if any(c in text for c in "\n\r\0"):
        raise ValueError(f"cannot use a path with a line break in nginx.conf: {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def find_nginx() -> str | None:
    """The nginx program: on PATH, else Debian's /usr/sbin/nginx (not on a user's PATH)."""
    found = shutil.which("nginx")
    if found is not None:
        return found
    debian = Path("/usr/sbin/nginx")
    return str(debian) if os.access(debian, os.X_OK) else None
