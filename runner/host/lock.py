"""One session per host: a reservation taken before staging, then an flock held for the session's life.

Both live in <root>/session.lock. `reserve` claims the host atomically under the flock before anything
is staged, so of two sessions started at once one is refused with no trace on the host; the
supervisor's HostLock takes the reservation over and holds the flock until the session ends. A
reservation whose staging never finished (the controller died) lapses after RESERVATION_TTL_S.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

RESERVATION_TTL_S = 1800  # staging (an upload of a model) may take this long before the supervisor starts
CONTENDED_S = 2.0  # another reserve holds the flock for milliseconds; a session holds it for hours


class HostBusy(Exception):
    """Another session holds the host; the message names it and when it started."""


def describe(holder: dict, session_id: str | None = None) -> str:
    """Who holds the host, in words; `session_id` is the asker (a resume of a session that still runs)."""
    held = holder.get("session_id", "?")
    if held == session_id:
        return f"session {held} is still running on this host; 'runner attach {held}' follows it"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    what = "is being staged" if holder.get("reserved") else f"(pid {holder.get('pid', '?')}) holds this host"
    return f"session {held} {what} since {started}"


def _fresh_reservation(holder: dict, session_id: str | None) -> bool:
    """Another session's reservation that has not lapsed."""
    return bool(holder.get("reserved") and holder.get("session_id") != session_id
                and time.time() - holder.get("started", 0) < RESERVATION_TTL_S)


def _write(fd: int, holder: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _flock_soon(fd: int, wait_s: float) -> bool:
    """The flock within `wait_s` (another reserve lets go at once), else False: a session holds it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def reserve(path: Path, session_id: str) -> None:
    """Claim the host for `session_id` before staging; HostBusy when a session runs or another is staging."""
    fd = _open(path)
    try:
        if not _flock_soon(fd, CONTENDED_S):
            raise HostBusy(describe(_read_holder(fd), session_id))
        holder = _read_holder(fd)
        if _fresh_reservation(holder, session_id):
            raise HostBusy(describe(holder, session_id))
        _write(fd, {"session_id": session_id, "pid": None, "started": time.time(), "reserved": True})
    finally:
        os.close(fd)  # closing drops the flock


def release(path: Path, session_id: str) -> bool:
    """Drop `session_id`'s reservation (its staging failed, or it was stopped before it started)."""
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDWR)
    try:
        if not _flock_soon(fd, CONTENDED_S):
            return False  # a supervisor holds the host: the reservation is already its lock
        holder = _read_holder(fd)
        if holder.get("reserved") and holder.get("session_id") == session_id:
            os.ftruncate(fd, 0)
            return True
        return False
    finally:
        os.close(fd)


class HostLock:
    def __init__(self, path: Path, session_id: str):
        self.path = path
        self.session_id = session_id
        self._fd: int | None = None

    def __enter__(self) -> HostLock:
        fd = _open(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise HostBusy(describe(holder, self.session_id)) from None
        holder = _read_holder(fd)
        if _fresh_reservation(holder, self.session_id):  # another session is being staged
            os.close(fd)
            raise HostBusy(describe(holder, self.session_id))
        _write(fd, {"session_id": self.session_id, "pid": os.getpid(), "started": time.time()})
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def _read_holder(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except json.JSONDecodeError:
        return {}


def current_holder(path: Path) -> dict | None:
    """Who holds the host now (a running session or a fresh reservation), or None when it is free."""
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        holder = _read_holder(fd)
        return holder if _fresh_reservation(holder, None) else None
    except BlockingIOError:
        return _read_holder(fd)
    finally:
        os.close(fd)
