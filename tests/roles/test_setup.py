"""setup.yml on two booted test hosts (simulated GPUs, real systemd, real vLLM): idempotence, check mode,
standing limits after a reboot, refusals that change nothing, accelerate's own loader, strict unit checks."""

from __future__ import annotations

import subprocess

import pytest
from provisioning import STANDING_W

from runner.playbook import run_playbook

pytestmark = pytest.mark.hosts

UNITS = ("gpu-power@standing.service", "gpu-runner-session@t1.service")


def test_second_setup_changes_nothing(provisioned, inventory):
    for host in inventory.hosts:
        assert provisioned.second.changed(host) == 0, host
    assert provisioned.first.changed() > 0  # its duration is printed (tests/provisioning.py), never asserted


def test_check_diff_on_provisioned_hosts_changes_nothing(provisioned, inventory):
    run = run_playbook("setup", inventory, inventory.hosts, check=True)
    assert run.changed() == 0


def test_standing_limits_come_back_after_reboot(provisioned, hosts):
    hosts["th1"].reboot()
    gpus = hosts["th1"].gpu_state()["gpus"]
    assert {g["uuid"]: g["power_limit_w"] for g in gpus} == STANDING_W["th1"]
    assert all(g["persistence_mode"] == 1 for g in gpus)


def _host_config(host) -> str:
    return host.ssh("cat /etc/gpu-runner/power.json; nvidia-smi --query-gpu=uuid,power.limit --format=csv").stdout


@pytest.mark.parametrize(("host", "override", "message"), [
    ("th2", {"gpu_power_standing_w": {"GPU-40900000-0000-4000-8000-0000000000b1": 700}},
     "th2: standing limit 700 W for GPU GPU-40900000-0000-4000-8000-0000000000b1 (NVIDIA GeForce RTX 4090) "
     "is outside its allowed range 150-600 W"),
    ("th1", {"gpu_power_standing_w": {}}, "th1: the standing limits do not fit the 1500 W PSU"),
])
def test_bad_power_profiles_are_refused_without_change(provisioned, hosts, inventory, host, override, message):
    before = _host_config(hosts[host])
    run = run_playbook("setup", inventory, [host], extravars=override, raise_on_failure=False)
    assert run.status == "failed"
    assert message in run.failures[host]
    assert run.changed(host) == 0
    assert _host_config(hosts[host]) == before


@pytest.mark.parametrize(("host", "processes", "distributed"), [("th1", 2, "MULTI_GPU"), ("th2", 1, "NO")])
def test_accelerate_config_loads_with_accelerate(provisioned, hosts, tmp_path, host, processes, distributed):
    from accelerate.commands.config.config_args import load_config_from_file

    path = tmp_path / "default_config.yaml"
    path.write_text(hosts[host].ssh("cat /root/.cache/huggingface/accelerate/default_config.yaml").stdout)
    config = load_config_from_file(str(path))
    assert config.num_processes == processes
    assert str(config.distributed_type).endswith(distributed)
    assert str(config.mixed_precision).endswith("bf16")  # cc 8.6 and 8.9


@pytest.mark.parametrize("unit", UNITS)
def test_units_pass_strict_systemd_verify(provisioned, hosts, unit):
    for host in hosts.values():
        result = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={host.root}", unit],
                                capture_output=True, text=True)
        assert (result.returncode, result.stdout + result.stderr) == (0, ""), host.name


def test_training_venv_runs_the_controllers_runner(provisioned, hosts):
    import runner

    out = hosts["th2"].ssh("/var/lib/gpu-runner/venv/bin/python -c 'import runner, torch; print(runner.__version__)'")
    assert out.stdout.strip() == runner.__version__


def test_runner_hosts_reports_what_setup_recorded(provisioned, inventory):
    from helpers import run_runner

    import runner

    done = run_runner("hosts", "-i", str(inventory.path))
    assert done.returncode == 0, done.stderr
    th2 = next(line for line in done.stdout.splitlines() if line.startswith("th2:"))
    assert f"runner {runner.__version__}" in th2 and "PSU headroom (standing)" in th2  # power.json was read


def test_setup_of_one_part_runs_only_that_part(provisioned, inventory):
    roles = set()

    def on_event(event: dict) -> None:
        data = event.get("event_data", {})  # Ansible checks every role's arguments whatever the tags: not work
        if event.get("event") in ("runner_on_ok", "runner_on_changed") and \
                not data.get("task", "").startswith("Validating arguments"):
            roles.add(data.get("role"))

    run = run_playbook("setup", inventory, inventory.hosts, on_event=on_event, tags=("power",))
    assert run.changed() == 0  # provisioned already
    assert roles <= {"gpu_facts", "train_venv", "gpu_power"} and "gpu_power" in roles
