"""Inventory variables renamed to their role's prefix: an inventory with the old names (psu_w, system_w, gpu_uuids,
hf_token) still works, on the control side (`runner power plan`) and in the roles (`runner setup`), and every
command prints one deprecation line per old name. Localhost with simulated GPUs (tests/gpu_sim)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO, run_runner

from runner.inventory import RENAMED

pytestmark = pytest.mark.slow

GPU_SIM = REPO / "tests" / "gpu_sim"
A_3090TI = "GPU-3090ti00-0000-4000-8000-000000000001"
A_4090 = "GPU-40900000-0000-4000-8000-000000000002"
OLD = ("psu_w", "system_w", "gpu_uuids", "hf_token")


@pytest.fixture
def sim_gpus(home, monkeypatch) -> None:
    """Host A's two simulated GPUs for localhost's NVML reads, with no process on them."""
    subprocess.run(["make", "-s", "-C", str(GPU_SIM)], check=True)
    state = json.loads((GPU_SIM / "profiles" / "a.json").read_text())
    state["processes"] = []  # the profile's patterns could match other processes on this machine
    (home / "gpu-state.json").write_text(json.dumps(state))
    monkeypatch.setenv("GPU_SIM_STATE", str(home / "gpu-state.json"))


def inventory(home, names: str, standing_w: dict) -> str:
    """A localhost inventory setting the PSU, the system share, the expected GPUs and a token by NAMES (old|new)."""
    values = {"psu_w": 1500, "system_w": 300, "gpu_uuids": json.dumps([A_3090TI, A_4090]), "hf_token": "hf_not_real"}
    pairs = " ".join(f"{name if names == 'old' else RENAMED[name]}='{value}'" for name, value in values.items())
    path = home / f"{names}.ini"
    path.write_text(f"localhost ansible_connection=local ansible_python_interpreter={sys.executable} "
                    f"gpu_facts_library={GPU_SIM}/build/libnvidia-ml.so.1 {pairs} "
                    f"gpu_power_standing_w='{json.dumps(standing_w)}'\n")
    return str(path)


def warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning: inventory variable")]


def test_old_names_plan_as_the_new_ones_with_one_warning_each(home, sim_gpus):
    standing = {A_3090TI: 300, A_4090: 350}
    old = run_runner("power", "plan", "-i", inventory(home, "old", standing), cwd=home)
    new = run_runner("power", "plan", "-i", inventory(home, "new", standing), cwd=home)
    assert (old.returncode, new.returncode) == (0, 0), old.stderr + new.stderr
    assert "localhost: PSU 1500 W" in new.stdout and "CPU + system: 300 W" in new.stdout
    assert old.stdout == new.stdout
    assert warnings(old.stderr) == [f"warning: inventory variable {name} is deprecated (localhost); rename it to "
                                    f"{RENAMED[name]}" for name in OLD]  # once each, though plan loads it twice
    assert warnings(new.stderr) == []
    assert "hf_not_real" not in old.stderr + old.stdout


@pytest.mark.parametrize("names", ["old", "new"])
def test_setup_refuses_by_either_name_of_the_psu_without_change(home, sim_gpus, names):
    # No standing profile: both GPUs at their 450 W default peak over 1500 W x 0.9
    done = run_runner("setup", "-i", inventory(home, names, {}), "--check", "--tags", "power", cwd=home)
    assert done.returncode == 3, done.stderr
    assert "localhost: the standing limits do not fit the 1500 W PSU" in done.stderr
    assert len(warnings(done.stderr)) == (len(OLD) if names == "old" else 0)
