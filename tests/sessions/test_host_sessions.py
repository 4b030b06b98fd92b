"""Sessions on provisioned test hosts (real systemd, SSH, vLLM; simulated GPUs), including the faults.

After every session: the standing limits are back (read through NVML), vLLM is healthy where it was
serving, status.json has the right outcome, and nothing of ours is left running.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from helpers import run_runner
from provisioning import STANDING_W
from sessionkit import (
    SESSIONS,
    Background,
    assert_restored,
    host_status,
    job_file,
    limits,
    session_of,
    train,
    wait_for_step,
)

pytestmark = [pytest.mark.hosts, pytest.mark.slow]


def test_session_caps_stops_vllm_trains_and_restores(parallel, hosts):
    """th1's part of the parallel session (conftest.py)."""
    th1, home, result, session = hosts["th1"], parallel.home, parallel.result, parallel.session
    status = host_status(th1, session)
    phases = {p["name"]: p for p in status["phases"]}
    assert status["outcome"] == "succeeded" and status["restore"]["ok"]
    assert status["power_session_w"] == {"GPU-3090ti00-0000-4000-8000-000000000001": 350,
                                         "GPU-40900000-0000-4000-8000-000000000002": 350}
    assert "stopped vllm" in phases["inference"]["detail"] and "GPUs free" in phases["inference"]["detail"]
    assert status["trainer"]["world_size"] == 2  # both (simulated) GPUs, from the rendered accelerate config
    overhead_s = phases["train"]["started"] - status["started"]
    print(f"th1 session: overhead before launch {overhead_s:.1f} s; "
          f"inference downtime {status['summary'].get('inference_downtime_s', 0):.0f} s")
    assert (home / "runs" / session / "th1" / "adapter" / "adapter_config.json").exists()
    assert "max" in result.stdout and "instant (limit 350 W)" in result.stdout
    assert_restored(th1, vllm=True)


def test_two_hosts_train_in_parallel(parallel, hosts):
    for name in ("th1", "th2"):
        assert host_status(hosts[name], parallel.session)["outcome"] == "succeeded"
        assert_restored(hosts[name], vllm=name == "th1")
    assert hosts["th2"].ssh("systemctl is-active vllm", check=False).stdout.strip() == "inactive"


def test_a_killed_trainer_still_restores(provisioned, inventory, hosts, home):
    """The trainer dies: the supervisor restores (a killed supervisor or launcher: test_session_faults.py)."""
    th2 = hosts["th2"]
    controller = Background(job_file(home, vllm=False, max_steps=100000), inventory, "th2", home)
    wait_for_step(th2, controller.session, 3)
    assert limits(th2) != STANDING_W["th2"]  # capped for the session
    th2.ssh("pkill -KILL -f 'runner[.]train'")
    assert controller.wait() != 0
    status = host_status(th2, controller.session)
    assert status["outcome"] == "failed" and status["restore"]["ok"]
    assert_restored(th2, vllm=False)


def test_controller_killed_host_finishes_and_restores(provisioned, inventory, hosts, home):
    th2 = hosts["th2"]
    controller = Background(job_file(home, vllm=False, max_steps=60), inventory, "th2", home)
    session = controller.session
    wait_for_step(th2, session, 2)
    controller.kill()
    deadline = time.time() + 120  # ansible-playbook and its workers end with the controller (runner.guard)
    while subprocess.run(["pgrep", "-f", f"ansible-playbook.*{home}"], capture_output=True).returncode == 0:
        assert time.time() < deadline, "ansible-playbook outlived the killed controller"
        time.sleep(1)
    deadline = time.time() + 300
    while host_status(th2, session)["outcome"] == "running" and time.time() < deadline:
        time.sleep(2)
    listed = json.loads(run_runner("status", session, "--json", cwd=home).stdout)
    assert listed[0]["outcome"] == "succeeded"
    assert_restored(th2, vllm=False)


