"""Telemetry keeps its cadence: samples are taken on a fixed grid, not one interval after each (slow) sample."""

import json
import os
import shutil
import subprocess
import sys

from simhost import GPU_SIM

B_4090 = "GPU-40900000-0000-4000-8000-0000000000b1"
# Each NVML reading takes half an interval here (a busy host, many GPUs); the telemetry thread must still
# sample once per interval. The child loads the simulated libnvidia-ml.so.1 through LD_LIBRARY_PATH.
CHILD = """
import json, sys, time
from pathlib import Path
from runner.host import nvml, telemetry

real_sample = nvml.sample
def slow_sample(uuid):
    time.sleep(0.1)
    return real_sample(uuid)
nvml.sample = slow_sample
path = Path(sys.argv[1])
t = telemetry.Telemetry([sys.argv[2]], path, telemetry.WatchdogLimits(), print, print, interval_s=0.2)
t.start()
while len(path.read_text().splitlines() if path.exists() else []) < 11:
    time.sleep(0.05)
t.stop()
"""


def test_samples_stay_on_the_interval_grid_when_sampling_is_slow(sim_lib, tmp_path):
    state = tmp_path / "gpu-state.json"
    shutil.copy(GPU_SIM / "profiles" / "b.json", state)
    out = tmp_path / "telemetry.jsonl"
    env = {**os.environ, "LD_LIBRARY_PATH": str(sim_lib), "GPU_SIM_STATE": str(state)}
    subprocess.run([sys.executable, "-c", CHILD, str(out), B_4090], env=env, cwd=tmp_path, check=True, timeout=120)
    times = [json.loads(line)["time"] for line in out.read_text().splitlines()]
    assert all(s["gpus"][0]["uuid"] == B_4090 for s in map(json.loads, out.read_text().splitlines()))
    # 10 intervals of 0.2 s: 2.0 s on the grid; one interval after each 0.1 s reading would take 3.0 s
    assert times[10] - times[0] < 2.5
