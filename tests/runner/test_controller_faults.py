"""The controller's faults on localhost: a killed `runner train` leaves nothing running on this machine, the host
finishes and a later `--resume` says complete. (A refused `--resume` of a session that still runs leaves the ledger
as it was: test_session_control.py.)"""

import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, run_runner
from test_interrupts import results
from test_session_control import host_status, wait_for

from runner import ledger

DEMO = str(REPO / "examples" / "demo.yaml")
pytestmark = pytest.mark.slow


def start_train(home: Path, max_steps: int) -> subprocess.Popen:
    runner = str(Path(sys.executable).parent / "runner")
    args = [runner, "train", DEMO, "--set", f"train.max_steps={max_steps}", "--set", "train.save_steps=10"]
    controller = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for(lambda: (host_status(home).get("step") or 0) >= 2)
    return controller


def ansible_of(home: Path) -> str:
    """ansible-playbook processes (and their guards) of runs whose data dir is under `home`."""
    found = subprocess.run(["pgrep", "-af", f"ansible-playbook.*{home}"], capture_output=True, text=True).stdout
    return found.strip()


def test_a_killed_controller_leaves_nothing_running_here_and_a_resume_then_says_complete(home, tiny_model,
                                                                                         monkeypatch):
    token = "hf_planted" + secrets.token_hex(12)
    monkeypatch.setenv("HF_TOKEN", token)
    controller = start_train(home, max_steps=40)
    assert ansible_of(home) and list((home / "data" / "secrets").iterdir())  # following; the token file is handed over
    controller.kill()  # SIGKILL: no handler, no cleanup of its own; the laptop goes away, the host trains on
    controller.wait()
    wait_for(lambda: not ansible_of(home), timeout=120)  # ansible-playbook and its workers ended with it
    assert not list((home / "data" / "secrets").iterdir())  # and the token file with them
    status = wait_for(lambda: (s := host_status(home)).get("outcome") not in (None, "running") and s, timeout=600)
    assert status["outcome"] == "succeeded" and status["restore"]["ok"]  # the host finished on its own
    assert not [p for p in home.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]

    session = ledger.sessions()[0].id
    assert ledger.get(session).outcome == "running"  # nobody recorded the end
    before = results(home, session)
    resumed = run_runner("train", "--resume", session)
    assert resumed.returncode == 0 and f"session {session} is complete" in resumed.stderr, resumed.stderr
    assert results(home, session) == before
    assert ledger.get(session).outcome == "succeeded"  # the ledger now knows

