"""Start the trainer with `accelerate launch`: its config file, the command line and the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

TOKEN_ENV = "HF_TOKEN"


def trainer_config(job: dict, session_dir: Path) -> dict:
    """The trainer's own config (runner.train reads only this) from the staged job."""
    spec = job["spec"]
    return {
        "model": job["paths"]["model"],
        "dataset": job["paths"]["dataset"],
        "format": spec["format"],
        "method": spec["method"],
        "lora": spec["lora"],
        "train": spec["train"],
        "trust_remote_code": spec["trust_remote_code"],
        "output_dir": str(session_dir / "output"),
        "metrics_path": str(session_dir / "metrics.jsonl"),
        "stop_file": str(session_dir / "STOP"),
        "resume": True,
    }


def launch_env(gpu_names: list[str], token: str | None = None) -> dict[str, str]:
    """The launch environment: CUDA and NVML agree on indices; RTX 40 cards have no P2P."""
    env = dict(os.environ)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["PYTHONUNBUFFERED"] = "1"
    if any("RTX 40" in name for name in gpu_names):
        env["NCCL_P2P_DISABLE"] = "1"
        env["NCCL_IB_DISABLE"] = "1"
    if token:
        env[TOKEN_ENV] = token  # through the environment, never argv: argv shows in ps and the journal
    return env


def launch_command(session_dir: Path) -> list[str]:
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    config = session_dir / "accelerate.yaml"
    if config.exists():
        cmd += ["--config_file", str(config)]
    return [*cmd, "-m", "runner.train", str(session_dir / "train.json")]


def start_trainer(job: dict, session_dir: Path, gpu_names: list[str], token: str | None) -> subprocess.Popen:
    """Write train.json and start the trainer in its own process group, its output into train.log."""
    (session_dir / "train.json").write_text(json.dumps(trainer_config(job, session_dir), indent=1))
    log = (session_dir / "train.log").open("ab")
    return subprocess.Popen(launch_command(session_dir), cwd=session_dir, env=launch_env(gpu_names, token),
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
