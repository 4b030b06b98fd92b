"""Least privilege on provisioned test hosts: the trainer runs as 'trainer' in a hardened unit, cannot
touch power, units or /etc, and a planted HF token appears in no log, artifact, status file or journal."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
from helpers import run_runner
from sessionkit import SESSIONS, TOKEN, assert_restored, limits

pytestmark = [pytest.mark.hosts, pytest.mark.slow]
EXPOSURE_LIMIT = 3.0  # systemd-analyze security: 'OK' is below 4.0; the trainer unit must score at most this


def as_trainer(host, cmd: str) -> subprocess.CompletedProcess:
    return host.ssh(f"runuser -u trainer -- {cmd}", check=False)


def exposure(host, unit: str) -> float:
    out = host.ssh(f"systemd-analyze security --no-pager {unit}", check=False).stdout
    return float(re.search(r"Overall exposure level for \S+: ([\d.]+)", out).group(1))


def test_trainer_user_cannot_cap_power_stop_units_or_write_etc(provisioned, hosts):
    th1 = hosts["th1"].serve_vllm()
    before = limits(th1)
    assert as_trainer(th1, "nvidia-smi -pl 200").returncode != 0
    assert limits(th1) == before
    assert as_trainer(th1, "systemctl stop vllm").returncode != 0
    assert th1.ssh("systemctl is-active vllm").stdout.strip() == "active"
    assert as_trainer(th1, "touch /etc/gpu-runner/owned").returncode != 0
    assert as_trainer(th1, f"touch {SESSIONS}/owned").returncode != 0
    assert as_trainer(th1, "cat /etc/gpu-runner/power.json").returncode == 0  # reading config is fine


def test_trainer_unit_is_hardened(provisioned, hosts):
    th2 = hosts["th2"]
    trainer = exposure(th2, "gpu-runner-trainer@probe.service")
    supervisor = exposure(th2, "gpu-runner-session@probe.service")
    print(f"systemd-analyze security: trainer unit {trainer}, session unit (root supervisor) {supervisor}")
    assert trainer <= EXPOSURE_LIMIT < supervisor


def test_session_trains_as_trainer_and_the_token_never_leaks(parallel, hosts, monkeypatch):
    """th2's part of the parallel session (conftest.py), started with TOKEN in the controller's environment."""
    th2, home, result, session = hosts["th2"], parallel.home, parallel.result, parallel.session
    monkeypatch.setenv("HOME", str(home))  # its ledger, for `runner status`
    monkeypatch.setenv("RUNNER_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    session_dir = f"{SESSIONS}/{session}"
    assert th2.ssh(f"stat -c %U {session_dir}/output {session_dir}/output/adapter").stdout.split() == \
        ["trainer", "trainer"]
    assert th2.ssh(f"stat -c %U {session_dir}").stdout.strip() == "root"
    unit_user = th2.ssh(f"systemctl show -p User --value gpu-runner-trainer@{session}.service").stdout.strip()
    assert unit_user == "trainer"
    assert TOKEN not in result.stdout + result.stderr
    local = subprocess.run(["grep", "-rl", TOKEN, str(home)], capture_output=True, text=True)
    assert local.stdout == "", f"token found in {local.stdout}"  # runs/, the ledger, ansible-runner artifacts
    for host in (th2, hosts["th1"]):
        remote = host.ssh(f"grep -rl {TOKEN} {SESSIONS} /var/log /root /tmp /home/trainer 2>/dev/null; "
                          f"journalctl --no-pager | grep -c {TOKEN}", check=False).stdout.split()
        assert remote == ["0"], f"token found on {host.name}: {remote}"
    status = json.loads(th2.ssh(f"cat {session_dir}/status.json").stdout)
    assert status["outcome"] == "succeeded"
    assert_restored(th2, vllm=False)
    assert os.environ["HF_TOKEN"] == TOKEN
    assert run_runner("status", session, "--json", cwd=home).returncode == 0
