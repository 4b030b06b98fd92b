"""Where things are on the controller: the repository's Ansible content, runs, the ledger."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def runs_dir() -> Path:
    """Fetched session results: ./runs/<session-id>/<host>/ (RUNNER_RUNS_DIR overrides)."""
    return Path(os.environ.get("RUNNER_RUNS_DIR", "runs")).resolve()


def data_dir() -> Path:
    """The user's data dir: the session ledger and ansible-runner's private data."""
    base = os.environ.get("RUNNER_DATA_DIR") or os.path.join(
        os.environ.get("XDG_DATA_HOME", os.path.expanduser("~/.local/share")), "gpu-runner")
    return Path(base)
