"""Running the installed `eventq` console script as a separate process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVENTQ = str(Path(sys.executable).parent / "eventq")


@dataclass
class CliResult:
    """Exit status and output of one `eventq` run."""

    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


def run_eventq(database_url: str, *args: str, timeout: float = 60) -> CliResult:
    """Run `eventq --database-url URL ARGS...` and capture what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTQ_")}
    completed = subprocess.run(
        [EVENTQ, "--database-url", database_url, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    return CliResult(completed.returncode, completed.stdout, completed.stderr)
