"""Read-only listings on the embedded localhost default, as a new user first meets them."""

import json
from pathlib import Path

import pytest
from helpers import run_runner

from runner import __version__


def test_hosts_names_the_runner_that_runs_sessions_here(home):
    done = run_runner("hosts")
    assert done.returncode == 0, done.stderr
    title = done.stdout.splitlines()[0]
    assert f"runner {__version__}" in title and "not installed" not in title, done.stdout


@pytest.mark.skipif(Path("/etc/gpu-runner/inference.json").exists(), reason="this machine has an inference server")
def test_serve_list_without_an_inference_server_is_an_answer_not_a_refusal(home):
    done = run_runner("serve", "--list")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("localhost: no inference server to list (") and "is missing" in done.stdout
    listed = json.loads(run_runner("serve", "--list", "--json").stdout)
    assert listed["localhost"]["mode"] == "none"
