"""The session supervisor on this machine against simulated GPUs (the NVML edge is the only fake).

Each test runs `python -m runner.host session DIR` as a process, with the simulated libnvidia-ml
on LD_LIBRARY_PATH and its own state file, and checks what NVML reports afterwards.
"""

import json
import os
import subprocess
import sys
import time

import pytest
from simhost import A_3090TI, A_4090, HOLDER, phase, spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="setting power limits needs root, like the driver")


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
        deadline = time.time() + 120
        while read_status(first).get("phase") != "train":
            assert proc.poll() is None and time.time() < deadline, "the first session never reached training"
            time.sleep(0.5)
        rc, status = host.run(host.session_dir(spec(), "second"))
        assert rc == 3 and "first" in status["error"] and "since" in status["error"]
    finally:
        (first / "STOP").touch()
        proc.wait(timeout=120)


def read_status(session) -> dict:
    path = session / "status.json"
    return json.loads(path.read_text() or "{}") if path.exists() else {}


@pytest.mark.slow  # a session with a trainer until the heat stop
def test_heat_stops_the_trainer_gracefully_and_restores(host):
    session = host.session_dir(spec(train={"max_steps": 50000, "save_steps": 20000},
                                    power={"max_temperature_c": 85, "hot_grace_s": 2}))
    proc = subprocess.Popen([sys.executable, "-m", "runner.host", "session", str(session)])
    try:
        deadline = time.time() + 120
        while not read_status(session).get("step"):
            assert proc.poll() is None and time.time() < deadline, "the trainer never reached a step"
            time.sleep(0.2)
        host.edit_state(lambda s: s["gpus"][1]["force"].update(temperature_c=95))  # the card heats up mid-run
        rc = proc.wait(timeout=300)
    finally:
        proc.kill()
    status = json.loads((session / "status.json").read_text())
    assert (rc, status["outcome"]) == (130, "interrupted"), (status, (session / "train.log").read_text()[-3000:])
    assert "above 85 C" in status["error"]
    assert status["trainer_stopped"]["checkpoint"]  # the trainer checkpointed and said so
    assert status["restore"]["ok"] and host.limits_w() == {A_3090TI: 450, A_4090: 450}
