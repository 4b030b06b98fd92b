"""The telemetry watchdog on the simulated NVML: a GPU that stays hot is warned about, then stopped for, after its
grace. The fast tier's heat check; test_supervisor.py's session stopped by heat mid-training is the slow tier's."""

import json
import os
import shutil
import subprocess
import sys

from simhost import GPU_SIM

B_4090 = "GPU-40900000-0000-4000-8000-0000000000b1"
# The child loads the simulated libnvidia-ml.so.1 through LD_LIBRARY_PATH; it prints what the watchdog said
CHILD = """
import json, sys, time
from pathlib import Path
from runner.host import telemetry

said, stops = [], []
limits = telemetry.WatchdogLimits(max_temperature_c=85, temperature_grace_s=0.5)
t = telemetry.Telemetry([sys.argv[2]], Path(sys.argv[1]), limits, said.append, stops.append, interval_s=0.1)
t.start()
deadline = time.monotonic() + 60
while not stops and time.monotonic() < deadline:
    time.sleep(0.05)
t.stop()
print(json.dumps({"warned": said, "stops": stops, "peak_c": t.peaks[sys.argv[2]].max_temperature_c}))
"""


def test_a_gpu_that_stays_hot_is_warned_about_then_stopped_for(sim_lib, tmp_path):
    state = tmp_path / "gpu-state.json"
    shutil.copy(GPU_SIM / "profiles" / "b.json", state)
    hot = json.loads(state.read_text())
    hot["gpus"][0]["force"]["temperature_c"] = 95
    state.write_text(json.dumps(hot))
    env = {**os.environ, "LD_LIBRARY_PATH": str(sim_lib), "GPU_SIM_STATE": str(state)}
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "telemetry.jsonl"), B_4090], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout.splitlines()[-1])
    assert said["warned"] == [f"GPU {B_4090} at 95 C, above 85 C"]  # once, when it first reads hot
    assert said["stops"] and said["stops"][0].startswith(f"GPU {B_4090} above 85 C for ")
    assert said["peak_c"] == 95
