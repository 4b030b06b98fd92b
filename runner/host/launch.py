"""Start the trainer with `accelerate launch`: its config, its environment, and who runs it.

On a provisioned host (systemd, the trainer unit installed, running as root) the trainer runs as
gpu-runner-trainer@<id>.service: the unprivileged trainer user, no capabilities, writing only its
output folder. Elsewhere (localhost, containers, CI) it is a child process of the supervisor.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path

from runner.host import inference
from runner.host import session_files as files

TOKEN_ENV = "HF_TOKEN"
TRAINER_UNIT = Path("/etc/systemd/system/gpu-runner-trainer@.service")
SESSION_CONFIG = Path(os.environ.get("RUNNER_SESSION_CONFIG", "/etc/gpu-runner/session.json"))
# What the trainer unit gets from the supervisor's environment (the rest of it stays with root)
PASSED_ENV = ("OMP_NUM_THREADS", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def trainer_config(job: dict, session_dir: Path) -> dict:
    """The trainer's own config (runner.train reads only this) from the staged job."""
    spec = job["spec"]
    return {
        "model": job["paths"]["model"],
        # the adapter names the model as the user did (a job staged before this key: as the spec wrote it)
        "base_model_name": job.get("base_model_name") or spec["model"],
        "dataset": dataset_setting(job),
        "format": spec["format"],
        "method": spec["method"],
        "lora": spec["lora"],
        "train": spec["train"],
        "trust_remote_code": spec["trust_remote_code"],
        "output_dir": str(session_dir / "output"),
        "metrics_path": str(session_dir / files.METRICS),
        "stop_file": str(session_dir / files.STOP),
        "resume": True,
        **({"collective_timeout_s": spec["cluster"]["collective_timeout_s"]} if job.get("cluster") else {}),
        **({"eval": eval_settings(job)} if spec.get("eval") else {}),
        **({"samples": spec["samples"]} if spec.get("samples") else {}),  # a job staged before samples: defaults
    }


def dataset_setting(job: dict) -> str | list[dict]:
    """The dataset where the host has it; a mix: each source (staged as paths dataset.N) with its weight, format."""
    sources = job["spec"].get("dataset")
    if not isinstance(sources, list):
        return job["paths"]["dataset"]
    return [{**source, "path": job["paths"][f"dataset.{i}"]} for i, source in enumerate(sources)]


def eval_settings(job: dict) -> dict:
    """The spec's eval section, its separate file (if any) where the host has it."""
    ev = dict(job["spec"]["eval"])
    if ev.get("dataset"):
        ev["dataset"] = job["paths"]["eval.dataset"]
    return ev


def launch_env(gpu_names: list[str], token: str | None = None) -> dict[str, str]:
    """What the trainer needs on top of a clean environment: CUDA/NVML order, NCCL on RTX 40, the token."""
    env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "PYTHONUNBUFFERED": "1"}
    if any("RTX 40" in name for name in gpu_names):
        env["NCCL_P2P_DISABLE"] = "1"  # RTX 40 cards have no P2P (and no IB): NCCL hangs without these
        env["NCCL_IB_DISABLE"] = "1"
    if token:
        env[TOKEN_ENV] = token  # through the environment, never argv: argv shows in ps and the journal
    return env


def launch_command(session_dir: Path) -> list[str]:
    """accelerate launch under runner.guard: the trainer ends with the supervisor, even after a kill -9 of it,
    and with the launcher (a kill -9 of it leaves no trainer behind)."""
    cmd = [sys.executable, "-m", "runner.guard", str(os.getpid()), "--", sys.executable, "-m",
           "accelerate.commands.launch"]
    config = session_dir / "accelerate.yaml"
    if config.exists():
        cmd += ["--config_file", str(config)]
    return [*cmd, "-m", "runner.train", str(session_dir / "train.json")]


class ProcessTrainer:
    """The trainer as a child process group of the supervisor."""

    def __init__(self, process: subprocess.Popen):
        self.process = process

    def poll(self) -> int | None:
        rc = self.process.poll()
        if rc is not None:  # the guard ends its group; if the guard itself was killed, this does
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        return rc

    def terminate(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)


class UnitTrainer:
    """The trainer as its own hardened systemd unit."""

    def __init__(self, unit: str):
        self.unit = unit

    def poll(self) -> int | None:
        shown = inference.systemctl("show", "-p", "ActiveState", "-p", "ExecMainStatus", self.unit).stdout
        props = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
        if props.get("ActiveState") in ("active", "activating", "deactivating", "reloading"):
            return None
        return int(props.get("ExecMainStatus") or 1)

    def terminate(self) -> None:
        inference.systemctl("stop", "--no-block", self.unit)


def trainer_unit_config(session_dir: Path) -> dict | None:
    """The provisioned trainer user, when this session can run under the trainer unit; else None."""
    if os.geteuid() != 0 or not TRAINER_UNIT.exists() or not SESSION_CONFIG.exists() or not inference.has_systemd():
        return None
    config = json.loads(SESSION_CONFIG.read_text())
    root = config.get("root")
    return config if root and session_dir.parent.parent == Path(root) else None


def _own(path: Path, user: pwd.struct_passwd, mode: int) -> None:
    os.chown(path, user.pw_uid, user.pw_gid)
    path.chmod(mode)


def start_unit(session_dir: Path, env: dict[str, str], config: dict) -> UnitTrainer:
    """Hand the trainer user exactly its output folder and metrics file, then start its unit."""
    user = pwd.getpwnam(config["trainer_user"])
    (session_dir / "output").mkdir(exist_ok=True)
    _own(session_dir / "output", user, 0o750)
    (session_dir / files.METRICS).touch()
    _own(session_dir / files.METRICS, user, 0o640)
    (session_dir / files.TRAIN_LOG).touch()
    env = {**env, "HF_HOME": f"{config['trainer_home']}/training/cache",
           **{k: os.environ[k] for k in PASSED_ENV if k in os.environ}}
    env_file = session_dir / "trainer.env"
    env_file.touch(mode=0o600)
    env_file.chmod(0o600)  # systemd reads it as root; the trainer sees it only as its environment
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    unit = f"gpu-runner-trainer@{session_dir.name}.service"
    inference.systemctl("reset-failed", unit)  # a resumed session reuses the name
    result = inference.systemctl("start", unit)
    if result.returncode != 0:
        raise OSError(f"systemctl start {unit} failed: {result.stderr.strip()}")
    return UnitTrainer(unit)


def start_trainer(job: dict, session_dir: Path, gpu_names: list[str], token: str | None,
                  extra_env: dict[str, str] | None = None) -> ProcessTrainer | UnitTrainer:
    """Write train.json and start the trainer: as the trainer unit where provisioned, else as a child."""
    (session_dir / "train.json").write_text(json.dumps(trainer_config(job, session_dir), indent=1))
    env = {**launch_env(gpu_names, token), **(extra_env or {})}
    config = trainer_unit_config(session_dir)
    if config:
        return start_unit(session_dir, env, config)
    log = (session_dir / files.TRAIN_LOG).open("ab")
    process = subprocess.Popen(launch_command(session_dir), cwd=session_dir, env={**os.environ, **env},
                               stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               start_new_session=True)
    return ProcessTrainer(process)