def test_reboot_mid_session_then_resume(provisioned, inventory, hosts, home):
    th2 = hosts["th2"]
    # th2 trains ~16 steps/s: 200 steps leave the reboot ~10 s to land before the last one
    controller = Background(job_file(home, vllm=False, max_steps=200, train={"save_steps": 10}), inventory, "th2",
                            home)
    session = controller.session
    wait_for_step(th2, session, 12)
    th2.reboot()
    controller.wait()
    assert limits(th2) == STANDING_W["th2"]  # the boot unit re-applied the standing profile
    listed = json.loads(run_runner("status", session, "--json", cwd=home).stdout)
    assert listed[0]["outcome"] == "interrupted"
    resumed = run_runner("train", "--resume", session, cwd=home, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    status = host_status(th2, session)
    assert status["outcome"] == "succeeded" and status["step"] == 200
    assert_restored(th2, vllm=False)


def test_second_concurrent_session_is_refused(provisioned, inventory, hosts, home):
    th2 = hosts["th2"]
    first = Background(job_file(home, vllm=False, max_steps=100000), inventory, "th2", home)
    session = first.session
    wait_for_step(th2, session, 2)
    second = train(job_file(home, vllm=False), inventory, "th2", cwd=home)
    assert second.returncode == 3 and session in second.stderr and "since" in second.stderr
    assert run_runner("stop", session, cwd=home).returncode == 130
    first.wait()
    assert_restored(th2, vllm=False)


def test_inference_that_never_frees_the_gpu_refuses_the_session(provisioned, inventory, hosts, home):
    th1 = hosts["th1"].serve_vllm()
    th1.ssh("systemd-run --unit=rogue-gpu-user python3 -c 'import time; time.sleep(600)' vllm-rogue")
    try:
        result = train(job_file(home, vllm=True, inference={"free_timeout_s": 3}),
                       inventory, "th1", cwd=home)
        pid = th1.ssh("systemctl show -p MainPID --value rogue-gpu-user").stdout.strip()
    finally:
        th1.ssh("systemctl stop rogue-gpu-user", check=False)
    assert result.returncode == 3 and "still busy" in result.stderr and pid in result.stderr
    status = host_status(th1, session_of(result))
    assert status["outcome"] == "refused" and status["restore"]["ok"]
    assert_restored(th1, vllm=True)


def test_inference_that_does_not_come_back_is_loud(provisioned, inventory, hosts, home):
    th1 = hosts["th1"].serve_vllm()
    dropin = "/etc/systemd/system/vllm.service.d/zz-broken.conf"
    controller = Background(
        job_file(home, vllm=True, max_steps=100000, inference={"health_timeout_s": 5}), inventory, "th1", home)
    session = controller.session
    wait_for_step(th1, session, 2)
    th1.ssh(f"mkdir -p {Path(dropin).parent} && printf '[Service]\\nExecStart=\\nExecStart=/bin/false\\n' > {dropin}"
            " && systemctl daemon-reload")
    try:
        run_runner("stop", session, cwd=home)
        controller.wait()
        assert controller.process.returncode != 0
        status = host_status(th1, session)
        assert status["restore"]["ok"] is False and "not healthy" in status["restore"]["inference"]
        assert limits(th1) == STANDING_W["th1"]  # power is restored even when inference is not
    finally:
        th1.ssh(f"rm -f {dropin} && systemctl daemon-reload && systemctl restart vllm")
    assert_restored(th1, vllm=True)


HOST_BAD_INPUT = [
    ("limit_below_range", {"power": {"limit_w": 50}}, "outside its allowed range"),
    ("limit_above_range", {"power": {"limit_w": 700}}, "outside its allowed range"),
    ("budget_over_psu", {"power": {"limit_w": 480}}, "does not fit the PSU"),
    ("unknown_gpu_uuid", {"power": {"limit_w": {"GPU-deadbeef-0000-4000-8000-000000000000": 300}}},
     "is not on this host"),
    ("model_missing_on_host", {"model": "/opt/models/no-such-model"}, "does not exist on this host"),
    ("dataset_missing_on_host", {"dataset": "/srv/no-such-data.jsonl"}, "does not exist on this host"),
    # the trainer's own probe of the model folder, in the host's training venv, before staging
    ("lora_rank_above_hidden_size", {"lora": {"rank": 256}}, "lora.rank 256 is larger than the model's hidden size"),
]


@pytest.mark.parametrize(("name", "change", "message"), HOST_BAD_INPUT, ids=[c[0] for c in HOST_BAD_INPUT])
def test_bad_input_is_refused_with_one_line_and_no_change(provisioned, inventory, hosts, home, name, change, message):
    th1 = hosts["th1"]
    snapshot = f"nvidia-smi --query-gpu=uuid,power.limit --format=csv; ls -R {SESSIONS}; " \
               "systemctl is-active vllm; ls /etc/systemd/system"
    before = th1.ssh(snapshot, check=False).stdout
    result = train(job_file(home, vllm=True, **change), inventory, "th1", cwd=home)
    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if "refused" in line]
    assert len(errors) == 1 and message in errors[0]
    assert th1.ssh(snapshot, check=False).stdout == before


def test_a_gpu_the_inventory_expects_but_the_host_lacks_is_refused(provisioned, inventory, hosts, home):
    import shutil

    folder = home / "inventory"
    shutil.copytree(inventory.path.parent, folder)
    host_vars = folder / "host_vars" / "th2.yml"
    expected = {**json.loads(host_vars.read_text()), "gpu_uuids": ["GPU-40900000-0000-4000-8000-0000000000b9"]}
    host_vars.write_text(json.dumps(expected))
    before = hosts["th2"].ssh(f"ls -R {SESSIONS}").stdout
    result = run_runner("train", str(job_file(home, vllm=False)), "-i", str(folder / "hosts.ini"), "--hosts", "th2",
                        cwd=home)
    assert result.returncode == 3 and "0000000000b9 from the inventory is not on this host" in result.stderr
    assert hosts["th2"].ssh(f"ls -R {SESSIONS}").stdout == before
