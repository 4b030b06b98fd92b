"""Serve a session's fine-tune with the host's vLLM unit: the LoRA adapter or a merged model, health-gated.

The adopted unit is never edited: a drop-in (<unit>.service.d/gpu-runner-serve.conf) resets ExecStart and
writes the whole vLLM command, built from the unit's own command (every file but our drop-in). A new
configuration keeps the previous drop-in (or its absence) until it passes the health gate; otherwise the
previous one is put back, vLLM restarted and health-gated again, and the failure is reported.
What is served is recorded in /etc/gpu-runner/serving.json.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runner.host import answers, inference, served_files
from runner.host import session_files as files
from runner.host.adapter_checks import check_unmerged, job_method, read_adapter
from runner.host.lock import current_holder
from runner.host.serve_errors import ServeFailed, ServeRefused
from runner.host.served_files import copy_adapter, merge
from runner.host.vllm_command import (
    DROPIN_NAME,
    option_values,
    render_dropin,
    served_model,
    served_names,
    unit_command,
    with_adapter,
    with_model,
)
from runner.train.exits import EXIT_FAILED

RECORD = Path("/etc/gpu-runner/serving.json")
INFERENCE_RECORD = Path("/etc/gpu-runner/inference.json")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
COMPLETION_TRIES = 3  # /health is up and the name listed, yet completions fail: a real failure, not a start
# vLLM registers its models before it listens, so once it answers these problems will not go away
FINAL_PROBLEMS = re.compile(r"completion answered|/v1/models lists")


# -- the unit ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Unit:
    name: str  # vllm.service
    health_url: str
    base_command: list[str]

    @property
    def dropin(self) -> Path:
        return Path(f"/etc/systemd/system/{self.name}.d/{DROPIN_NAME}")

    def current_command(self) -> list[str]:
        """What runs now: the base command, or our drop-in's."""
        return unit_command(self.dropin.read_text(), skip="") if self.dropin.exists() else self.base_command


def read_unit() -> Unit:
    if not INFERENCE_RECORD.exists():
        raise ServeRefused(f"{INFERENCE_RECORD} is missing: run setup with an inference server first")
    record = json.loads(INFERENCE_RECORD.read_text())
    if not record.get("unit"):
        raise ServeRefused("setup recorded no inference server (inference_server_mode none)")
    if not inference.has_systemd():
        raise ServeRefused("this host has no systemd to run the inference unit")
    cat = inference.systemctl("cat", record["unit"])
    if cat.returncode != 0:
        raise ServeRefused(f"systemctl cat {record['unit']} failed: {cat.stderr.strip()}")
    return Unit(record["unit"], record["health_url"], unit_command(cat.stdout))


def unit_state(unit: str) -> dict[str, str]:
    out = inference.systemctl("show", "-p", "ActiveState", "-p", "SubState", "-p", "NRestarts", unit).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal_error(unit: str, since: float) -> str:
    """The last error line vLLM logged since SINCE, for the one-line report."""
    out = subprocess.run(["journalctl", "-u", unit, "--since", f"@{int(since)}", "-o", "cat", "--no-pager"],
                         capture_output=True, text=True, timeout=30).stdout
    errors = [line.strip() for line in out.splitlines() if re.search(r"Error|error:|Exception", line)]
    return errors[-1][:300] if errors else "no error in its log"


def restart(unit: str) -> float:
    for args in (("daemon-reload",), ("restart", unit)):
        result = inference.systemctl(*args)
        if result.returncode != 0:
            raise inference.InferenceError(f"systemctl {' '.join(args)} failed: {result.stderr.strip()}")
    return time.time()


