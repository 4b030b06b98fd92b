"""The session supervisor on this machine against simulated GPUs (the NVML edge is the only fake).

Each test runs `python -m runner.host session DIR` as a process, with the simulated libnvidia-ml
on LD_LIBRARY_PATH and its own state file, and checks what NVML reports afterwards.
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO

from runner.spec import validate_spec

GPU_SIM = REPO / "tests" / "gpu_sim"
A_3090TI = "GPU-3090ti00-0000-4000-8000-000000000001"
A_4090 = "GPU-40900000-0000-4000-8000-000000000002"
HOLDER = f"inference-holder-{os.getpid()}"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="setting power limits needs root, like the driver")


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

    def session_dir(self, spec: dict, name: str = "s1") -> Path:
        path = self.root / "sessions" / name
        path.mkdir(parents=True)
        job = {"session_id": name, "host": "localhost", "spec": validate_spec(spec).model_dump(),
               "paths": {"model": str(self.model), "dataset": str(REPO / "examples" / "data" / "demo.jsonl")}}
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


def test_session_caps_trains_samples_and_restores(host):
    session = host.session_dir(spec())
    rc, status = host.run(session)
    assert rc == 0, (session / "train.log").read_text()[-2000:]
    assert status["outcome"] == "succeeded"
    assert phase(status, "power")["outcome"] == "ok"
    assert "ddp: 16-bit weights" in phase(status, "preflight")["detail"]  # the tiny model fits each GPU
    assert status["power_session_w"] == {A_3090TI: 300, A_4090: 300}
    assert status["restore"]["ok"] and host.limits_w() == {A_3090TI: 450, A_4090: 450}
    samples = [json.loads(line) for line in (session / "telemetry.jsonl").read_text().splitlines()]
    assert samples and {g["uuid"] for g in samples[0]["gpus"]} == {A_3090TI, A_4090}
    assert max(g["power_w"] for s in samples for g in s["gpus"]) > 100  # the trainer counts as a GPU process
    assert all(g["limit_w"] == 300 for s in samples[1:-1] for g in s["gpus"])
    peaks = status["summary"]["gpu_peaks"]
    assert peaks[A_4090]["limit_w"] == 300 and peaks[A_4090]["max_instant_w"] > 0


def test_out_of_range_limit_is_refused_without_change(host):
    session = host.session_dir(spec(power={"limit_w": 50}))
    rc, status = host.run(session)
    assert rc == 3 and status["outcome"] == "refused"
    assert "outside its allowed range 100-480 W" in status["error"]
    assert host.limits_w() == {A_3090TI: 450, A_4090: 450}
    assert not (session / "train.json").exists()


def test_plan_over_the_psu_is_refused(host):
    host.power.write_text(json.dumps({"standing_w": {}, "psu_w": 850}))
    rc, status = host.run(host.session_dir(spec(power={"limit_w": 450})))
    assert rc == 3 and "does not fit the PSU" in status["error"]
    assert host.limits_w() == {A_3090TI: 450, A_4090: 450}


def test_busy_gpu_is_refused_naming_the_pid(host):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", HOLDER])
    try:
        rc, status = host.run(host.session_dir(spec(inference={"free_timeout_s": 1})))
    finally:
        holder.kill()
    assert rc == 3 and str(holder.pid) in status["error"]
    assert status["restore"]["ok"] and host.limits_w() == {A_3090TI: 450, A_4090: 450}


def test_second_session_is_refused_naming_the_holder(host):
    first = host.session_dir(spec(train={"max_steps": 50000, "save_steps": 20000}), "first")
    proc = subprocess.Popen([sys.executable, "-m", "runner.host", "session", str(first)])
    try:
        deadline = time.time() + 60
        while json.loads((first / "status.json").read_text() or "{}").get("phase") != "train" \
                if (first / "status.json").exists() else time.time() < deadline:
            time.sleep(0.5)
        rc, status = host.run(host.session_dir(spec(), "second"))
        assert rc == 3 and "first" in status["error"] and "since" in status["error"]
    finally:
        (first / "STOP").touch()
        proc.wait(timeout=120)


def test_heat_stops_the_trainer_gracefully_and_restores(host):
    host.edit_state(lambda s: s["gpus"][1]["force"].update(temperature_c=95))
    session = host.session_dir(spec(train={"max_steps": 50000, "save_steps": 20000},
                                    power={"max_temperature_c": 85, "hot_grace_s": 2}))
    rc, status = host.run(session)
    assert (rc, status["outcome"]) == (130, "interrupted"), (status, (session / "train.log").read_text()[-3000:])
    assert "above 85 C" in status["error"]
    assert status.get("trainer_stopped")  # the trainer checkpointed and said so
    assert status["restore"]["ok"] and host.limits_w() == {A_3090TI: 450, A_4090: 450}
