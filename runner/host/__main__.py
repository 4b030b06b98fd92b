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
import os
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from runner.host import answers, clean, inference, lock, nvml, power, preflight, serve
from runner.host import session_files as files
from runner.host.restore import restore
from runner.host.status import Status
from runner.host.supervisor import run_session
from runner.train.exits import EXIT_FAILED, EXIT_USAGE


def probe(training_root: Path) -> dict:
    facts: dict = {"gpus": [], "nvml": "ok", "systemd": inference.has_systemd(),
                   "training_root": str(training_root),  # absolute, for Ansible modules that do not expand ~
                   "session_unit": Path(SESSION_UNIT).exists(),
                   "lock_holder": lock.current_holder(training_root / files.LOCK)}
    try:
        with nvml.nvml():
            facts["gpus"] = [g.as_dict() for g in nvml.list_gpus()]
    except nvml.NvmlUnavailable as why:
        facts["nvml"] = str(why)
    return facts


def restore_after(session_dir: Path) -> int:
    """The stop hook's and the playbook's restore; also closes a session whose supervisor died."""
    status = Status(session_dir)
    pid = status.data.get("pid")
    if pid and _alive(pid):  # the supervisor restores, and it alone writes status.json while it lives
        return answers.answer(answers.RESTORE, {"skipped": "the supervisor is alive and restores"})
    if status.data.get("outcome") == "running":
        status.update(outcome="interrupted", error="the supervisor ended before the session did")
    ok = restore(session_dir, status)
    answers.answer(answers.RESTORE, status.data.get("restore", {}))
    return 0 if ok else EXIT_FAILED


def session_status(session_dir: Path) -> dict:
    status = Status(session_dir).data
    pid = status.get("pid")
    if status:
        status["alive"] = bool(pid and _alive(pid))
    else:  # not written yet: starting, unless the supervisor never got going
        job = session_dir / files.JOB
        status["alive"] = job.exists() and time.time() - job.stat().st_mtime < STARTUP_GRACE_S
    return status


STARTUP_GRACE_S = 120
SESSION_UNIT = "/etc/systemd/system/gpu-runner-session@.service"  # installed by setup

# What comes back to the controller; 'all' adds checkpoints and the rest of output/
RESULT_FILES = (files.STATUS, files.METRICS, files.TELEMETRY, files.TRAIN_LOG, files.SUPERVISOR_LOG, files.JOB,
                "output/samples.md", "output/samples.jsonl")  # the trainer writes only output/; they land beside


def pack(session_dir: Path, what: str) -> Path:
    """A tarball of its own for each caller: a stopping `runner stop` and the still-attached `runner train` may
    fetch at the same moment, and one shared name had the second pack rewrite the file the first was fetching."""
    fd, name = tempfile.mkstemp(prefix="results-", suffix=".tar.gz", dir=session_dir)
    path = Path(name)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name in RESULT_FILES:
            if (session_dir / name).exists():
                tar.add(session_dir / name, arcname=Path(name).name)
        if what == "adapter" and (session_dir / "output" / "adapter").exists():
            tar.add(session_dir / "output" / "adapter", arcname="adapter")
        elif what == "all" and (session_dir / "output").exists():
            tar.add(session_dir / "output", arcname="output")
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid != os.getpid()


def apply_power_profile(name: str) -> int:
    """The boot unit's and provisioning's entry: enforce a profile from /etc/gpu-runner/power.json."""
    config = power.PowerConfig.load()
    profile = {"standing": config.standing_w, "session": config.session_w}[name]
    try:
        with nvml.nvml():
            power.check_profile(profile, nvml.list_gpus())
            enforced = power.apply_profile(profile, readonly=config.readonly)
    except nvml.NvmlUnavailable as why:
        return answers.answer(answers.POWER, {"skipped": str(why)})
    except power.PowerError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    return answers.answer(answers.POWER, {"enforced_w": enforced})


def check_job(training_root: Path) -> int:
    """The playbook's preflight before staging: the job comes on stdin; exit 3 with the reason if refused."""
    job = json.loads(sys.stdin.read())
    try:
        found = preflight.check(job, training_root, power.PowerConfig.load())
    except preflight.Refusal as refusal:
        return answers.refuse(refusal)
    return answers.answer(answers.CHECK, found.answer())


def reserve_host(training_root: Path, session_id: str) -> int:
    """The playbook's claim before staging: atomic, so of two sessions started at once one is refused."""
    try:
        lock.reserve(training_root / files.LOCK, session_id)
    except lock.HostBusy as busy:
        return answers.refuse(busy)
    return answers.answer(answers.RESERVE, {"reserved": session_id})


def request_stop(session_dir: Path, reason: str | None = None) -> int:
    """`runner stop` (or Ctrl-C, with REASON: what the supervisor records as the cause): the trainer checkpoints
    at its next step, then the supervisor restores."""
    lock.release(files.lock_of(session_dir), session_dir.name)  # a session still being staged
    if reason:
        (session_dir / files.STOP).write_text(reason + "\n")
    else:
        (session_dir / files.STOP).touch()
    return answers.answer(answers.STOP, session_status(session_dir))


def print_log(session_dir: Path, offset: int) -> int:
    """train.log from byte `offset`, as JSON {offset, text, outcome} so followers can continue."""
    log = session_dir / files.TRAIN_LOG
    data = b""
    if log.exists():
        with log.open("rb") as f:
            f.seek(offset)
            data = f.read(1 << 20)
    status = session_status(session_dir)
    return answers.answer(answers.LOG, {"offset": offset + len(data), "text": data.decode(errors="replace"),
                                        "outcome": status.get("outcome", "running"), "alive": status.get("alive")})


COMMANDS = {
    "probe": lambda d, _: answers.answer(answers.PROBE, probe(d)),
    "session": lambda d, _: run_session(d),
    "restore": lambda d, _: restore_after(d),
    "status": lambda d, _: answers.answer(answers.STATUS, session_status(d)),
    "ready": lambda d, _: answers.answer(answers.READY, session_status(d)),
    "stop": lambda d, reason: request_stop(d, reason),
    "check": lambda d, _: check_job(d),
    "reserve": lambda d, extra: reserve_host(d, extra),
    "release": lambda d, extra: answers.answer(answers.RELEASE, {"released": lock.release(d / files.LOCK, extra)}),
    "log": lambda d, extra: print_log(d, int(extra or 0)),
    "pack": lambda d, extra: answers.answer(answers.PACK, {"path": str(pack(d, extra or "adapter"))}),
    "serve": lambda d, extra: serve.main(d, extra or "list"),
    "clean": lambda d, extra: clean.main(d, extra),
}


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "power" and argv[1] in ("standing", "session"):
        return apply_power_profile(argv[1])
    if len(argv) in (2, 3) and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](Path(argv[1]).expanduser(), argv[2] if len(argv) == 3 else None)
    print(__doc__, file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
