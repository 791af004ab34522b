"""Real Zulip clients nobody here wrote, installed and run unmodified for the tests.

Owns: finding the interpreters and tools each client needs (Python 3.10 for
zulip-terminal, Python 3.11 for zulip_bots, node 20 and npm for zulip-js, tmux to give
zulip-terminal a terminal), building each client's environment from the pinned files in
`tests/clients/` into a cache under `var/clients/` (keyed by the pinned file's hash and
the interpreter, so a later run reuses it and a changed pin rebuilds it), and the small
drivers the tests use: a tmux pane read with `capture-pane` each time its output, piped
to the test, wakes a wait; a child process whose output lines are awaited; a log file
made a named pipe (`PipedLog`); and the server's access log read per user; and the evidence
of each client's run (its first and last screen or log lines, `write_evidence`).

Nothing is installed by hand: a fresh CI machine builds every environment from the
pinned files on its first run. A missing interpreter or tool skips the test on a
developer's machine and fails it under `CI=true` (`skip_or_fail`).
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.databases import skip_or_fail
from tests.helpers.server import LiveServer

REPO = Path(__file__).resolve().parents[2]
PINNED = REPO / "tests" / "clients"
CACHE = REPO / "var" / "clients"
# Building an environment downloads and compiles; generous for a slow CI machine.
BUILD_TIMEOUT_SECS = 600.0


# -- interpreters and tools ------------------------------------------------------------------


def _python_version(executable: str) -> tuple[int, int] | None:
    """The (major, minor) an interpreter reports, or None when it does not run.

    pyenv's shims exist on PATH for every installed version but fail unless that
    version is selected, so running the candidate is the only reliable check.
    """
    try:
        completed = subprocess.run(
            [executable, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=_clean_env(),
        )
    except OSError:
        return None
    if completed.returncode != 0:
        return None
    major, minor = completed.stdout.split()
    return int(major), int(minor)


def _pyenv_roots() -> list[Path]:
    roots = []
    if os.environ.get("PYENV_ROOT"):
        roots.append(Path(os.environ["PYENV_ROOT"]))
    roots.append(Path.home() / ".pyenv")
    pyenv = shutil.which("pyenv")
    if pyenv is not None:
        completed = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        if completed.returncode == 0 and completed.stdout.strip():
            roots.append(Path(completed.stdout.strip()))
    return list(dict.fromkeys(roots))


def _patch_level(path: str) -> tuple[int, ...]:
    """3.10.13 -> (3, 10, 13), from a pyenv path `.../versions/3.10.13/bin/python3.10`."""
    digits = re.search(r"versions/(\d+(?:\.\d+)*)", path)
    return tuple(int(part) for part in digits.group(1).split(".")) if digits else ()


def find_python(version: str) -> str | None:
    """A working `python{version}` interpreter (e.g. "3.10"), or None.

    Looked for where pyenv installs versions (no shell initialisation needed), then on
    PATH and in the usual system places; the newest patch release of pyenv's wins.
    """
    wanted = tuple(int(part) for part in version.split("."))
    candidates: list[str] = []
    for root in _pyenv_roots():
        found = glob.glob(str(root / "versions" / f"{version}.*" / "bin" / f"python{version}"))
        candidates += sorted(found, key=_patch_level, reverse=True)
    on_path = shutil.which(f"python{version}")
    if on_path is not None:
        candidates.append(on_path)
    candidates += [f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    for candidate in dict.fromkeys(candidates):
        if os.access(candidate, os.X_OK) and _python_version(candidate) == wanted:
            return candidate
    return None


def require_python(version: str, client: str) -> str:
    """`find_python`, or skip (developer) / fail (CI) naming the client that needs it."""
    executable = find_python(version)
    if executable is None:
        skip_or_fail(
            f"Python {version}",
            f"{client} needs Python {version}, found neither in pyenv's versions "
            f"({', '.join(str(root) for root in _pyenv_roots())}) nor on PATH",
        )
    return executable


def require_tool(command: str, client: str, package: str) -> str:
    """The path of `command`, or skip (developer) / fail (CI) saying how to install it."""
    path = shutil.which(command)
    if path is None:
        skip_or_fail(command, f"{client} needs `{command}`: install Debian's {package}")
    return path


def require_node(major: int = 20) -> tuple[str, str]:
    """`node` (of at least `major`) and `npm`, or skip (developer) / fail (CI)."""
    node = require_tool("node", "zulip-js", "nodejs")
    npm = require_tool("npm", "zulip-js", "npm")
    completed = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    found = re.match(r"v(\d+)\.", completed.stdout.strip())
    if found is None or int(found.group(1)) < major:
        skip_or_fail(
            f"node {major}", f"zulip-js 2.1.0 is tested on node {major}; found {completed.stdout}"
        )
    return node, npm


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a client: none of eventq's settings, this venv's Python or
    pytest's variables (zulip-terminal runs its threads inline when it sees
    PYTEST_CURRENT_TEST, and then never gets past its loading spinner)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("EVENTQ_", "PYTHON", "VIRTUAL_ENV", "PYENV_VERSION", "PYTEST_"))
    }
    env["LANG"] = env.get("LANG") or "C.UTF-8"
    env.update(extra or {})
    return env


# -- cached environments ---------------------------------------------------------------------


def _digest(*parts: bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(hashlib.sha256(part).digest())
    return hasher.hexdigest()[:16]


@contextmanager
def _build_lock() -> Iterator[None]:
    """One build at a time across processes (two test runs may start together)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _run_build_step(command: Sequence[str], cwd: Path | None = None) -> None:
    completed = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_SECS,
        check=False,
        cwd=cwd,
        env=_clean_env(),
    )
    if completed.returncode != 0:
        raise AssertionError(
            f"building a client environment failed: {' '.join(command)}\n"
            f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
        )


