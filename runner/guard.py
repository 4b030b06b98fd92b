"""Run a command that must not outlive whoever started it.
Run: python -m runner.guard PARENT_PID [--remove FILE]... -- CMD...

The guard leads a process group holding CMD and everything CMD starts. It ends that whole group
when its parent dies (the kernel's parent-death signal, even after a kill -9), when it is asked to
stop (TERM, INT, HUP: forwarded to the group), and when CMD itself ends, so nothing CMD left behind
(a trainer whose launcher was killed, an Ansible worker whose parent is gone) runs on. Members get
TERM first, KILL after a grace period. Then it removes each --remove FILE (a secret handed to CMD, which
must not outlive it either) and exits with CMD's exit status (128+N for a signal N).
PARENT_PID 0 watches no parent (a systemd unit's main process: the unit stops it). Standard library
only: the controller runs it around ansible-playbook, the host around the trainer.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
GRACE_S = float(os.environ.get("RUNNER_GUARD_GRACE_S", "30"))  # TERM, then KILL after this long
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` when the parent (the thread that started us) ends; Linux only."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the group and the restore's check still hold
        pass


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid`, this one excepted (zombies are already gone)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def signal_group(pgid: int, sig: int) -> list[int]:
    """Send `sig` to every other member of the group; returns those it reached."""
    reached = []
    for pid in group_members(pgid):
        try:
            os.kill(pid, sig)
            reached.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return reached


def end_group(pgid: int, first: int = signal.SIGTERM, grace_s: float = GRACE_S) -> None:
    """`first` to every member, KILL to those still there after `grace_s`; returns once all are gone."""
    if not signal_group(pgid, first):
        return
    deadline = time.monotonic() + grace_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    while signal_group(pgid, signal.SIGKILL):
        time.sleep(0.1)


def run(parent: int, cmd: list[str], remove: list[str]) -> int:
    try:
        return _run(parent, cmd)
    finally:
        for path in remove:
            Path(path).unlink(missing_ok=True)


def _run(parent: int, cmd: list[str]) -> int:
    if parent:
        die_with_parent()
        if os.getppid() != parent:  # the parent was gone before the kernel could watch it for us
            return 128 + signal.SIGTERM
    if os.getpgid(0) != os.getpid():
        os.setpgid(0, 0)
    pgid = os.getpid()
    asked: list[int] = []
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: asked.append(signum))
    child = subprocess.Popen(cmd)
    forwarded = 0
    while child.poll() is None:
        if len(asked) > forwarded:  # a stop, or the parent died: the group hears it, the command decides
            signal_group(pgid, signal.SIGTERM if asked[forwarded] == signal.SIGHUP else asked[forwarded])
            forwarded = len(asked)
            if parent and os.getppid() != parent:  # no one is left to wait for a graceful end: the grace period
                end_group(pgid)
        time.sleep(0.2)
    end_group(pgid)  # whatever the command left behind ends with it
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


def main(argv: list[str]) -> int:
    split = argv.index("--") if "--" in argv else len(argv)
    options, cmd = argv[:split], argv[split + 1:]
    flags_ok = len(options) % 2 == 1 and all(flag == "--remove" for flag in options[1::2])
    if not cmd or not flags_ok or not options[0].isdigit():
        print(__doc__, file=sys.stderr)
        return 2
    return run(int(options[0]), cmd, options[2::2])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
