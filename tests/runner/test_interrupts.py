"""Ctrl-C and finished sessions on localhost, through the CLI: Ctrl-C while staging, loading or training stops the
session, restores, records `interrupted` and exits 130, its last line saying how to resume; a finished session
is left as it is by `runner train --resume` and `runner stop`, and a Ctrl-C once it finished changes nothing.
(A session that finished without its controller: test_controller_faults.py.)"""

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, run_runner
from test_session_control import host_status, wait_for

from runner import ledger
from runner.host.lock import current_holder

DEMO = str(REPO / "examples" / "demo.yaml")
CTRL_C = "Ctrl-C on the controller"
pytestmark = pytest.mark.slow


class Controller:
    """`runner train` in a process group of its own, as a terminal runs it; stdout and stderr in one log."""

    def __init__(self, home: Path, max_steps: int):
        runner = str(Path(sys.executable).parent / "runner")
        self.log = home / "controller.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [runner, "train", DEMO, "--set", f"train.max_steps={max_steps}", "--set", "train.save_steps=5"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        line = wait_for(lambda: next((x for x in self.lines() if x.startswith("session ")), None), timeout=120)
        self.session = line.split()[1]

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def ctrl_c(self) -> None:
        """What a terminal does on Ctrl-C: SIGINT to the foreground process group."""
        os.killpg(self.process.pid, signal.SIGINT)

    def wait(self) -> int:
        return self.process.wait(timeout=900)


def assert_stopped_by_ctrl_c(home: Path, controller: Controller) -> dict:
    """Exit 130, `interrupted` in the ledger and on the host, the cause named, restored, the resume line last."""
    rc = controller.wait()
    lines = controller.lines()
    assert rc == 130, "\n".join(lines[-30:])
    assert ledger.get(controller.session).outcome == "interrupted"
    status = host_status(home)
    assert status["outcome"] == "interrupted" and status["error"] == CTRL_C, status
    assert status["restore"]["ok"], status["restore"]
    assert [line for line in lines if line.startswith("localhost: interrupted after ") and line.endswith(CTRL_C)]
    assert not [line for line in lines if "runner stop" in line], lines
    assert lines[-1] == f"Resume with: runner train --resume {controller.session}", lines[-30:]
    assert current_holder(home / "training" / "session.lock") is None  # the host is free again
    wait_for(lambda: not session_processes(home), timeout=120)
    return status


def session_processes(home: Path) -> str:
    """Supervisor and trainer processes of sessions under `home` (their command lines name the session folder)."""
    found = subprocess.run(["pgrep", "-af", f"{home}/training/sessions"], capture_output=True, text=True).stdout
    return found.strip()


def test_ctrl_c_while_staging_stops_the_session_before_it_trains(home, tiny_model):
    controller = Controller(home, max_steps=100000)
    controller.ctrl_c()  # the playbook is probing the host; no session folder there yet
    assert_stopped_by_ctrl_c(home, controller)


def test_ctrl_c_while_the_model_loads_stops_the_session(home, tiny_model):
    controller = Controller(home, max_steps=100000)
    wait_for(lambda: (s := host_status(home)).get("phase") == "train" and "trainer" not in s, timeout=600, poll=0.1)
    controller.ctrl_c()
    assert_stopped_by_ctrl_c(home, controller)


def test_ctrl_c_while_training_checkpoints_and_stops(home, tiny_model):
    controller = Controller(home, max_steps=100000)
    wait_for(lambda: (host_status(home).get("step") or 0) >= 3, timeout=600)
    controller.ctrl_c()
    status = assert_stopped_by_ctrl_c(home, controller)
    assert status["trainer_stopped"]["checkpoint"]  # the trainer saved where it stopped: a resume continues there


def results(home: Path, session: str) -> dict[str, str]:
    """sha256 of the adapter and metrics, on the host and in the run folder."""
    roots = (home / "training" / "sessions" / session, home / "runs" / session / "localhost")
    files = [p for root in roots for p in [root / "metrics.jsonl", *root.rglob("adapter/*")] if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_a_finished_session_is_left_as_it_is(home, tiny_model):
    controller = Controller(home, max_steps=20)
    wait_for(lambda: host_status(home).get("outcome") == "succeeded", timeout=600, poll=0.2)
    with contextlib.suppress(ProcessLookupError):  # it may have exited already
        controller.ctrl_c()  # the host has finished; the controller is restoring and fetching
    assert controller.wait() == 0, "\n".join(controller.lines()[-30:])  # exit code and ledger agree: succeeded
    session = controller.session
    assert ledger.get(session).outcome == "succeeded"
    before = results(home, session)
    assert len([f for f in before if "/runs/" in f]) >= 3  # the fetched adapter and metrics are among them

    stop_file = home / "training" / "sessions" / session / "STOP"
    stop_before = stop_file.stat().st_mtime_ns if stop_file.exists() else None
    resumed = run_runner("train", "--resume", session)
    assert resumed.returncode == 0, resumed.stderr
    assert f"session {session} is complete" in resumed.stderr and "nothing to resume" in resumed.stderr
    stopped = run_runner("stop", session)
    assert stopped.returncode == 0, stopped.stderr
    assert f"session {session} has already ended (localhost succeeded); nothing to stop" in stopped.stderr

    assert results(home, session) == before  # not retrained, not fetched again: byte for byte
    assert host_status(home)["outcome"] == "succeeded" and ledger.get(session).outcome == "succeeded"
    assert (stop_file.stat().st_mtime_ns if stop_file.exists() else None) == stop_before  # no stop request sent


def test_a_second_ctrl_c_leaves_the_hosts_to_finish_the_stop(home, tiny_model):
    controller = Controller(home, max_steps=100000)
    wait_for(lambda: (host_status(home).get("step") or 0) >= 3, timeout=600)
    controller.ctrl_c()
    wait_for(lambda: "localhost: stop requested; it checkpoints, then restores" in controller.lines(), timeout=300)
    controller.ctrl_c()
    assert controller.wait() == 130
    assert controller.lines()[-1].startswith(f"Left session {controller.session} stopping on its own")
    status = wait_for(lambda: (s := host_status(home)).get("outcome") not in (None, "running") and s, timeout=600)
    assert status["outcome"] == "interrupted" and status["error"] == CTRL_C and status["restore"]["ok"]
    listed = run_runner("status", controller.session, "--json")
    assert listed.returncode == 0 and '"outcome": "interrupted"' in listed.stdout, listed.stdout

