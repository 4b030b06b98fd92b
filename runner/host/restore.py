"""Restore a host after a session: standing power limits back, inference started and healthy.

Idempotent and safe to run from every guard at once (the supervisor's finally, the unit's stop
hook, the playbook's always): runs are serialised by a lock and each step only changes what
is not yet restored. It undoes only what the session changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import time
from pathlib import Path

from runner.host import cluster, firewall, inference, launch, nvml, power, serve
from runner.host import session_files as files
from runner.host.status import Status, read_json


def restore(session_dir: Path, status: Status | None = None) -> bool:
    """Bring the host back; returns False (and records why in status.json) if any part failed."""
    status = status or Status(session_dir)
    job = read_json(session_dir / files.JOB)
    with (session_dir / ".restore.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another guard may be restoring right now: wait for it
        status.data = read_json(status.path) or status.data
        record: dict = {"started": time.time()}
        problems = []
        steps = (("trainer", stop_trainer), ("rendezvous", close_rendezvous), ("power", restore_power),
                 ("inference", restore_inference))
        for name, step in steps:
            try:
                record[name] = step(session_dir, job, status, record)
            except (power.PowerError, inference.InferenceError, nvml.NvmlUnavailable, OSError) as err:
                record[name] = f"FAILED: {err}"
                problems.append(f"{name}: {err}")
        record.update(ended=time.time(), ok=not problems)
        status.update(restore=record)
    return not problems


TRAINER_TERM_S = 30  # a stray trainer's time to stop (it checkpoints on TERM) before it is killed
TRAINER_KILL_S = 10


class TrainerSurvives(OSError):
    """A trainer process of the session could not be ended: the GPUs are not handed back."""


def stop_trainer(session_dir: Path, _job: dict, _status: Status, _record: dict) -> str:
    """The session's trainer is gone before the GPUs are handed back: its unit stopped, and the process table
    and NVML checked for any process of it left (a supervisor or launcher killed outright); those are ended."""
    (session_dir / "trainer.env").unlink(missing_ok=True)  # it may hold the HF token: gone with the trainer
    unit = f"gpu-runner-trainer@{session_dir.name}.service"
    done = "not running"
    if inference.has_systemd() and launch.TRAINER_UNIT.exists() and inference.is_active(unit):
        inference.systemctl("stop", unit)
        (session_dir / "trainer.env").unlink(missing_ok=True)
        done = f"stopped {unit}"
    stray, checked = trainer_processes(session_dir)
    if not stray:
        return f"{done}; no trainer process left ({checked} checked)"
    left = end_processes(stray)
    if left:
        raise TrainerSurvives(f"trainer process(es) {', '.join(map(str, left))} still running after SIGKILL; "
                              f"inference not started: end them, then run runner.host restore {session_dir}")
    return f"{done}; ended stray trainer process(es) {', '.join(map(str, stray))} ({checked} checked)"


def _cmdline(pid: int | str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_alive(pid: int | str) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has ended; only its parent's wait is missing


def trainer_processes(session_dir: Path) -> tuple[list[int], str]:
    """Live processes of this session's trainer: command lines naming its train.json (the process table),
    and GPU compute processes whose command line names the session folder (NVML); and what was checked."""
    names = {str(session_dir / "train.json"), str(session_dir.resolve() / "train.json")}
    folders = {str(session_dir), str(session_dir.resolve())}
    found = {int(e.name) for e in Path("/proc").iterdir()
             if e.name.isdigit() and any(n in _cmdline(e.name) for n in names)}
    checked = "process table"
    try:
        with nvml.nvml():
            gpu_pids = {p["pid"] for gpu in nvml.list_gpus() for p in gpu.processes}
        found |= {pid for pid in gpu_pids if any(f in _cmdline(pid) for f in folders)}
        checked += " and NVML"
    except nvml.NvmlUnavailable:
        pass
    return sorted(pid for pid in found - {os.getpid()} if process_alive(pid)), checked


def end_processes(pids: list[int]) -> list[int]:
    """TERM, then KILL what is left after TRAINER_TERM_S; returns the processes still alive after that."""
    for sig, wait_s in ((signal.SIGTERM, TRAINER_TERM_S), (signal.SIGKILL, TRAINER_KILL_S)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while (pids := [p for p in pids if process_alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not pids:
            return []
    return pids


def close_rendezvous(_session_dir: Path, job: dict, _status: Status, _record: dict) -> str:
    """A multi-node job's first host: its rendezvous port rule goes with the job."""
    if not cluster.hosts_rendezvous(job):
        return "not the rendezvous host"
    return firewall.close_rendezvous()


def restore_power(session_dir: Path, _job: dict, _status: Status, _record: dict) -> str:
    before = read_json(session_dir / "power_before.json")
    if not before:
        return "unchanged: the session did not change power limits"
    config = power.PowerConfig.load()
    standing = {**before, **{u: w for u, w in config.standing_w.items() if u in before}}
    if config.readonly:
        return "skipped: read-back-only mode"
    with nvml.nvml():
        enforced = power.apply_profile(standing, readonly=False)
    return "standing limits enforced: " + ", ".join(f"{u}: {w:g} W" for u, w in enforced.items())


def served_name(job_name: str | None) -> str | None:
    """The model the server must list: after `runner serve --merge` the merged model's name replaces the base's."""
    record = serve.read_record()
    return record["name"] if record.get("mode") == "merged" and record.get("name") else job_name


def restore_inference(_session_dir: Path, job: dict, status: Status, record: dict) -> str:
    inf = job.get("spec", {}).get("inference") or {}
    service = inf.get("service")
    if not service or inf.get("mode") != "stop" or not status.data.get("inference_stopped_at"):
        return "unchanged: the session did not stop inference"
    if str(record.get("trainer", "")).startswith("FAILED"):  # never two users of one GPU
        raise inference.InferenceError(f"{service} not started: the session's trainer is still running")
    if status.data.get("inference_was_active") is False:
        return f"{service} was not running before the session; left stopped"
    if not inference.is_active(service):
        inference.start(service)
    waited = inference.wait_healthy(inf["health_url"], served_name(inf.get("model_name")),
                                    inf.get("health_timeout_s", 300))
    record["healthy_at"] = time.time()
    return f"{service} healthy after {waited:.0f} s"
