"""Controlling sessions on localhost: the laptop goes away, status/logs work, a resume while it runs is refused and
leaves the ledger as it was, stop works, resume finishes the job."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, run_runner

from runner import ledger

DEMO = str(REPO / "examples" / "demo.yaml")


def wait_for(predicate, timeout: float = 120, poll: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError("timed out waiting")


def host_status(home: Path) -> dict:
    files = list((home / "training" / "sessions").glob("*/status.json"))
    return json.loads(files[0].read_text()) if files else {}


@pytest.mark.slow
def test_controller_killed_then_status_logs_refused_resume_stop_and_resume(home, tiny_model):
    runner = str(Path(sys.executable).parent / "runner")
    args = [runner, "train", DEMO, "--set", "train.max_steps=300", "--set", "train.save_steps=5"]
    controller = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: (host_status(home).get("step") or 0) >= 8)
    controller.send_signal(signal.SIGKILL)  # the laptop disappears; its ansible-playbook goes with it (runner.guard)
    wait_for(lambda: subprocess.run(["pgrep", "-f", f"ansible-playbook.*{home}"], capture_output=True).returncode != 0)

    listed = json.loads(run_runner("status", "--json").stdout)
    assert [s["outcome"] for s in listed] == ["running"]  # the host carries on by itself
    session_id = listed[0]["id"]
    assert set(listed[0]) >= {"id", "hosts", "outcome", "started", "ended"}
    assert "step" in run_runner("logs", session_id).stdout

    refused = run_runner("train", "--resume", session_id)  # the host still trains it
    assert refused.returncode == 3, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if "refused" in line]
    assert len(lines) == 1 and f"session {session_id} is still running" in lines[0], refused.stderr
    entry = ledger.get(session_id)
    assert entry.outcome == "running" and entry.ended is None and entry.host_outcomes.get("localhost") != "refused"
    assert host_status(home)["outcome"] == "running"

    stopped = run_runner("stop", session_id)
    assert stopped.returncode == 130, stopped.stderr
    status = host_status(home)
    assert status["outcome"] == "interrupted" and status["trainer_stopped"]["checkpoint"]
    assert status["step"] < 300
    assert json.loads(run_runner("status", "--json").stdout)[0]["outcome"] == "interrupted"
    assert ledger.get(session_id).outcome == "interrupted"

    resumed = run_runner("train", "--resume", session_id)
    assert resumed.returncode == 0, resumed.stderr
    status = host_status(home)
    assert status["outcome"] == "succeeded" and status["step"] == 300
    assert status["loss"] == status["loss"] and status["loss"] < 100  # finite
    assert (Path(json.loads(run_runner("status", "--json").stdout)[0]["run_dir"]) / "localhost" / "adapter").exists()