def gate(unit: Unit, names: list[str], timeout_s: float, since: float, poll_s: float = 2) -> float:
    """Wait until every name answers a completion; fail early when vLLM exits or completions keep failing."""
    started = time.monotonic()
    restarts = unit_state(unit.name).get("NRestarts", "0")
    failed_completions = 0
    while True:
        state = unit_state(unit.name)
        exited = state.get("ActiveState") in ("failed", "inactive") or state.get("SubState") == "auto-restart"
        if exited or state.get("NRestarts", "0") != restarts:
            raise inference.InferenceError(f"{unit.name} exited: {journal_error(unit.name, since)}")
        problems = [p for p in (inference.check_health(unit.health_url, n) for n in names) if p]
        if not problems:
            return time.monotonic() - started
        if FINAL_PROBLEMS.search(problems[0]):  # the API is up: its model list and answers are final
            failed_completions += 1
            if failed_completions >= COMPLETION_TRIES:
                raise inference.InferenceError(problems[0])
        if time.monotonic() - started >= timeout_s:
            raise inference.InferenceError(f"not healthy after {timeout_s:g} s: {problems[0]}")
        time.sleep(poll_s)


def _interrupt(signum, frame):  # SSH gone or a stop: roll back like a failed gate
    raise KeyboardInterrupt


ROLLBACK_GATE_S = 600


