"""Restore a host after a session: standing power limits back, inference started and healthy.

Idempotent and safe to run from every guard at once (the supervisor's finally, the unit's stop
hook, the playbook's always): runs are serialised by a lock and each step only changes what
is not yet restored. It undoes only what the session changed.
"""

from __future__ import annotations

import fcntl
import time
from pathlib import Path

from runner.host import cluster, firewall, inference, launch, nvml, power, serve
from runner.host.status import Status, read_json


def restore(session_dir: Path, status: Status | None = None) -> bool:
    """Bring the host back; returns False (and records why in status.json) if any part failed."""
    status = status or Status(session_dir)
    job = read_json(session_dir / "job.json")
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


def stop_trainer(session_dir: Path, _job: dict, _status: Status, _record: dict) -> str:
    """A trainer unit outliving its supervisor (killed, say) is stopped before the GPUs are handed back."""
    (session_dir / "trainer.env").unlink(missing_ok=True)  # it may hold the HF token: gone with the trainer
    unit = f"gpu-runner-trainer@{session_dir.name}.service"
    if not (inference.has_systemd() and launch.TRAINER_UNIT.exists()) or not inference.is_active(unit):
        return "not running"
    inference.systemctl("stop", unit)
    (session_dir / "trainer.env").unlink(missing_ok=True)
    return f"stopped {unit}"


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
    if status.data.get("inference_was_active") is False:
        return f"{service} was not running before the session; left stopped"
    if not inference.is_active(service):
        inference.start(service)
    waited = inference.wait_healthy(inf["health_url"], served_name(inf.get("model_name")),
                                    inf.get("health_timeout_s", 300))
    record["healthy_at"] = time.time()
    return f"{service} healthy after {waited:.0f} s"
