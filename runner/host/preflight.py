"""Preflight: every check a session makes before it changes anything on the host.

Run twice: by the playbook before anything is staged (`python -m runner.host check`, the job on
stdin), and by the supervisor at the start of the session. A failed check raises Refusal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from runner import psu
from runner.host import cluster, inference, launch, nvml, power
from runner.host.strategy import choose_strategy

MIN_FREE_DISK_GIB = 1.0
PROBE_TIMEOUT_S = 600  # loading a tokenizer and reading the data; no weights are loaded
# The probe never downloads: what is not on the host yet is checked when the trainer loads it
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false"}


class Refusal(Exception):
    """A preflight check said no; nothing on the host was changed by this session."""


@dataclass
class Preflight:
    gpus: list[nvml.Gpu] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    inference_active: bool | None = None
    strategy: str = "ddp"
    strategy_reason: str = ""
    cluster_interface: str | None = None  # multi-node: where NCCL, gloo and the rendezvous talk

    def summary(self) -> str:
        names = ", ".join(f"{g.name} ({g.uuid})" for g in self.gpus) or "none"
        return "; ".join([f"GPUs: {names}", *self.notes, *([self.strategy_reason] if self.strategy_reason else [])])

    def answer(self) -> dict:
        """What the playbook's check hands the controller."""
        return {"summary": self.summary(), "strategy": self.strategy, "cluster_interface": self.cluster_interface}


def session_profile(spec: dict, gpus: list[nvml.Gpu], config: power.PowerConfig) -> dict[str, float]:
    """Watts per GPU for the session: the job's limit, else the host's session profile."""
    limit = spec["power"]["limit_w"]
    if isinstance(limit, dict):
        return dict(limit)
    if limit is not None:
        return {g.uuid: float(limit) for g in gpus}
    return dict(config.session_w)


def check(job: dict, training_root: Path, config: power.PowerConfig) -> Preflight:
    """All checks; returns what was found (GPUs, notes) or raises Refusal naming the problem and the fix."""
    result = Preflight()
    try:
        with nvml.nvml():
            result.gpus = nvml.list_gpus()
    except nvml.NvmlUnavailable as why:
        result.notes.append(f"no GPU steps: {why}")
    spec = job["spec"]
    check_expected_gpus(job.get("expected_gpus") or [], result.gpus)
    check_power_plan(session_profile(spec, result.gpus, config), result.gpus, config)
    check_paths(job["paths"])
    check_disk(training_root)
    result.inference_active = check_inference(spec["inference"])
    result.notes.extend(check_model_and_data(job, training_root))
    result.strategy, result.strategy_reason = pick_strategy(spec, job["paths"]["model"], result.gpus,
                                                            job.get("cluster"))
    if job.get("cluster"):
        result.cluster_interface = check_cluster(job["cluster"], result.gpus)
        result.notes.append(cluster.describe(job["cluster"], result.cluster_interface))
    return result


def check_cluster(part: dict, gpus: list[nvml.Gpu]) -> str:
    """This host's GPUs are those the controller laid the job out for; the interface that holds its address."""
    per_machine = int(part["processes_per_machine"])
    if [g.memory_total_mib for g in gpus[:per_machine]] != part["gpu_memory_mib"][int(part["machine_rank"])]:
        raise Refusal(f"this host's GPUs changed since the controller laid out the multi-node job ({len(gpus)} now, "
                      f"{per_machine} process(es) a machine planned); run 'runner train' again")
    try:
        return cluster.interface_for(part["address"], part.get("interface") or None)
    except cluster.ClusterError as err:
        raise Refusal(str(err)) from None


def job_gpu_memory_gib(gpus: list[nvml.Gpu], cluster: dict | None = None) -> list[float]:
    """The memory of every GPU the job trains on: this host's, or for a multi-node job every machine's share as
    the controller laid it out (runner.cluster.lay_out), so that every host sizes the same list."""
    if cluster:
        return [mib / 1024 for machine in cluster["gpu_memory_mib"] for mib in machine]
    return [g.memory_total_mib / 1024 for g in gpus]


