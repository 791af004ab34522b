"""Sampling the server with py-spy (optional: `--profile` with `--py-spy PATH`).

py-spy is not a dependency of the project; install it in a throwaway environment
(`python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install py-spy`) and pass its path.
`record` samples a process for a while into a collapsed-stack file; `summarize` says
where the samples went: per function (self and inclusive) and per package.
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

# A frame of py-spy's raw (collapsed) format: "function (path/to/file.py:line)".
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]*)(?::\d+)?\)$")
_PROJECT_PACKAGES = ("server", "queues", "models", "actions", "clients", "bench")


def start_recording(pid: int, seconds: float, out: Path, py_spy: str) -> subprocess.Popen[bytes]:
    """Start py-spy sampling `pid` for `seconds` (CPU only, idle threads excluded)."""
    return subprocess.Popen(
        [
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            "200",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _frame_name(frame: str) -> tuple[str, str]:
    """(`module.function`, package) of one raw frame. py-spy names files relative to
    their `sys.path` entry: `tornado/iostream.py`, `server/engine/service.py`, `copy.py`."""
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip(), "?"
    path = match.group("file")
    if path.startswith("<"):
        return f"{path}.{match.group('func')}", "python internals"
    parts = Path(path).with_suffix("").parts
    if "site-packages" in parts:  # an absolute path, should py-spy give one
        parts = parts[parts.index("site-packages") + 1 :]
    parts = parts or ("?",)
    package = parts[0]
    if package in _PROJECT_PACKAGES:
        package = f"eventq {package}/"
    return f"{'.'.join(parts)}.{match.group('func')}", package


def summarize(path: Path, top: int = 15) -> str:
    """A text summary of a py-spy raw file: shares of the samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    loop_samples = 0
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        total += count
        if any("run_forever" in f for f in frames):
            loop_samples += count
        names = [_frame_name(f) for f in frames]
        leaf, package = names[-1]
        own[leaf] += count
        packages[package] += count
        for name in {n for n, _ in names}:
            inclusive[name] += count
    if not total:
        return "no samples"

    def table(counter: Counter[str], skip_above: float = 1.0) -> list[str]:
        kept = [(name, n) for name, n in counter.most_common() if n / total <= skip_above]
        return [f"  {100 * n / total:5.1f}%  {name}" for name, n in kept[:top]]

    lines = [
        f"{total} samples on CPU; {100 * loop_samples / total:.1f}% in the event loop's "
        f"thread, {100 * (total - loop_samples) / total:.1f}% in other threads (database)"
    ]
    lines.append("self time by package (the leaf frame's package):")
    lines += table(packages)
    lines.append("self time by function:")
    lines += table(own)
    # The entry frames (main, run_forever, ...) are on nearly every stack: left out.
    lines.append("inclusive time by function (on the stack), entry frames left out:")
    lines += table(inclusive, skip_above=0.8 * loop_samples / total)
    return "\n".join(lines)
