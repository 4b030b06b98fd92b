"""A trainer never outlives its session (the trainer as a child process: localhost, containers, CI).

The supervisor runs as `python -m runner.host session DIR` against simulated GPUs, where the trainer
counts as a GPU compute process (NVML lists it). Killing the supervisor or the launcher with SIGKILL
leaves no trainer behind and no adapter written afterwards; the restore confirms it through the
process table and NVML, and ends a stray trainer it finds before it hands the GPUs back.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from simhost import A_3090TI, A_4090, spec

from runner.spec import validate_spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="setting power limits needs root, like the driver")
LONG = {"max_steps": 50000, "save_steps": 20000}


def read_status(session: Path) -> dict:
    path = session / "status.json"
    return json.loads(path.read_text() or "{}") if path.exists() else {}


def trainer_pids(session: Path) -> list[int]:
    """Processes whose command line names the session's train.json: the guard, the launcher, the trainer."""
    found = subprocess.run(["pgrep", "-f", str(session / "train.json")], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def launcher_pid(session: Path) -> int:
    pattern = f"^[^ ]+ -m accelerate[.]commands[.]launch .*{session}/train.json"
    return int(subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=True).stdout.split()[0])


def wait_until(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while not (value := predicate()):
        assert time.time() < deadline, what
        time.sleep(0.2)
    return value


def start_training(host) -> tuple[Path, subprocess.Popen]:
    session = host.session_dir(spec(train=LONG))
    proc = subprocess.Popen([sys.executable, "-m", "runner.host", "session", str(session)])
    wait_until(lambda: read_status(session).get("step"), 180, "the trainer never reached a step")
    return session, proc


def restore(session: Path) -> dict:
    subprocess.run([sys.executable, "-m", "runner.host", "restore", str(session)], check=True, capture_output=True)
    return read_status(session)["restore"]


@pytest.mark.slow  # a session with a trainer; the launcher case below stays fast
def test_a_supervisor_killed_outright_takes_its_trainer_along(host):
    session, supervisor = start_training(host)
    supervisor.kill()
    supervisor.wait()
    wait_until(lambda: not trainer_pids(session), 120, f"trainer left running: {trainer_pids(session)}")
    time.sleep(3)
    assert not (session / "output" / "adapter").exists()
    record = restore(session)  # what the unit's stop hook and the playbook run after a supervisor died
    assert record["ok"] and record["trainer"] == "not running; no trainer process left (process table and NVML checked)"
    assert host.limits_w() == {A_3090TI: 450, A_4090: 450}


@pytest.mark.slow  # a session with a trainer; the stray-trainer restore below stays fast
def test_a_launcher_killed_outright_takes_its_trainer_along(host):
    session, supervisor = start_training(host)
    os.kill(launcher_pid(session), 9)
    rc = supervisor.wait(timeout=300)
    status = read_status(session)
    assert rc != 0 and status["outcome"] in ("failed", "interrupted"), status
    assert not trainer_pids(session) and not (session / "output" / "adapter").exists()
    assert status["restore"]["ok"] and "no trainer process left" in status["restore"]["trainer"]
    assert host.limits_w() == {A_3090TI: 450, A_4090: 450}


def test_the_restore_ends_a_stray_trainer_before_handing_the_gpus_back(host):
    session = host.session_dir(spec())
    (session / "status.json").write_text(json.dumps({"outcome": "running", "pid": 0, "started": time.time()}))
    # a trainer no guard watches (an older runner's): it names the session's train.json, so NVML lists it too
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(session / "train.json")])
    try:
        record = restore(session)
        ended = stray.poll()
    finally:
        stray.kill()
    assert ended == -15  # TERM was enough
    assert record["ok"] and record["trainer"].startswith(f"not running; ended stray trainer process(es) {stray.pid}")


@pytest.mark.slow  # the restore's TERM, then KILL, waits
def test_a_trainer_the_restore_cannot_end_keeps_inference_stopped_and_says_so():
    # The restore runs as 'nobody' here, so the root-owned stray trainer is beyond its reach (as a trainer of
    # another user's would be); inference must then stay stopped, loudly
    session = Path(tempfile.mkdtemp(prefix="orphan-")) / "sessions" / "s1"
    session.mkdir(parents=True)
    inference = {"service": "vllm", "mode": "stop", "health_url": "http://127.0.0.1:8000", "model_name": "tiny-chat"}
    job = {"session_id": "s1", "host": "localhost", "spec": validate_spec(spec(inference=inference)).model_dump(),
           "paths": {"model": "m", "dataset": "d"}}
    (session / "job.json").write_text(json.dumps(job))
    (session / "status.json").write_text(json.dumps({"outcome": "running", "pid": 0, "started": time.time(),
                                                     "inference_stopped_at": time.time()}))
    shutil.chown(session, "nobody")
    for path in (session.parent.parent, session.parent):
        path.chmod(0o755)
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(session / "train.json")])
    try:
        done = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-m",
                               "runner.host", "restore", str(session)], capture_output=True, text=True, timeout=300)
        alive = stray.poll() is None
    finally:
        stray.kill()
        shutil.rmtree(session.parent.parent, ignore_errors=True)
    assert alive and done.returncode == 1, done.stderr
    record = json.loads(done.stdout.splitlines()[-1])
    assert record["ok"] is False
    assert record["trainer"].startswith(f"FAILED: trainer process(es) {stray.pid} still running after SIGKILL")
    assert record["inference"] == "FAILED: vllm not started: the session's trainer is still running"
