"""The local session ledger: SQLite in the user's data dir, one row per session."""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import closing
from dataclasses import asdict, dataclass, field

from runner.errors import UsageError
from runner.paths import data_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    hosts TEXT NOT NULL,
    job_file TEXT NOT NULL,
    inventory TEXT,
    started REAL NOT NULL,
    ended REAL,
    outcome TEXT NOT NULL,
    run_dir TEXT NOT NULL,
    host_outcomes TEXT NOT NULL DEFAULT '{}'
)"""


@dataclass
class Entry:
    id: str
    hosts: list[str]
    job_file: str
    inventory: str | None
    started: float
    run_dir: str
    outcome: str = "running"
    ended: float | None = None
    host_outcomes: dict[str, str] = field(default_factory=dict)

    def public(self) -> dict:
        """The fields `runner status --json` promises: id, hosts, outcome, started, ended."""
        data = asdict(self)
        data["started"] = _iso(self.started)
        data["ended"] = _iso(self.ended)
        return data


def _iso(ts: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(ts)) if ts else None


def _connect() -> sqlite3.Connection:
    path = data_dir() / "sessions.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=30)
    db.execute(SCHEMA)
    return db


def record(entry: Entry) -> None:
    with closing(_connect()) as db, db:
        db.execute("INSERT OR REPLACE INTO sessions VALUES (?,?,?,?,?,?,?,?,?)", (
            entry.id, json.dumps(entry.hosts), entry.job_file, entry.inventory, entry.started, entry.ended,
            entry.outcome, entry.run_dir, json.dumps(entry.host_outcomes)))


def _entry(row: tuple) -> Entry:
    sid, hosts, job_file, inventory, started, ended, outcome, run_dir, host_outcomes = row
    return Entry(sid, json.loads(hosts), job_file, inventory, started, run_dir, outcome, ended,
                 json.loads(host_outcomes))


def sessions() -> list[Entry]:
    with closing(_connect()) as db:
        return [_entry(r) for r in db.execute("SELECT * FROM sessions ORDER BY started")]


def get(session_id: str) -> Entry:
    with closing(_connect()) as db:
        row = db.execute("SELECT * FROM sessions WHERE id = ?", (session_id,)).fetchone()
    if row is None:
        raise UsageError(f"no session '{session_id}' in the ledger; 'runner status' lists them.")
    return _entry(row)


def overall(host_outcomes: dict[str, str]) -> str:
    """One outcome for a session from its hosts' outcomes (the worst wins)."""
    values = set(host_outcomes.values())
    for outcome in ("running", "failed", "interrupted", "refused"):
        if outcome in values:
            return outcome
    return "succeeded" if values == {"succeeded"} else "failed"