def switch(unit: Unit, dropin: str | None, names: list[str], previous_names: list[str], timeout_s: float) -> float:
    """Install DROPIN (None: no drop-in), restart, gate NAMES; on failure put the previous one back."""
    previous = unit.dropin.read_text() if unit.dropin.exists() else None
    old_handlers = {s: signal.signal(s, _interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        write_dropin(unit.dropin, dropin)
        try:
            return gate(unit, names, timeout_s, restart(unit.name))
        except (inference.InferenceError, KeyboardInterrupt) as err:
            why = "interrupted" if isinstance(err, KeyboardInterrupt) else str(err)
            write_dropin(unit.dropin, previous)
            try:
                # the previous configuration was healthy: give it the full time, whatever the new one had
                took = gate(unit, previous_names, max(timeout_s, ROLLBACK_GATE_S), restart(unit.name))
            except inference.InferenceError as again:
                raise ServeFailed(f"{why}; the previous configuration was put back but is not healthy "
                                  f"either: {again}") from None
            raise ServeFailed(f"{why}; rolled back to the previous configuration "
                              f"({', '.join(previous_names)} healthy again after {took:.0f} s)") from None
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def write_dropin(path: Path, text: str | None) -> None:
    if text is None:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)


# -- commands ---------------------------------------------------------------------------------------------

def read_record() -> dict:
    return json.loads(RECORD.read_text()) if RECORD.exists() else {}


def write_record(record: dict) -> None:
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    tmp = RECORD.with_name(f".{RECORD.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    tmp.replace(RECORD)


def describe(unit: Unit, command: list[str]) -> dict:
    """What COMMAND serves: the model and its names, and the adapters it loads."""
    adapters = [dict(zip(("name", "path"), m.split("=", 1), strict=False))
                for m in option_values(command, "--lora-modules")]
    return {"unit": unit.name, "health_url": unit.health_url, "model": served_model(command),
            "names": served_names(command), "adapters": adapters,
            "max_lora_rank": next(iter(option_values(command, "--max-lora-rank")), None)}


def serving_now(unit: Unit) -> list[str]:
    """The names the current configuration answers to (for the rollback's health gate)."""
    now = describe(unit, unit.current_command())
    return [now["names"][0], *(a["name"] for a in now["adapters"])]


def list_served(check: bool = True) -> dict:
    """`runner serve --list`: what the unit serves now (from its drop-in), our record, and one health probe.
    A host without an inference server answers so (mode none): a listing is not refused."""
    try:
        unit = read_unit()
    except ServeRefused as why:
        return {"mode": "none", "problem": str(why)}
    now = describe(unit, unit.current_command())
    record = read_record()
    now["mode"] = record.get("mode", "base") if unit.dropin.exists() else "base"
    now["session"] = record.get("session") if unit.dropin.exists() else None
    now["since"] = record.get("since")
    now["active"] = inference.is_active(unit.name)
    if check:
        names = serving_now(unit)
        problems = [p for p in (inference.check_health(unit.health_url, n) for n in names) if p]
        now["healthy"] = not problems
        now["problem"] = problems[0] if problems else None
    return now


def serve(training_root: Path, request: dict) -> dict:
    """Serve session REQUEST['session'] as an adapter or merged; health-gated, rolled back on failure."""
    session = str(request["session"])
    mode = request.get("mode", "adapter")
    name = request.get("name") or f"ft-{session}"
    timeout_s = float(request.get("health_timeout_s", 600))
    if not NAME_RE.fullmatch(name):
        raise ServeRefused(f"--name {name!r}: use letters, digits, '.', '_' and '-' (at most 64)")
    session_dir = training_root.expanduser() / "sessions" / session
    if not session_dir.is_dir():
        raise ServeRefused(f"no session {session} on this host (looked in {session_dir.parent})")
    holder = current_holder(training_root.expanduser() / files.LOCK)
    if holder:
        raise ServeRefused(f"session {holder.get('session_id')} is training on this host; serve after it ends")
    unit = read_unit()
    adapter = read_adapter(session_dir / "output" / "adapter", session_dir)
    base_names = served_names(unit.base_command)
    if name in base_names:
        raise ServeRefused(f"--name {name} is the base model's name; pick another")
    previous_names = serving_now(unit)
    if mode == "adapter":
        rank = check_unmerged(adapter, served_model(unit.base_command))
        path = copy_adapter(adapter.path, served_files.SERVE_ROOT / session / "adapter")
        command = with_adapter(unit.base_command, name, path, rank)
        names = [name, base_names[0]]
        extra = {"rank": adapter.rank, "max_lora_rank": rank}
    elif mode == "merge":
        path = merge(adapter, job_method(session_dir), served_files.SERVE_ROOT / session / "merged")
        command = with_model(unit.base_command, path, name)
        names = [name]
        extra = {"rank": adapter.rank}
    else:
        raise ServeRefused(f"unknown mode {mode}: adapter or merge")
    try:
        took = switch(unit, render_dropin(command, f"{mode} of session {session} as {name}"), names,
                      previous_names, timeout_s)
    except ServeFailed:
        prune_served(keep={read_record().get("path")} if unit.dropin.exists() else set())
        raise
    record = {"mode": "merged" if mode == "merge" else "adapter", "session": session, "name": name,
              "path": str(path), "base": served_model(unit.base_command), "since": time.time(), **extra}
    write_record(record)
    prune_served(keep={str(path)})
    return {**record, "changed": True, "healthy_after_s": round(took, 1), "unit": unit.name}


def revert(request: dict) -> dict:
    """Back to the unit's own configuration (no drop-in), health-gated; a no-op when already there."""
    unit = read_unit()
    timeout_s = float(request.get("health_timeout_s", 600))
    if not unit.dropin.exists():
        return {"mode": "base", "changed": False, "names": served_names(unit.base_command)}
    names = served_names(unit.base_command)
    took = switch(unit, None, names[:1], serving_now(unit), timeout_s)
    write_record({"mode": "base", "session": None, "name": names[0], "base": served_model(unit.base_command),
                  "since": time.time()})
    prune_served(keep=set())
    return {"mode": "base", "changed": True, "names": names, "healthy_after_s": round(took, 1)}


def prune_served(keep: set[str]) -> None:
    """Remove served copies (<root>/<session>/<adapter|merged>) that are not in KEEP."""
    if not served_files.SERVE_ROOT.exists():
        return
    for session in served_files.SERVE_ROOT.iterdir():
        for copy in session.iterdir() if session.is_dir() else []:
            if str(copy) not in keep:
                shutil.rmtree(copy, ignore_errors=True)
        if session.is_dir() and not any(session.iterdir()):
            session.rmdir()


def main(training_root: Path, action: str) -> int:
    """`python -m runner.host serve ROOT apply|list|revert` (request JSON on stdin): one line answers,
    refuses or fails."""
    request = json.loads(sys.stdin.read() or "{}") if not sys.stdin.isatty() else {}
    try:
        if action == "list":
            answer = list_served()
        elif action == "revert":
            answer = revert(request)
        elif action == "apply":
            answer = serve(training_root, request)
        else:
            return answers.refuse(f"unknown serve action {action}: apply, list or revert")
    except ServeRefused as refusal:
        return answers.refuse(refusal)
    except (ServeFailed, inference.InferenceError) as failure:
        print(f"failed: {failure}")
        return EXIT_FAILED
    return answers.answer(answers.SERVE_ACTIONS[action], answer)
