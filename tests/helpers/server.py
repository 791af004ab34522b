"""A real `eventq serve` process on a free loopback port, for integration tests.

The server binds port 0 and logs the port it got, so parallel runs never collide; the
helper reads the process's log as it is written and waits for lines, never sleeps.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

from tests.helpers.cli import EVENTQ

T = TypeVar("T")

_LISTENING = re.compile(r"eventq listening on http://[\d.]+:(\d+)")
START_TIMEOUT_SECS = 30.0


class LiveServer:
    """One server process; `url` is set once it listens."""

    def __init__(
        self,
        database_url: str,
        env: dict[str, str] | None = None,
        port: int = 0,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.database_url = database_url
        # Appended to `eventq serve ...`, e.g. ("--shard", "shard1").
        self.extra_args = tuple(extra_args)
        # 0: a free port chosen by the kernel, which changes at every start. A test that
        # restarts the server under a browser page passes a fixed one (same origin).
        self.requested_port = port
        self.extra_env = env or {}
        self.process: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.url = ""
        self.port = 0
        self._eof = False

    def start(self) -> LiveServer:
        """Start the process and wait until it listens."""
        self.lines = []
        self._eof = False
        env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTQ_")}
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        self.process = subprocess.Popen(
            [
                EVENTQ,
                "--database-url",
                self.database_url,
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.requested_port),
                *self.extra_args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        threading.Thread(target=self._read_log, args=(self.process,), daemon=True).start()
        line = self.wait_for_log(_LISTENING, START_TIMEOUT_SECS)
        match = _LISTENING.search(line)
        assert match is not None
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def _read_log(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for_log(self, pattern: re.Pattern[str] | str, timeout: float) -> str:
        """The first log line (since start) matching `pattern`; fails after `timeout`."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        seen = 0

        def found() -> str | None:
            nonlocal seen
            for line in self.lines[seen:]:
                if regex.search(line):
                    return line
            seen = len(self.lines)
            assert self.process is not None
            if self.process.poll() is not None and seen == len(self.lines):
                raise AssertionError(
                    f"server exited ({self.process.returncode}) before logging {regex.pattern!r}:"
                    "\n" + "\n".join(self.lines[-30:])
                )
            return None

        return self.wait_until(found, timeout, f"no log line {regex.pattern!r}")

    def wait_until(self, found: Callable[[], T | None], timeout: float, what: str) -> T:
        """The first truthy `found()`, asked again each time the server logs a line;
        fails after `timeout` with `what` and the last lines of the log."""
        with self._changed:
            result = self._changed.wait_for(found, timeout)
        if not result:
            raise AssertionError(f"{what} within {timeout}s:\n" + "\n".join(self.lines[-30:]))
        return result

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the process to exit; returns its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        status = self.process.wait(timeout)
        with self._changed:  # the reader thread sees EOF; close our end of the pipe
            self._changed.wait_for(lambda: self.process is None or self._eof, timeout)
        if self.process.stdout is not None:
            self.process.stdout.close()
        return status

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.stop(signal.SIGKILL)


@contextmanager
def live_server(database_url: str, env: dict[str, str] | None = None) -> Iterator[LiveServer]:
    """A started server, stopped gracefully afterwards (and asserted to exit cleanly)."""
    server = LiveServer(database_url, env).start()
    try:
        yield server
    finally:
        if server.process is not None and server.process.poll() is None:
            status = server.stop()
            assert status == 0, "\n".join(server.lines[-30:])
