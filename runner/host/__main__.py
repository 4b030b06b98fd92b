"""Host-side commands, run from the training venv by the playbooks.

  python -m runner.host probe               GPU facts, lock holder and systemd presence as JSON
  python -m runner.host session DIR         run a whole session (the supervisor)
  python -m runner.host restore DIR         restore the host after DIR's session (idempotent)
  python -m runner.host status DIR          the session's status.json, plus whether its supervisor lives
  python -m runner.host ready DIR           the same, while a multi-node job waits for every host to be ready
  python -m runner.host pack DIR WHAT       tar the results (WHAT: adapter | all | none); answers its path
  python -m runner.host check ROOT < JOB    preflight a job (JSON on stdin) before staging; exit 3 if refused
  python -m runner.host reserve ROOT ID     claim the host for session ID before staging; exit 3 if it is busy
  python -m runner.host release ROOT ID     drop session ID's claim (its staging failed)
  python -m runner.host stop DIR [REASON]            ask DIR's session to stop gracefully (checkpoint, then restore)
  python -m runner.host log DIR [OFFSET]    train.log from OFFSET, as JSON, for `runner logs`
  python -m runner.host power PROFILE       apply the standing or session profile of the power config, read back
  python -m runner.host serve ROOT ACTION   serve a session's fine-tune (apply, request JSON on stdin), list, revert
  python -m runner.host clean ROOT ACTION   shared model copies, retention, runner clean (see runner/host/clean.py)

Each answers one JSON line tagged with what it is, or refuses with one line (runner/host/answers.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from runner.host import answers, clean, lock, nvml, power, preflight, serve
from runner.host import session_files as files
from runner.host.control import read_log, request_stop, restore_after, session_status
from runner.host.facts import probe
from runner.host.results import pack
from runner.host.supervisor import run_session
from runner.train.exits import EXIT_FAILED, EXIT_USAGE


def restore_command(session_dir: Path) -> int:
    ok, found = restore_after(session_dir)
    answers.answer(answers.RESTORE, found)
    return 0 if ok else EXIT_FAILED


def power_command(name: str) -> int:
    """The boot unit's and provisioning's entry: enforce a profile from /etc/gpu-runner/power.json."""
    try:
        enforced = power.apply_named_profile(name)
    except nvml.NvmlUnavailable as why:
        return answers.answer(answers.POWER, {"skipped": str(why)})
    except power.PowerError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    return answers.answer(answers.POWER, {"enforced_w": enforced})


def check_command(training_root: Path) -> int:
    """The playbook's preflight before staging: the job comes on stdin; exit 3 with the reason if refused."""
    job = json.loads(sys.stdin.read())
    try:
        found = preflight.check(job, training_root, power.PowerConfig.load())
    except preflight.Refusal as refusal:
        return answers.refuse(refusal)
    return answers.answer(answers.CHECK, found.answer())


def reserve_command(training_root: Path, session_id: str) -> int:
    """The playbook's claim before staging: atomic, so of two sessions started at once one is refused."""
    try:
        lock.reserve(training_root / files.LOCK, session_id)
    except lock.HostBusy as busy:
        return answers.refuse(busy)
    return answers.answer(answers.RESERVE, {"reserved": session_id})


COMMANDS = {
    "probe": lambda d, _: answers.answer(answers.PROBE, probe(d)),
    "session": lambda d, _: run_session(d),
    "restore": lambda d, _: restore_command(d),
    "status": lambda d, _: answers.answer(answers.STATUS, session_status(d)),
    "ready": lambda d, _: answers.answer(answers.READY, session_status(d)),
    "stop": lambda d, reason: answers.answer(answers.STOP, request_stop(d, reason)),
    "check": lambda d, _: check_command(d),
    "reserve": lambda d, extra: reserve_command(d, extra),
    "release": lambda d, extra: answers.answer(answers.RELEASE, {"released": lock.release(d / files.LOCK, extra)}),
    "log": lambda d, extra: answers.answer(answers.LOG, read_log(d, int(extra or 0))),
    "pack": lambda d, extra: answers.answer(answers.PACK, {"path": str(pack(d, extra or "adapter"))}),
    "serve": lambda d, extra: serve.main(d, extra or "list"),
    "clean": lambda d, extra: clean.main(d, extra),
}


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "power" and argv[1] in ("standing", "session"):
        return power_command(argv[1])
    if len(argv) in (2, 3) and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](Path(argv[1]).expanduser(), argv[2] if len(argv) == 3 else None)
    print(__doc__, file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
