"""Helpers shared by tests: run the `runner` command as a user would."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_runner(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    runner = Path(sys.executable).parent / "runner"
    return subprocess.run([str(runner), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=os.environ.copy())