def pick_strategy(spec: dict, model: str, gpus: list[nvml.Gpu], cluster: dict | None = None) -> tuple[str, str]:
    """DDP or FSDP across the job's GPUs, and why; the job may set it. A multi-node job's strategy is the whole
    job's, the same on every host: sized over every machine's GPUs (job_gpu_memory_gib), FSDP where the smallest
    of them cannot hold the weights. The one rule: the host's check, the supervisor and the dry run call it."""
    wanted = spec.get("strategy", "auto")
    memory = job_gpu_memory_gib(gpus, cluster)
    if len(memory) < 2:
        return "ddp", ""
    if wanted != "auto":
        return wanted, f"{wanted}: set by the job"
    if not Path(model).is_dir():
        return "ddp", "ddp: the model's size is not known on the host yet; set strategy: fsdp if it needs pooling"
    chosen = choose_strategy(model, spec["method"], memory)
    return chosen.name, chosen.reason


def check_expected_gpus(expected: list[str], gpus: list[nvml.Gpu]) -> None:
    present = {g.uuid for g in gpus}
    missing = [u for u in expected if u not in present]
    if missing:
        raise Refusal(f"GPU {', '.join(missing)} from the inventory is not on this host "
                      f"(it has {', '.join(sorted(present)) or 'no GPUs'})")


def check_power_plan(profile: dict[str, float], gpus: list[nvml.Gpu], config: power.PowerConfig) -> None:
    if not gpus:
        return
    try:
        power.check_profile(profile, gpus)
    except power.PowerError as err:
        raise Refusal(f"power plan refused: {err}") from None
    if config.psu_w:
        plan = psu.profile_budget(gpus, profile, config.psu_w, config.system_w, config.margin)
        if not plan.fits:
            raise Refusal(f"power plan does not fit the PSU: worst case {plan.total_w:.0f} W > "
                          f"{plan.allowed_w:.0f} W allowed; lower power.limit_w ('runner power plan' "
                          "suggests safe limits)")


def check_paths(paths: dict[str, str]) -> None:
    for what, value in paths.items():
        if value.startswith(("/", "~")) and not Path(value).expanduser().exists():
            raise Refusal(f"{what} {value} does not exist on this host; fix '{what}' in the job file")


def check_disk(training_root: Path) -> None:
    existing = training_root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free_gib = shutil.disk_usage(existing).free / 2**30
    if free_gib < MIN_FREE_DISK_GIB:
        raise Refusal(f"only {free_gib:.1f} GiB free under {training_root} for checkpoints; "
                      f"free at least {MIN_FREE_DISK_GIB:g} GiB")


def check_model_and_data(job: dict, training_root: Path) -> list[str]:
    """The trainer's own config parsing and its probe of model and data (`python -m runner.train.probe`, in this
    venv): a config the trainer refuses, an unknown architecture, data it cannot train on are refused here."""
    session_dir = training_root / "sessions" / str(job.get("session_id", "check"))
    config = json.dumps(launch.trainer_config(job, session_dir))
    try:
        # cwd /: a path not resolved to this host (a file not uploaded yet) finds nothing by accident
        done = subprocess.run([sys.executable, "-m", "runner.train.probe"], input=config, capture_output=True,
                              text=True, cwd="/", timeout=PROBE_TIMEOUT_S, env={**os.environ, **OFFLINE_ENV})
    except subprocess.TimeoutExpired:
        raise Refusal(f"the model and data check took over {PROBE_TIMEOUT_S} s; check the dataset's size and "
                      "the model folder") from None
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise Refusal(f"the model and data check failed (exit {done.returncode}): {said}") from None
    if not answer.get("ok"):
        raise Refusal(answer.get("error", "the model and data check refused the job"))
    return answer.get("notes", [])


def check_inference(inf: dict) -> bool | None:
    """Whether the inference unit runs now (None when the session leaves inference alone)."""
    service = inf["service"]
    if not service or inf["mode"] != "stop":
        return None
    if not inference.has_systemd():
        raise Refusal(f"inference.service is '{service}' but this host has no systemd to stop it; "
                      "set inference.mode: none")
    return inference.is_active(service)
