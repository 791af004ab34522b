"""A private, throwaway PostgreSQL cluster for tests that stop and start the server.

The outage test restarts PostgreSQL under a running eventq server. Doing that to the
machine's own cluster would pull the database out from under everything else that uses
it (other tests, other people's servers), so the test gets a cluster of its own:
`initdb` into a temporary folder, `pg_ctl start` on a free loopback port with the unix
socket in that folder too, and a `test` database. On exit it is stopped and the folder
removed, whatever happened in between.

The server programs are looked up with `pg_config --bindir`, then in Debian's
`/usr/lib/postgresql/VERSION/bin` (newest first), then on PATH. initdb and postgres
refuse to run as root, so when the tests run as root (CI does) the cluster's programs
run as an unprivileged account (`postgres` if it exists, else `nobody`) that owns the
temporary folder. Without the programs a developer's run skips; under `CI=true` it fails.
"""

from __future__ import annotations

import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psycopg

from tests.helpers.databases import skip_or_fail

SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
DEBIAN_VERSIONS = Path("/usr/lib/postgresql")
# Accounts to run the cluster as when we are root, in order of preference.
UNPRIVILEGED_ACCOUNTS = ("postgres", "nobody")
SUPERUSER = "postgres"
DATABASE = "test"
# pg_ctl's own wait for the server to accept connections or to be gone; generous, as
# a loaded CI machine can take a while to checkpoint on shutdown.
PG_CTL_WAIT_SECS = 60
# The bound on any one command: pg_ctl's wait plus the time to start the program.
COMMAND_TIMEOUT_SECS = 120
# Another process may take the free port between our probe and the server's bind.
START_ATTEMPTS = 5
# How long the postmaster may take to exit once pg_ctl says it stopped (pg_ctl waits for
# its pid file to go, which happens just before the process exits), or after SIGKILL.
EXIT_TIMEOUT_SECS = 30.0
# A throwaway cluster: surviving a machine crash is not under test, speed is welcome.
SETTINGS = """
# Added by tests/helpers/pg_cluster.py
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sockets}'
fsync = off
full_page_writes = off
"""


class ClusterError(RuntimeError):
    """A cluster command failed; the message carries its output and the server log."""


def _version_key(bindir: Path) -> tuple[int, ...]:
    """(15,) for /usr/lib/postgresql/15/bin, (9, 6) for 9.6: newest sorts last."""
    return tuple(int(part) for part in bindir.parent.name.split(".") if part.isdigit())


def _has_server_programs(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in SERVER_PROGRAMS)


def find_bindir() -> Path | None:
    """The folder holding initdb, pg_ctl and postgres, or None when there is none."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        # Debian's pg_config comes with libpq and may name a version whose server is
        # not installed: every candidate is checked for the programs below.
        with suppress(OSError, subprocess.SubprocessError):
            answer = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            )
            if answer.stdout.strip():
                candidates.append(Path(answer.stdout.strip()))
    candidates += sorted(DEBIAN_VERSIONS.glob("*/bin"), key=_version_key, reverse=True)
    initdb = shutil.which("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).resolve().parent)
    return next((bindir for bindir in candidates if _has_server_programs(bindir)), None)


def unprivileged_account() -> pwd.struct_passwd | None:
    """The account to run the cluster as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in UNPRIVILEGED_ACCOUNTS:
        with suppress(KeyError):
            return pwd.getpwnam(name)
    raise ClusterError(
        "running as root, and none of the accounts "
        f"{', '.join(UNPRIVILEGED_ACCOUNTS)} exists to run PostgreSQL as"
    )


def free_port() -> int:
    """A loopback port nobody listens on now (the kernel's pick for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_alive(pid: int) -> bool:
    """Whether a process with this PID exists, a zombie included (signal 0 only checks)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by someone else
    return True


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait until the process `pid` has exited; whether it did within `timeout`.

    The postmaster is not our child (pg_ctl started it), so there is no wait() for it;
    a pidfd becomes readable when the process exits, zombie or reaped.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except (AttributeError, OSError) as error:
        # Nothing else announces another process's exit; every machine this project
        # runs on is Linux >= 5.3, so this is a broken environment, said plainly.
        raise RuntimeError(f"cannot wait for process {pid}: no pidfd ({error})") from error
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(pidfd)


