"""One session per host: an flock held for the session's life, naming its holder."""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path


class HostBusy(Exception):
    """Another session holds the host; the message names it and when it started."""


class HostLock:
    def __init__(self, path: Path, session_id: str):
        self.path = path
        self.session_id = session_id
        self._fd: int | None = None

    def __enter__(self) -> HostLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
            raise HostBusy(f"session {holder.get('session_id', '?')} (pid {holder.get('pid', '?')}) "
                           f"holds this host since {started}") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"session_id": self.session_id, "pid": os.getpid(),
                                 "started": time.time()}).encode())
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
    """Who holds the lock now, or None when it is free."""
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return _read_holder(fd)
    finally:
        os.close(fd)
