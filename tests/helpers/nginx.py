"""A real nginx in front of eventq shards, for integration tests (tests/test_cluster.py).

`NginxServer` runs Debian's nginx in the foreground with the configuration
`server.ops.cluster.nginx.nginx_standalone_config` generates, in a folder of the test's, on a
free loopback port. It waits until a worker has started, can be given a new
shard list (`reload`: the file rewritten, SIGHUP to the master, and a wait until only
workers started with the new configuration run), reads its access log (which names the
shard that answered each request), and stops. `nginx_binary()` finds the program;
without it a developer's run skips and a CI run (`CI=true`) fails.

Every wait is on a process or a pipe: the test's copy of the configuration has nginx
write its notices (a worker started, a worker exited) and a copy of each access line to
its stderr, which a thread reads as it is written.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from server.ops.cluster.nginx import ShardAddress, find_nginx, nginx_standalone_config
from tests.helpers.databases import skip_or_fail

START_TIMEOUT_SECS = 15.0
# A reload waits for the old workers to finish their requests: a poll parked through
# nginx keeps one alive until the shard answers it (a heartbeat at worst), so reload
# between polls.
RELOAD_TIMEOUT_SECS = 30.0
STOP_TIMEOUT_SECS = 30.0
CHECK_TIMEOUT_SECS = 30.0
# Another process may take the free port between our probe and nginx's bind.
START_ATTEMPTS = 5


def nginx_binary() -> str:
    """The nginx program; skips the test (developer) or fails it (CI) when missing."""
    found = find_nginx()
    if found is None:
        skip_or_fail(
            "nginx", "nginx is not installed (Debian: apt-get install nginx-light; .ci/run does)"
        )
    return found


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_pids(parent: int) -> set[int]:
    """The live (not zombie) children of process `parent`, from /proc."""
    children = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == parent and state != "Z":
            children.add(int(entry.name))
    return children


class NginxServer:
    """One nginx master (with its workers) in `directory`, in front of `shards`."""

    def __init__(self, directory: Path, shards: Sequence[ShardAddress]) -> None:
        self.binary = nginx_binary()
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_path = directory / "nginx.conf"
        self.access_log = directory / "nginx-access.log"
        self.shards = list(shards)
        self.host = "127.0.0.1"
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.stderr_lines: list[str] = []
        self._stderr_changed = threading.Condition()
        self._stderr_closed = False
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _argv(self, *extra: str) -> list[str]:
        return [
            self.binary,
            *extra,
            "-e",
            "stderr",
            "-p",
            str(self.directory),
            "-c",
            str(self.config_path),
        ]

    def _write_config(self, shards: Sequence[ShardAddress]) -> None:
        config = nginx_standalone_config(shards, self.host, self.port, self.directory)
        # The test reads what nginx announces as it writes it, on its stderr, instead of
        # re-checking for it: its notices (workers started, workers exited) and a copy
        # of every access line.
        config, notices = re.subn(r"error_log stderr \w+;", "error_log stderr notice;", config)
        config, copies = re.subn(
            r"^(\s*)access_log (\S+) eventq;$",
            r"\g<0>\n\1access_log /dev/stderr eventq;",
            config,
            flags=re.MULTILINE,
        )
        assert notices == 1 and copies == 1, config
        self.config_path.write_text(config)
        checked = subprocess.run(
            self._argv("-t", "-q"),
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_SECS,
            check=False,
        )
        assert checked.returncode == 0, f"nginx -t refuses {self.config_path}:\n{checked.stderr}"

    def start(self) -> NginxServer:
        """Start nginx on a free port and wait until it accepts connections."""
        for _ in range(START_ATTEMPTS):
            self.port = free_port()
            self._write_config(self.shards)
            self.stderr_lines = []
            self._stderr_closed = False
            self.process = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                process_group=0,  # its workers too, for `stop`
            )
            self._reader = threading.Thread(target=self._read_stderr, daemon=True)
            self._reader.start()

            # The master opens its listening socket before it starts a worker: once it
            # says so, connections are accepted (or queued until a worker takes them).
            started = self._wait_stderr(
                lambda lines: any("start worker process" in line for line in lines),
                START_TIMEOUT_SECS,
                "a worker started",
            )
            if started:
                return self
            self._reader.join(STOP_TIMEOUT_SECS)
            if self.process.stderr is not None:
                self.process.stderr.close()
            if not any("Address already in use" in line for line in self.stderr_lines):
                break
        raise AssertionError(f"nginx did not start: {self._describe()}")

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            with self._stderr_changed:
                self.stderr_lines.append(line.rstrip("\n"))
                self._stderr_changed.notify_all()
        with self._stderr_changed:
            self._stderr_closed = True
            self._stderr_changed.notify_all()

    def _wait_stderr(self, seen: Callable[[list[str]], bool], timeout: float, what: str) -> bool:
        """Wait until `seen(stderr lines)` holds (True) or nginx's stderr closes, i.e. it
        exited (False); fail after `timeout`."""
        with self._stderr_changed:
            held = self._stderr_changed.wait_for(
                lambda: seen(self.stderr_lines) or self._stderr_closed, timeout
            )
            if not held:
                raise AssertionError(f"not within {timeout}s: {what}; {self._describe()}")
            return seen(self.stderr_lines)

    def _describe(self) -> str:
        status = "running" if self.process and self.process.poll() is None else "exited"
        return f"nginx on port {self.port} ({status}); stderr:\n" + "\n".join(
            self.stderr_lines[-20:]
        )

    def workers(self) -> set[int]:
        assert self.process is not None
        return child_pids(self.process.pid)

    def reload(self, shards: Sequence[ShardAddress]) -> None:
        """Route to `shards` from now on: rewrite the configuration, SIGHUP the master,
        and wait until every worker running was started with the new configuration."""
        assert self.process is not None and self.process.poll() is None, self._describe()
        old = self.workers()
        self._write_config(shards)
        self.shards = list(shards)
        self.process.send_signal(signal.SIGHUP)
        # The master announces each worker's exit; the new workers started before it
        # told the old ones to finish.
        exits = [re.compile(rf"worker process {pid} exited") for pid in sorted(old)]
        reloaded = self._wait_stderr(
            lambda lines: all(any(e.search(line) for line in lines) for e in exits),
            RELOAD_TIMEOUT_SECS,
            f"old workers {sorted(old)} exited (a poll parked through them?)",
        )
        assert reloaded, self._describe()

    def access_lines(self) -> list[str]:
        try:
            return self.access_log.read_text().splitlines()
        except FileNotFoundError:
            return []

    def answered_by(self, queue_id: str, count: int = 1) -> list[str]:
        """The `upstream` of the first `count` logged polls of `queue_id` (nginx writes a
        line just after it answers, so this waits for them)."""
        pattern = re.compile(
            r'"GET /api/v1/events\?[^"]*queue_id=' + re.escape(queue_id) + r'[&" ][^"]*" '
            r".* upstream=(\S+)"
        )

        def upstreams(lines: list[str]) -> list[str]:
            return [m.group(1) for m in map(pattern.search, lines) if m]

        self._wait_stderr(
            lambda lines: len(upstreams(lines)) >= count,
            CHECK_TIMEOUT_SECS,
            f"{count} polls of {queue_id} logged",
        )
        with self._stderr_changed:
            return upstreams(self.stderr_lines)[:count]

    def stop(self, timeout: float = STOP_TIMEOUT_SECS) -> int:
        """SIGQUIT (finish the requests in flight, then exit); SIGKILL after `timeout`."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait(timeout)
        try:  # workers of a master that was killed keep the port: end them too
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self._reader is not None:
            self._reader.join(timeout)
        if self.process.stderr is not None:
            self.process.stderr.close()
        return status