class PrivateCluster:
    """One initdb'ed cluster in `root`; `url` reaches its `test` database once started."""

    def __init__(self, bindir: Path, root: Path, account: pwd.struct_passwd | None) -> None:
        self.bindir = bindir
        self.root = root
        self.account = account
        self.data = root / "data"
        self.sockets = root / "sockets"
        self.log = root / "postgres.log"
        self.port = 0
        # Our environment without PGDATA, PGPORT, PGHOST and the like, which would
        # otherwise steer the programs towards another cluster.
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self._env["LC_ALL"] = "C"

    @property
    def url(self) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, program: str, *args: str) -> str:
        """Run one of the server programs as the cluster's account; its output."""
        account = self.account
        completed = subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.root,  # a folder the account may enter, whoever we are
            env=self._env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_SECS,
            check=False,
            user=None if account is None else account.pw_uid,
            group=None if account is None else account.pw_gid,
            extra_groups=None if account is None else [],
        )
        if completed.returncode != 0:
            raise ClusterError(
                f"{program} {' '.join(args)} exited {completed.returncode}:\n"
                f"{completed.stdout}{completed.stderr}{self.log_tail()}"
            )
        return completed.stdout

    def log_tail(self, lines: int = 30) -> str:
        """The end of the server log, for error messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n-- server log --\n" + "\n".join(text.splitlines()[-lines:])

    def init(self) -> None:
        """initdb, trusting local connections, and the settings of a private server."""
        self.sockets.mkdir()
        if self.account is not None:
            os.chown(self.sockets, self.account.pw_uid, self.account.pw_gid)
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",  # nothing to gain from syncing a folder deleted within minutes
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(SETTINGS.format(sockets=self.sockets))

    def start(self) -> None:
        """Start the server and wait until it accepts connections.

        The first start picks a free port; later ones keep it, as clients of the
        restarted server still have its URL.
        """
        attempts = START_ATTEMPTS if self.port == 0 else 1
        for attempt in range(attempts):
            if attempt > 0 or self.port == 0:
                self.port = free_port()
            try:
                self._pg_ctl("start", "--log", str(self.log), "-o", f"-p {self.port}")
                return
            except ClusterError as error:
                if "could not bind" not in str(error) or attempt + 1 == attempts:
                    raise

    def stop(self, mode: str = "fast") -> None:
        """Stop the server and wait until it is gone (`fast`: disconnect clients)."""
        self._pg_ctl("stop", "--mode", mode)

    def _pg_ctl(self, action: str, *args: str) -> None:
        self._run(
            "pg_ctl",
            action,
            "--pgdata",
            str(self.data),
            "--wait",
            "--timeout",
            str(PG_CTL_WAIT_SECS),
            *args,
        )

    def postmaster_pid(self) -> int | None:
        """The running server's PID, from its postmaster.pid; None when it is not running."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, IndexError, ValueError):  # none, or still being written
            return None
        return pid if process_alive(pid) else None

    def create_database(self) -> None:
        admin = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')

    def destroy(self) -> None:
        """Stop the server if it runs, however it can be stopped; then delete the folder.

        Returns once the postmaster has exited, so nothing of the cluster outlives it.
        """
        pid = self.postmaster_pid()
        if pid is not None:
            for mode in ("fast", "immediate"):
                with suppress(ClusterError, subprocess.TimeoutExpired):
                    self.stop(mode)
                    break
            if not wait_for_exit(pid, EXIT_TIMEOUT_SECS):
                # Our own postmaster, by its PID: its children exit when it does.
                os.kill(pid, signal.SIGKILL)
                if not wait_for_exit(pid, EXIT_TIMEOUT_SECS):
                    raise ClusterError(f"the private postmaster {pid} survived SIGKILL")
        shutil.rmtree(self.root)


@contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A started private cluster with an empty `test` database; stopped and removed after.

    Skips (developer) or fails (CI) when the PostgreSQL server programs are missing.
    """
    bindir = find_bindir()
    if bindir is None:
        skip_or_fail(
            "the PostgreSQL server programs",
            "no initdb, pg_ctl and postgres found (pg_config --bindir, "
            f"{DEBIAN_VERSIONS}/*/bin, PATH): install Debian's postgresql",
        )
    account = unprivileged_account()
    # Under the temporary folder (/tmp unless TMPDIR says otherwise, which every account
    # may traverse); the folder itself belongs to the account that runs the cluster.
    root = Path(tempfile.mkdtemp(prefix="eventq-pg-"))
    if account is not None:
        os.chown(root, account.pw_uid, account.pw_gid)
    cluster = PrivateCluster(bindir, root, account)
    try:
        cluster.init()
        cluster.start()
        cluster.create_database()
        yield cluster
    finally:
        cluster.destroy()
