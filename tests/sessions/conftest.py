"""A session several tests on the provisioned test hosts read, started once per test session."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from sessionkit import TOKEN, job_file, session_of, train


@dataclass(frozen=True)
class Finished:
    home: Path  # the controller's HOME: its ledger and runs/
    result: subprocess.CompletedProcess
    session: str


@pytest.fixture(scope="session")
def parallel(provisioned, inventory, hosts, tmp_path_factory) -> Finished:
    """One session on th1 and th2 in parallel, HF_TOKEN planted: th1 serves (its vLLM must stop for the session);
    th2's unit exists but is not running, so stays stopped."""
    home = tmp_path_factory.mktemp("parallel") / "home"
    home.mkdir()
    with pytest.MonkeyPatch.context() as env:  # as the `home` fixture has it
        env.setenv("HOME", str(home))
        env.setenv("RUNNER_DATA_DIR", str(home / "data"))
        env.setenv("HF_TOKEN", TOKEN)
        hosts["th1"].serve_vllm()
        started = time.monotonic()
        result = train(job_file(home, vllm=True, max_steps=30), inventory, "th1,th2", cwd=home)
    print(f"th1 and th2 in parallel: wall {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, result.stderr
    return Finished(home, result, session_of(result))
