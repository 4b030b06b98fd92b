"""Faults on provisioned test hosts: a trainer never outlives its session, and two sessions started at
once never both stage (the loser is refused before anything lands on the host)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from provisioning import STANDING_W
from sessionkit import SESSIONS, Background, assert_restored, host_status, job_file, limits, wait_for_step

pytestmark = [pytest.mark.hosts, pytest.mark.slow]


@pytest.mark.parametrize(("victim", "outcomes"), [
    ("runner[.]host session", {"interrupted"}),  # the supervisor: its unit's stop hook restores
    ("^[^ ]+ -m accelerate[.]commands[.]launch", {"failed", "interrupted"}),  # the trainer unit's guard ends it
], ids=["supervisor", "launcher"])
def test_a_trainer_killed_outright_leaves_no_trainer_running(provisioned, inventory, hosts, home, victim, outcomes):
    th2 = hosts["th2"]
    controller = Background(job_file(home, vllm=False, max_steps=100000), inventory, "th2", home)
    session = controller.session
    wait_for_step(th2, session, 3)
    assert limits(th2) != STANDING_W["th2"]  # capped for the session
    th2.ssh(f"pkill -KILL -f '{victim}'")
    assert controller.wait() != 0
    status = host_status(th2, session)
    assert status["outcome"] in outcomes and status["restore"]["ok"], status
    assert "no trainer process left (process table and NVML checked)" in status["restore"]["trainer"]
    assert_restored(th2, vllm=False)  # no supervisor, launcher or trainer process on the host
    time.sleep(5)
    assert th2.ssh(f"ls {SESSIONS}/{session}/output").stdout.split().count("adapter") == 0  # no orphan wrote one


def test_two_sessions_started_at_once_one_runs_and_the_other_leaves_no_trace(provisioned, inventory, hosts, home):
    th2 = hosts["th2"]
    job = job_file(home, vllm=False, max_steps=10)
    runner = str(Path(sys.executable).parent / "runner")
    logs = [home / f"controller-{n}.log" for n in (1, 2)]
    procs = [subprocess.Popen([runner, "train", str(job), "-i", str(inventory.path), "--hosts", "th2"],
                              cwd=home, stdout=log.open("w"), stderr=subprocess.STDOUT) for log in logs]
    codes = [proc.wait(timeout=900) for proc in procs]
    assert sorted(codes) == [0, 3], [log.read_text()[-3000:] for log in logs]
    winner, loser = (logs[0], logs[1]) if codes[0] == 0 else (logs[1], logs[0])
    ids = [next(line.split()[1] for line in log.read_text().splitlines() if line.startswith("session ")) for log in
           (winner, loser)]
    refused = [line for line in loser.read_text().splitlines() if "refused" in line]
    assert len(refused) == 1 and f"session {ids[0]}" in refused[0], loser.read_text()
    assert th2.ssh(f"test -e {SESSIONS}/{ids[1]}", check=False).returncode != 0  # no token, model or data copy
    assert host_status(th2, ids[0])["outcome"] == "succeeded"
    assert_restored(th2, vllm=False)
