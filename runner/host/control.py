"""A running or ended session as the controller sees and steers it: its status (and whether its supervisor
lives), a stop request, its training log from an offset, and the restore after it."""

from __future__ import annotations

import os
import time
from pathlib import Path

from runner.host import lock
from runner.host import session_files as files
from runner.host.restore import process_alive, restore
from runner.host.status import Status

STARTUP_GRACE_S = 120  # a job.json this young without a status.json: the supervisor is still starting


def supervisor_alive(pid: int) -> bool:
    return pid != os.getpid() and process_alive(pid)


def session_status(session_dir: Path) -> dict:
    status = Status(session_dir).data
    pid = status.get("pid")
    if status:
        status["alive"] = bool(pid and supervisor_alive(pid))
    else:  # not written yet: starting, unless the supervisor never got going
        job = session_dir / files.JOB
        status["alive"] = job.exists() and time.time() - job.stat().st_mtime < STARTUP_GRACE_S
    return status


def restore_after(session_dir: Path) -> tuple[bool, dict]:
    """The stop hook's and the playbook's restore; also closes a session whose supervisor died. Returns
    (whether the host is restored, what to answer)."""
    status = Status(session_dir)
    pid = status.data.get("pid")
    if pid and supervisor_alive(pid):  # the supervisor restores, and it alone writes status.json while it lives
        return True, {"skipped": "the supervisor is alive and restores"}
    if status.data.get("outcome") == "running":
        status.update(outcome="interrupted", error="the supervisor ended before the session did")
    ok = restore(session_dir, status)
    return ok, status.data.get("restore", {})


def request_stop(session_dir: Path, reason: str | None = None) -> dict:
    """`runner stop` (or Ctrl-C, with REASON: what the supervisor records as the cause): the trainer checkpoints
    at its next step, then the supervisor restores. Returns the session's status."""
    lock.release(files.lock_of(session_dir), session_dir.name)  # a session still being staged
    if reason:
        (session_dir / files.STOP).write_text(reason + "\n")
    else:
        (session_dir / files.STOP).touch()
    return session_status(session_dir)


def read_log(session_dir: Path, offset: int) -> dict:
    """train.log from byte `offset`: {offset, text, outcome, alive}, so followers can continue."""
    log = session_dir / files.TRAIN_LOG
    data = b""
    if log.exists():
        with log.open("rb") as f:
            f.seek(offset)
            data = f.read(1 << 20)
    status = session_status(session_dir)
    return {"offset": offset + len(data), "text": data.decode(errors="replace"),
            "outcome": status.get("outcome", "running"), "alive": status.get("alive")}
