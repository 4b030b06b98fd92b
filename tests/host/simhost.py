"""A 'host' on this machine for supervisor tests: simulated GPUs (profile A), a power config, a training root."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

from runner.spec import validate_spec

GPU_SIM = REPO / "tests" / "gpu_sim"
A_3090TI = "GPU-3090ti00-0000-4000-8000-000000000001"
A_4090 = "GPU-40900000-0000-4000-8000-000000000002"
HOLDER = f"inference-holder-{os.getpid()}"

@pytest.fixture(scope="module")
def sim_lib() -> Path:
    subprocess.run(["make", "-s", "-C", str(GPU_SIM)], check=True)
    return GPU_SIM / "build"


@pytest.fixture
def host(tmp_path, sim_lib, tiny_model, monkeypatch):
    """A 'host' on this machine: profile A GPUs, a power config with a 1500 W PSU, a training root."""
    state = tmp_path / "gpu-state.json"
    shutil.copy(GPU_SIM / "profiles" / "a.json", state)
    power = tmp_path / "power.json"
    power.write_text(json.dumps({"standing_w": {A_3090TI: 450, A_4090: 450}, "psu_w": 1500}))
    monkeypatch.setenv("LD_LIBRARY_PATH", str(sim_lib))
    monkeypatch.setenv("GPU_SIM_STATE", str(state))
    monkeypatch.setenv("RUNNER_POWER_CONFIG", str(power))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    host = Host(tmp_path / "training", state, power, tiny_model)
    # Test hosts' vLLM is visible in this PID namespace too: match only our own holder
    host.edit_state(lambda s: s["processes"][0].update(pattern=HOLDER))
    return host


class Host:
    def __init__(self, root: Path, state: Path, power: Path, model: Path):
        self.root, self.state, self.power, self.model = root, state, power, model

    def session_dir(self, spec: dict, name: str = "s1", **identity) -> Path:
        """A staged session; `identity` adds to job.json what the playbook adds (e.g. a multi-node cluster part)."""
        path = self.root / "sessions" / name
        path.mkdir(parents=True)
        job = {"session_id": name, "host": "localhost", "spec": validate_spec(spec).model_dump(),
               "paths": {"model": str(self.model), "dataset": str(REPO / "examples" / "data" / "demo.jsonl")},
               **identity}
        (path / "job.json").write_text(json.dumps(job))
        # Only this session's trainer counts as a GPU process (its command line names its train.json),
        # not trainers on the test hosts, which this PID namespace sees too
        self.edit_state(lambda s: s["processes"][1].update(pattern=str(path / "train.json")))
        return path

    def run(self, session: Path, timeout: float = 300) -> tuple[int, dict]:
        proc = subprocess.run([sys.executable, "-m", "runner.host", "session", str(session)],
                              capture_output=True, text=True, timeout=timeout)
        return proc.returncode, json.loads((session / "status.json").read_text())

    def limits_w(self) -> dict[str, float]:
        gpus = json.loads(self.state.read_text())["gpus"]
        return {g["uuid"]: g.get("power_limit_w") or g["power_default_w"] for g in gpus}

    def edit_state(self, change) -> None:
        data = json.loads(self.state.read_text())
        change(data)
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.state)


def spec(**overrides) -> dict:
    base = {"model": "m", "dataset": "d", "format": "chat",
            "train": {"max_steps": 12, "batch_size": 4, "max_seq_len": 128, "save_steps": 4, "learning_rate": 3e-3},
            "power": {"limit_w": 300}}
    for key, value in overrides.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return base


def phase(status: dict, name: str) -> dict:
    return next(p for p in status["phases"] if p["name"] == name)
