"""The processes `eventq cluster` runs: a shard or nginx, one `Child` each.

This module owns what is true of one process: the command line and environment of a
shard and of nginx, starting it in a process group of its own with a pidfd that tells
its exit, signalling it, and collecting it together with whatever it left behind. The
loop that watches them all, restarts a shard and stops everything in order is the
supervisor's (server.ops.cluster.supervisor).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# `eventq cluster`: shards listen here, only nginx and local tools reach them directly.
SHARD_HOST = "127.0.0.1"


@dataclass
class Child:
    """A process the supervisor runs: a shard, or nginx.

    `delay`, `restarts` and `restart_at` are the supervisor's restart bookkeeping;
    `listening` is set by the shard's log reader once it accepts connections.
    """

    name: str
    port: int
    delay: float
    process: subprocess.Popen[bytes] | None = None
    pidfd: int | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_at: float | None = None
    listening: threading.Event = field(default_factory=threading.Event)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.alive and self.process is not None else None

    def start(self, argv: list[str], env: dict[str, str], pipe: bool) -> int:
        """Start the process (again); returns a pidfd that turns readable when it exits.

        With `pipe`, its stderr comes back through `process.stderr` and its stdout is
        dropped; without, both are ours.
        """
        self.listening.clear()
        # A process group of its own: Ctrl-C in the terminal reaches only the supervisor,
        # which stops the children in order (nginx first, then the shards).
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            # A shard's stdout carries only `serve`'s connection help, which names the
            # shard's own port: the cluster prints its own. Its log is on stderr.
            stdout=subprocess.DEVNULL if pipe else None,
            stderr=subprocess.PIPE if pipe else None,
            env=env,
            process_group=0,
        )
        self.started_at = time.monotonic()
        self.pidfd = os.pidfd_open(self.process.pid)
        return self.pidfd

    def send(self, sig: int) -> None:
        """Send `sig` to the process if it has not been collected yet."""
        if self.process is not None and self.process.returncode is None:
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:
                pass

    def collect(self) -> int:
        """Once its pidfd turned readable: close the pidfd, kill what the process left
        behind, and return its exit status (Popen's: negative for a signal)."""
        assert self.process is not None and self.pidfd is not None
        returncode = self.process.wait()
        os.close(self.pidfd)
        self.pidfd = None
        # What it leaves behind goes with it: workers of an nginx master that was killed
        # keep its port open, and a restarted nginx could not bind it. Its process group
        # (its pid, `start`) stays reserved while any member lives, so this reaches
        # only its own.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return returncode


def describe_status(returncode: int) -> str:
    """`exited with status 1`, or `was killed by SIGKILL` for a negative Popen code."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def shard_command(name: str, port: int, database_url: str) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of shard `name`: `eventq serve` on `port`."""
    env = dict(os.environ)
    # The URL goes through the environment, not argv, where `ps` would show a password.
    env["EVENTQ_DATABASE_URL"] = database_url
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
        name,
        "--host",
        SHARD_HOST,
        "--port",
        str(port),
    ]
    return argv, env


def nginx_command(nginx: str, var_dir: Path, config_path: Path, *extra: str) -> list[str]:
    """The command line of the nginx program `nginx` with the configuration
    `config_path` and its files under `var_dir`; `extra` options go first (`-t`)."""
    # -e: nginx's own messages before it has read the configuration go to stderr,
    # not to the compiled-in /var/log/nginx/error.log.
    return [nginx, *extra, "-e", "stderr", "-p", str(var_dir), "-c", str(config_path)]