def _cached(name: str, key: str, build: Callable[[Path], None]) -> Path:
    """`var/clients/NAME-KEY`, built by `build(directory)` unless a complete one exists.

    The build happens in a scratch directory renamed into place at the end, so an
    interrupted build is never mistaken for a complete one.
    """
    final = CACHE / f"{name}-{key}"
    if (final / ".complete").is_file():
        return final
    with _build_lock():
        if (final / ".complete").is_file():
            return final
        scratch = CACHE / f".{name}-{key}.{uuid.uuid4().hex[:8]}"
        try:
            build(scratch)
            (scratch / ".complete").write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
            shutil.rmtree(final, ignore_errors=True)
            scratch.rename(final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final


def python_client_venv(requirements: str, python: str) -> Path:
    """A virtualenv of `python` with `tests/clients/REQUIREMENTS` installed, cached.

    Built in place, as a virtualenv's scripts name its own path and it cannot be moved
    after; its `.complete` marker is written last, so an interrupted build is redone.
    """
    pinned = PINNED / requirements
    interpreter = subprocess.run(
        [python, "-c", "import sys; print(sys.version)"],
        capture_output=True,
        check=True,
        env=_clean_env(),
    ).stdout
    key = _digest(pinned.read_bytes(), interpreter)
    name = pinned.stem
    final = CACHE / f"{name}-{key}"
    if (final / ".complete").is_file():
        return final
    with _build_lock():
        if (final / ".complete").is_file():
            return final
        shutil.rmtree(final, ignore_errors=True)
        _run_build_step([python, "-m", "venv", str(final)])
        _run_build_step(
            [
                str(final / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                "-r",
                str(pinned),
            ]
        )
        (final / ".complete").write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    return final


def zulip_js_modules(npm: str) -> Path:
    """`node_modules` of `tests/clients/js` (package.json + package-lock.json), cached."""
    package = (PINNED / "js" / "package.json").read_bytes()
    lock = (PINNED / "js" / "package-lock.json").read_bytes()

    def build(directory: Path) -> None:
        directory.mkdir(parents=True)
        shutil.copy(PINNED / "js" / "package.json", directory / "package.json")
        shutil.copy(PINNED / "js" / "package-lock.json", directory / "package-lock.json")
        _run_build_step([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"], directory)

    return _cached("zulip-js", _digest(package, lock), build) / "node_modules"


# -- evidence of a run ------------------------------------------------------------------------

# Where a run also leaves each client's evidence, one file per client (e.g. for an
# issue's closing note); unset: only the test's own tmp_path gets it.
EVIDENCE_DIR_VARIABLE = "EVENTQ_CLIENT_EVIDENCE_DIR"
# The evidence files this process has started: its first section in each replaces what
# an earlier run left, the later ones (other tests, the other backend) are appended.
_evidence_started: set[Path] = set()
_evidence_lock = threading.Lock()


def write_evidence(
    directory: Path, client: str, test: str, first: str, last: str, what: str
) -> Path:
    """`first` and `last` (a screen, or log lines: `what` says which) of `client` in
    `test`, written to `directory/CLIENT-evidence.txt`, and appended to
    `$EVENTQ_CLIENT_EVIDENCE_DIR/CLIENT.txt` when that variable is set."""
    section = (
        f"===== {client} in {test} =====\n"
        f"----- first {what} -----\n{first.rstrip()}\n"
        f"----- last {what} -----\n{last.rstrip()}\n"
    )
    own = directory / f"{client}-evidence.txt"
    own.write_text(section)
    shared_dir = os.environ.get(EVIDENCE_DIR_VARIABLE)
    if shared_dir:
        shared = Path(shared_dir) / f"{client}.txt"
        shared.parent.mkdir(parents=True, exist_ok=True)
        with _evidence_lock:
            mode = "a" if shared in _evidence_started else "w"
            _evidence_started.add(shared)
            with open(shared, mode) as sink:
                sink.write(section + "\n")
    return own


# A longer line (a JSON answer listing every user, say) is cut there in the evidence.
EVIDENCE_LINE_CHARS = 400


def first_and_last_lines(lines: Sequence[str], count: int = 6) -> tuple[str, str]:
    """The first and the last `count` of `lines`, as two texts (long lines cut); the
    last never repeat a first one, so a short run's last part may be empty."""

    def text(part: Sequence[str]) -> str:
        return "\n".join(
            line if len(line) <= EVIDENCE_LINE_CHARS else line[:EVIDENCE_LINE_CHARS] + " [...]"
            for line in part
        )

    snapshot = list(lines)
    last = snapshot[max(count, len(snapshot) - count) :]
    return text(snapshot[:count]), text(last) if last else "(no further lines)"


# -- the server's side of a client's run -----------------------------------------------------

_ACCESS = re.compile(
    r"eventq\.access: (?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) user (\d+)"
)


@dataclass(frozen=True)
class AccessLine:
    """One request the server answered, from its access log."""

    method: str
    path: str
    status: int
    user_id: int
    line: str


def access_lines(server: LiveServer, user_id: int, since: int = 0) -> list[AccessLine]:
    """Every request of `user_id` the server logged, from its log line `since` on."""
    lines = []
    for line in list(server.lines)[since:]:
        found = _ACCESS.search(line)
        if found is not None and int(found.group(4)) == user_id:
            lines.append(
                AccessLine(
                    found.group("method"),
                    found.group("path"),
                    int(found.group("status")),
                    user_id,
                    line,
                )
            )
    return lines


def refused_requests(server: LiveServer, user_id: int, since: int = 0) -> list[str]:
    """The requests of `user_id` answered with an error status (4xx, 5xx), from `since`."""
    return [line.line for line in access_lines(server, user_id, since) if line.status >= 400]


def server_tracebacks(server: LiveServer, since: int = 0) -> list[str]:
    """Log lines of the server, from `since` on, that show an unhandled error."""
    return [line for line in list(server.lines)[since:] if "Traceback" in line or " ERROR " in line]


def await_request(
    server: LiveServer, user_id: int, method: str, path: str, timeout: float, since: int = 0
) -> int:
    """Wait until the server logged `METHOD PATH STATUS user USER_ID` after its log line
    `since`; the status. Any status ends the wait, so a refused request fails at once with
    what eventq said.

    Successful long-polls and presence pings are logged at DEBUG only: never await them.
    """

    def status() -> int | None:
        for line in access_lines(server, user_id, since):
            if line.method == method and line.path == path:
                return line.status
        return None

    try:
        return int(server.wait_until(status, timeout, f"{method} {path} of user {user_id}"))
    except AssertionError as error:
        raise AssertionError(f"{error}:\n" + "\n".join(server.lines[-20:])) from None


def assert_request_ok(
    server: LiveServer, user_id: int, method: str, path: str, timeout: float, since: int = 0
) -> None:
    """`await_request`, asserting the request was answered 200."""
    status = await_request(server, user_id, method, path, timeout, since)
    assert status == 200, f"eventq answered {method} {path} with {status}:\n" + "\n".join(
        server.lines[-15:]
    )


# -- a child process whose output lines are awaited ------------------------------------------


class LineProcess:
    """A client process; its stdout and stderr lines are kept apart and can be awaited."""

    def __init__(
        self, command: Sequence[str], env: dict[str, str], cwd: Path | None = None
    ) -> None:
        self.command = list(command)
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        # Both streams' lines in the order they came, for the evidence of a run.
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._open_streams = 2
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=_clean_env(env),
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        for stream, sink in (
            (self.process.stdout, self.stdout),
            (self.process.stderr, self.stderr),
        ):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    def _read(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._changed:
                sink.append(line.rstrip("\n"))
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._open_streams -= 1
            self._changed.notify_all()

    def output(self) -> str:
        return "\n".join(["-- stdout --", *self.stdout[-60:], "-- stderr --", *self.stderr[-60:]])

    def wait_for(self, found: Callable[[], Any], timeout: float, what: str) -> Any:
        """The first truthy `found()`, re-evaluated on every new line; fails after `timeout`
        or when the process ended without it."""
        result: Any = None

        def ready() -> bool:
            nonlocal result
            result = found()
            return bool(result) or self._open_streams == 0

        with self._changed:
            self._changed.wait_for(ready, timeout)
        if not result:
            state = "exited" if self.process.poll() is not None else "still running"
            raise AssertionError(f"{what}: not seen within {timeout}s ({state})\n{self.output()}")
        return result

    def wait_for_line(self, pattern: str, timeout: float, stream: str = "any") -> str:
        regex = re.compile(pattern)

        def found() -> str | None:
            sources = {"stdout": self.stdout, "stderr": self.stderr}
            lines = [*self.stdout, *self.stderr] if stream == "any" else sources[stream]
            return next((line for line in lines if regex.search(line)), None)

        return str(self.wait_for(found, timeout, f"a line matching {pattern!r}"))

    def write_line(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


class JsDriver(LineProcess):
    """`node tests/clients/js/drive.js` on zulip-js: JSON commands in, JSON lines out."""

    def __init__(self, node: str, modules: Path, site: str, email: str, api_key: str) -> None:
        super().__init__(
            [node, str(PINNED / "js" / "drive.js")],
            env={
                "NODE_PATH": str(modules),
                "ZULIP_SITE": site,
                "ZULIP_EMAIL": email,
                "ZULIP_API_KEY": api_key,
            },
        )
        self._next_id = 0
        self.wait_for_line(r'^\{"ready":true\}$', 30, "stdout")

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.stdout) if line.startswith("{")]

    def request(self, op: str, timeout: float = 30.0, **fields: Any) -> Any:
        """Send one command and return its `result` (an `error` fails the test)."""
        self._next_id += 1
        command_id = self._next_id
        self.write_line(json.dumps({"id": command_id, "op": op, **fields}))
        answer = self.wait_for(
            lambda: next((m for m in self.messages() if m.get("id") == command_id), None),
            timeout,
            f"zulip-js's answer to {op} {fields}",
        )
        assert "error" not in answer, f"zulip-js threw: {answer['error']}\n{self.output()}"
        return answer["result"]

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A zulip-js method (`messages.send`, `reactions.add`, ...) and what it resolved to."""
        result = self.request("call", method=method, params=params or {})
        assert isinstance(result, dict), result
        return result

    def events(self) -> list[dict[str, Any]]:
        return [m["event"] for m in self.messages() if "event" in m]

    def client_errors(self) -> list[str]:
        """What zulip-js reported as trouble with the server (it retries after each)."""
        return [line for line in list(self.stderr) if "zulip-js: Error" in line]


# -- a terminal: tmux --------------------------------------------------------------------------


class PipedLog:
    """A log file a client opens by name, made a named pipe at `path` before it starts:
    a thread reads its lines as they are written, so a wait wakes when a line arrives.
    (A regular file gives no notice of growth; the pipe does.)"""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = path
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        # Blocks until the client opens its end; ends when the client closes it.
        with open(self.path, encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                with self._changed:
                    self.lines.append(line.rstrip("\n"))
                    self._changed.notify_all()

    def wait_for_line(self, pattern: str, timeout: float) -> str:
        """The first line containing `pattern` (plain text); fails after `timeout`."""

        def found() -> str | None:
            return next((line for line in self.lines if pattern in line), None)

        with self._changed:
            line = self._changed.wait_for(found, timeout)
        if line is None:
            raise AssertionError(f"no line {pattern!r} in {self.path.name} within {timeout}s")
        return line


class TmuxTerminal:
    """One program in a detached tmux session on a private socket, read with capture-pane.

    The pane stays after the program exits (`remain-on-exit`) so a crash's last screen
    and exit status can be read.
    """

    def __init__(
        self,
        tmux: str,
        command: Sequence[str],
        cwd: Path,
        env: dict[str, str],
        size: str = "160x48",
    ) -> None:
        self.tmux = tmux
        self.socket = f"eventq-test-{uuid.uuid4().hex[:10]}"
        # Everything the program writes to its terminal is copied here (`pipe-pane`), and
        # its death writes a byte too (the `pane-died` hook): a wait blocks reading this
        # pipe until the screen may have changed. Opened read-write so that it never
        # reads as closed between writers.
        fifo = cwd / "tmux-output.fifo"
        os.mkfifo(fifo)
        self._output = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        config = cwd / "tmux.conf"
        config.write_text(
            "set -g remain-on-exit on\nset -g history-limit 5000\n"
            f"set-hook -g pane-died \"run-shell 'printf x >> {fifo}'\"\n"
        )
        width, height = size.split("x")
        self._env = _clean_env(env)
        self._tmux(
            "-f",
            str(config),
            "new-session",
            "-d",
            "-s",
            "client",
            "-x",
            width,
            "-y",
            height,
            "-c",
            str(cwd),
            " ".join(_shell_quote(part) for part in command),
        )
        self._tmux("pipe-pane", "-o", "-t", "client", f"cat >> {_shell_quote(str(fifo))}")

    def _tmux(self, *args: str) -> str:
        completed = subprocess.run(
            [self.tmux, "-L", self.socket, *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env=self._env,
        )
        if completed.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {completed.stderr.strip()}")
        return completed.stdout

    def screen(self, history: bool = False) -> str:
        """The pane's text now (with `history`, everything that scrolled off too)."""
        extra = ["-S", "-"] if history else []
        return self._tmux("capture-pane", "-p", "-J", "-t", "client", *extra)

    def dead(self) -> bool:
        return self._tmux("display-message", "-p", "-t", "client", "#{pane_dead}").strip() == "1"

    def send_keys(self, *keys: str, literal: bool = False) -> None:
        """`tmux send-keys`: key names ("Enter", "C-d", "End") or, with `literal`, text."""
        self._tmux("send-keys", "-t", "client", *(["-l"] if literal else []), *keys)

    def wait_for_text(self, pattern: str, timeout: float) -> str:
        """The screen once `pattern` (a regex) shows on it; fails after `timeout` or when
        the program exited without showing it."""
        regex = re.compile(pattern)
        screen, dead = self._await_screen(lambda text: bool(regex.search(text)), timeout)
        if screen is None:
            state = "the program exited" if dead else f"not within {timeout}s"
            raise AssertionError(
                f"{pattern!r} never showed ({state}); the screen:\n{self.screen(history=True)}"
            )
        return screen

    def wait_for_absence(self, pattern: str, timeout: float) -> str:
        """The screen once `pattern` no longer shows on it (a box closed, say).

        Also what to await after Escape before the next key: a terminal program reads an
        Escape followed at once by another key as one Alt-key.
        """
        regex = re.compile(pattern)
        screen, _ = self._await_screen(lambda text: not regex.search(text), timeout)
        if screen is None:
            raise AssertionError(
                f"{pattern!r} still shows after {timeout}s; the screen:\n{self.screen()}"
            )
        return screen

    def _await_screen(
        self, wanted: Callable[[str], bool], timeout: float
    ) -> tuple[str | None, bool]:
        """(the screen once `wanted(screen)`, whether the program is dead); (None, dead)
        once the program died or `timeout` passed without it.

        The pipe is emptied before each look, so whatever the program writes after the
        look wakes the next wait. tmux parses the program's output into the screen
        before it copies it to the pipe, so a look after a wake sees that output.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._drain_output()
            # Dead first, then the screen: a program that printed the text and exited
            # in between still counts as having shown it. A dead pane's last screen may
            # have moved into its history.
            dead = self.dead()
            screen = self.screen(history=dead)
            if wanted(screen):
                return screen, dead
            remaining = deadline - time.monotonic()
            if dead or remaining <= 0:
                return None, dead
            select.select([self._output], [], [], remaining)

    def _drain_output(self) -> None:
        try:
            while os.read(self._output, 65536):
                pass
        except BlockingIOError:
            pass  # nothing more written yet

    def close(self) -> None:
        if self._output >= 0:
            os.close(self._output)
            self._output = -1
        subprocess.run(
            [self.tmux, "-L", self.socket, "kill-server"],
            capture_output=True,
            timeout=30,
            check=False,
            env=self._env,
        )


def _shell_quote(text: str) -> str:
    if re.fullmatch(r"[\w@%+=:,./-]+", text):
        return text
    return "'" + text.replace("'", "'\"'\"'") + "'"
