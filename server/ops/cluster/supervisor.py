"""`eventq cluster`: N shards and an nginx in front of them, in one foreground process.

`run_cluster` writes the nginx configuration (server.ops.cluster.nginx), starts the
shards and then nginx (server.ops.cluster.children), restarts a shard that dies, and
stops everything on SIGTERM or Ctrl-C; nginx dying stops everything too. It is for
development and demos; production runs each shard under its own supervisor (systemd)
and nginx as the system's.

The supervisor neither imports Tornado nor opens the database: `eventq cluster`
migrates the database before it starts anything (server.ops.cli).
"""

from __future__ import annotations

import json
import logging
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from server.ops.cluster.children import (
    SHARD_HOST,
    Child,
    describe_status,
    nginx_command,
    shard_command,
)
from server.ops.cluster.nginx import (
    MAX_PORT,
    ShardAddress,
    check_port,
    host_port,
    nginx_standalone_config,
)

log = logging.getLogger("eventq.cluster")

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


class ClusterError(ValueError):
    """Raised by `run_cluster` when the cluster cannot start (nginx missing or refusing
    its configuration, a shard that exits or never listens) or when nginx dies; every
    process it started is stopped first. `eventq` prints it and exits with status 1."""


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
        self.shards = [Child(s.name, s.port, RESTART_DELAY_SECS) for s in options.shard_addresses()]
        self.nginx = Child("nginx", options.port, RESTART_DELAY_SECS)
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

    def _spawn(self, child: Child, argv: list[str], env: dict[str, str], pipe: bool) -> None:
        self.selector.register(child.start(argv, env, pipe), selectors.EVENT_READ, child)

    def _spawn_shard(self, shard: Child) -> None:
        argv, env = shard_command(shard.name, shard.port, self.options.database_url)
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
            host_port(self.options.host, self.options.port),
            self.nginx.pid,
            self.config_path,
        )
        self._write_state()

    def _nginx_argv(self, *extra: str) -> list[str]:
        return nginx_command(self.options.nginx, self.var_dir, self.config_path, *extra)

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

    def _copy_output(self, shard: Child, stream: IO[bytes]) -> None:
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

    def _on_exit(self, child: Child) -> None:
        assert child.process is not None and child.pidfd is not None
        self.selector.unregister(child.pidfd)
        returncode = child.collect()
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
            self.nginx.send(signal.SIGQUIT)  # graceful: finish requests in flight
        for shard in self.shards:
            if shard.alive:
                shard.send(signal.SIGTERM)
        children = [*self.shards, self.nginx]
        self._reap(children, STOP_TIMEOUT_SECS, interrupted_by_signal=True)
        survivors = [c for c in children if c.alive]
        for child in survivors:
            log.warning("%s (pid %d) did not stop; killing it", child.name, child.pid)
            child.send(signal.SIGKILL)
        self._reap(survivors, KILL_WAIT_SECS, interrupted_by_signal=False)

    def _reap(self, children: Iterable[Child], timeout: float, interrupted_by_signal: bool) -> None:
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
            "url": f"http://{host_port(self.options.host, self.options.port)}",
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
    check_port(options.port, "--port")
    if last_port > MAX_PORT:
        raise ClusterError(
            f"{options.shards} shards on the ports after {options.port} would need port "
            f"{last_port}, above {MAX_PORT}"
        )
    log.setLevel(logging.INFO)  # `eventq` logs warnings only for commands other than serve
    _Supervisor(options, on_ready).run()
