"""Fixtures shared by every suite that needs provisioned test hosts: their inventory and one setup run.

setup.yml runs once per pytest session (twice, in fact: the first run and the timed no-change
re-run), whichever suite asks first.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest

from runner.inventory import Inventory, load_inventory
from runner.playbook import Run, run_playbook

A_3090TI = "GPU-3090ti00-0000-4000-8000-000000000001"
A_4090 = "GPU-40900000-0000-4000-8000-000000000002"
B_4090 = "GPU-40900000-0000-4000-8000-0000000000b1"
STANDING_W = {"th1": {A_3090TI: 300, A_4090: 350}, "th2": {B_4090: 300}}
SESSION_W = {"th1": {A_3090TI: 350, A_4090: 350}, "th2": {B_4090: 400}}
# Sessions and the venv in a root-owned tree the trainer user can traverse but not change.
SESSIONS_ROOT = "/var/lib/gpu-runner"
# The hosts have no internet: the controller builds the wheelhouse; CPU torch on simulated GPUs.
# The simulated NVML keeps its state in a file the supervisor's unit must be allowed to write.
GROUP_VARS = {"train_venv_source": "wheelhouse", "train_venv_torch_variant": "cpu",
              "train_session_python": f"{SESSIONS_ROOT}/venv/bin/python", "train_session_root": SESSIONS_ROOT}


@dataclass
class Setup:
    first: Run
    second: Run
    second_s: float


@pytest.fixture(scope="session")
def inventory(hosts, tmp_path_factory) -> Inventory:
    """The test hosts' inventory plus each host's power profiles."""
    folder = tmp_path_factory.mktemp("inventory")
    (folder / "hosts.ini").write_text(hosts.inventory)
    (folder / "group_vars").mkdir()
    (folder / "group_vars" / "all.yml").write_text(json.dumps(GROUP_VARS))
    (folder / "host_vars").mkdir()
    for name in hosts:
        profiles = {"gpu_power_standing_w": STANDING_W[name], "gpu_power_session_w": SESSION_W[name]}
        (folder / "host_vars" / f"{name}.yml").write_text(json.dumps(profiles))
    return load_inventory(str(folder / "hosts.ini"))


@pytest.fixture(scope="session")
def provisioned(inventory) -> Setup:
    """Setup run twice: the first run and the timed second (no-change) run."""
    start = time.monotonic()
    first = run_playbook("setup", inventory, inventory.hosts)
    first_s = time.monotonic() - start
    start = time.monotonic()
    second = run_playbook("setup", inventory, inventory.hosts)
    second_s = time.monotonic() - start
    print(f"setup on 2 hosts: first run {first_s:.0f} s, no-change re-run {second_s:.1f} s")
    return Setup(first, second, second_s)
