"""status.json: every phase of a session with timestamps, live progress and the outcome.

Written atomically (temp file, then rename) so a reader never sees half a file. The supervisor's
main thread and the telemetry thread (warnings, stop requests) both write it: every change holds one
lock, and each write has a temp file of its own.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path

from runner.host import session_files as files

OUTCOMES = ("running", "succeeded", "failed", "interrupted", "refused")


def write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(json.dumps(data, indent=1, sort_keys=True))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class Status:
    """The session's status file; every change is written through at once."""

    def __init__(self, session_dir: Path):
        self.path = session_dir / files.STATUS
        self.data = read_json(self.path)
        self._lock = threading.RLock()

    def save(self) -> None:
        with self._lock:
            write_json(self.path, self.data)

    def update(self, **fields) -> None:
        with self._lock:
            self.data.update(fields)
            self.save()

    def drop(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self.data.pop(key, None)
            self.save()

    def append(self, key: str, item) -> None:
        """Add one item to the list under `key` (losses, warnings, phases)."""
        with self._lock:
            self.data.setdefault(key, []).append(item)
            self.save()

    def begin(self, phase: str, detail: str = "") -> None:
        with self._lock:
            self.data.setdefault("phases", []).append(
                {"name": phase, "started": time.time(), "ended": None, "outcome": "running", "detail": detail})
            self.update(phase=phase)

    def end(self, outcome: str, detail: str = "") -> None:
        """Close the current phase: ok, skipped, failed or refused, with what happened."""
        with self._lock:
            current = self.data["phases"][-1]
            current.update(ended=time.time(), outcome=outcome)
            if detail:
                current["detail"] = detail
            self.save()

    def warn(self, message: str) -> None:
        self.append("warnings", {"time": time.time(), "message": message})
