"""status.json: every phase of a session with timestamps, live progress and the outcome.

Written atomically (temp file, then rename) so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

OUTCOMES = ("running", "succeeded", "failed", "interrupted", "refused")


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


class Status:
    """The session's status file; every change is written through at once."""

    def __init__(self, session_dir: Path):
        self.path = session_dir / "status.json"
        self.data = read_json(self.path)

    def save(self) -> None:
        write_json(self.path, self.data)

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.save()

    def begin(self, phase: str, detail: str = "") -> None:
        self.data.setdefault("phases", []).append(
            {"name": phase, "started": time.time(), "ended": None, "outcome": "running", "detail": detail})
        self.update(phase=phase)

    def end(self, outcome: str, detail: str = "") -> None:
        """Close the current phase: ok, skipped, failed or refused, with what happened."""
        current = self.data["phases"][-1]
        current.update(ended=time.time(), outcome=outcome)
        if detail:
            current["detail"] = detail
        self.save()

    def warn(self, message: str) -> None:
        warnings = self.data.setdefault("warnings", [])
        warnings.append({"time": time.time(), "message": message})
        self.save()
