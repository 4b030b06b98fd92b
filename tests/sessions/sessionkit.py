"""Helpers for session tests on the provisioned test hosts."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from helpers import REPO, run_runner
from provisioning import SESSIONS_ROOT, STANDING_W

DATASET = REPO / "examples" / "data" / "demo.jsonl"
SESSIONS = f"{SESSIONS_ROOT}/sessions"
TOKEN = "hf_plantedTokenGpuRunner0123456789abcdef"  # an HF token planted in a controller's environment: never on disk


def job_file(tmp_path: Path, *, vllm: bool, max_steps: int = 20, **extra) -> Path:
    job = {"model": "/opt/models/tiny-chat", "dataset": str(DATASET), "format": "chat",
           "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
           "train": {"max_steps": max_steps, "learning_rate": 0.003, "batch_size": 4, "max_seq_len": 128,
                     "save_steps": 5},
           "inference": ({"service": "vllm", "mode": "stop", "health_url": "http://127.0.0.1:8000",
                          "model_name": "tiny-chat", "health_timeout_s": 240} if vllm else {}),
           "output": {"fetch": "adapter"}}
    for key, value in extra.items():
        job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job))
    return path


def train(job: Path, inventory, hosts: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_runner("train", str(job), "-i", str(inventory.path), "--hosts", hosts, *args, cwd=cwd, timeout=900)


def host_status(host, session_id: str) -> dict:
    return json.loads(host.ssh(f"cat {SESSIONS}/{session_id}/status.json").stdout)


def session_of(result: subprocess.CompletedProcess) -> str:
    """The session id `runner train` announced."""
    return next(line.split()[1] for line in result.stderr.splitlines() if line.startswith("session "))


def limits(host) -> dict[str, float]:
    return {g["uuid"]: g["power_limit_w"] for g in host.gpu_state()["gpus"]}


def assert_restored(host, vllm: bool) -> None:
    assert limits(host) == STANDING_W[host.name]
    if vllm:
        host.wait_vllm(timeout_s=240)
    leftovers = host.ssh("pgrep -af 'runner[.]host session|runner[.]train' || true").stdout.strip()
    assert leftovers == "", leftovers
    active = host.ssh("systemctl list-units 'gpu-runner-session*' --state=active --no-legend").stdout.strip()
    assert active == "", active


def wait_for_step(host, session: str, step: int, timeout: float = 240) -> None:
    """Wait until a session on the host reaches a training step."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = host.ssh(f"cat {SESSIONS}/{session}/status.json 2>/dev/null || echo {{}}").stdout
        if (json.loads(status or "{}").get("step") or 0) >= step:
            return
        time.sleep(1)
    raise AssertionError(f"{host.name}: session {session} did not reach step {step}")


class Background:
    """`runner train` running in the background, as a user's terminal would run it."""

    def __init__(self, job: Path, inventory, hosts: str, cwd: Path, *args: str):
        runner = str(Path(sys.executable).parent / "runner")
        self.log = cwd / f"controller-{time.monotonic_ns()}.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [runner, "train", str(job), "-i", str(inventory.path), "--hosts", hosts, *args],
                cwd=cwd, stdout=log, stderr=log, start_new_session=True)
        self.session = self._session_id()

    def _session_id(self, timeout: float = 60) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            for line in self.log.read_text().splitlines():
                if line.startswith("session "):
                    return line.split()[1]
            time.sleep(0.2)
        raise AssertionError(f"runner train printed no session id: {self.log.read_text()}")

    def wait(self, timeout: float = 300) -> int:
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        self.process.kill()
