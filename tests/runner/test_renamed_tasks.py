"""Renaming the playbooks' tasks changes nothing the CLI reads: every answer comes by its tag (runner/host/answers.py).

The CLI's commands run here in-process against a copy of the repository's Ansible content in which every play and
task has a new name, on the embedded localhost default.
"""

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from helpers import REPO

from runner import __version__, ledger, playbook
from runner.commands import clean, hosts, serve, session, train
from runner.host import answers
from runner.inventory import load_inventory


@pytest.fixture
def renamed(tmp_path, monkeypatch) -> Path:
    """A copy of the Ansible content with every play and task renamed; run_playbook runs it instead."""
    copy = tmp_path / "renamed"
    for name in ("playbooks", "roles", "library", "templates"):
        shutil.copytree(REPO / name, copy / name)
    shutil.copy(REPO / "ansible.cfg", copy / "ansible.cfg")
    names = 0
    for path in [*copy.glob("playbooks/*.yml"), *copy.glob("roles/*/tasks/*.yml")]:
        text, count = re.subn(r"^(\s*- name: )", r"\1Renamed ", path.read_text(), flags=re.M)
        path.write_text(text)
        names += count
    assert names > 50
    monkeypatch.setattr(playbook, "REPO_ROOT", copy)
    return copy


@pytest.fixture
def finished(home) -> ledger.Entry:
    """A session that ran on localhost, as its host folder and the ledger have it (interrupted at step 3)."""
    session_dir = home / "training" / "sessions" / "S1"
    (session_dir / "output" / "checkpoint-3").mkdir(parents=True)
    (session_dir / "output" / "checkpoint-3" / "optimizer.pt").write_bytes(b"o" * 4096)
    (session_dir / "job.json").write_text(json.dumps({"paths": {"model": "/opt/m", "dataset": "/opt/d.jsonl"}}))
    (session_dir / "status.json").write_text(json.dumps({"outcome": "interrupted", "phase": "train", "step": 3,
                                                         "total_steps": 9, "ended": time.time() - 60}))
    (session_dir / "train.log").write_text("step 1 loss 5.0\nstep 3 loss 4.0\n")
    entry = ledger.Entry("S1", ["localhost"], str(home / "job.yaml"), None, time.time() - 120, str(home / "runs"))
    ledger.record(entry)
    return entry


@pytest.mark.slow
def test_every_answer_reaches_the_cli_whatever_its_task_is_called(renamed, finished, home, capsys):
    inventory = load_inventory(None)
    report = hosts.gather(None, None)["localhost"]
    assert report["venv"]["runner_version"] == __version__ and "gpus" in report and "gpu_runner" not in report
    assert train.probe_hosts(inventory, ["localhost"])["localhost"]["training_root"] == str(home / "training")

    assert session.status("S1", as_json=True) == 0
    listed = json.loads(capsys.readouterr().out)[0]
    assert listed["outcome"] == "interrupted" and listed["by_host"]["localhost"]["step"] == 3
    assert session.logs("S1", follow=False) == 0
    assert capsys.readouterr().out.splitlines() == ["step 1 loss 5.0", "step 3 loss 4.0"]
    took = session.host_results(finished, "stop", answers.STOP)
    assert took["localhost"]["outcome"] == "interrupted" and (home / "training" / "sessions" / "S1" / "STOP").exists()

    assert clean.clean("S1", None, None, None, dry_run=True) == 0
    assert "localhost: session S1: output/checkpoint-3/ (" in capsys.readouterr().out
    if not Path("/etc/gpu-runner/inference.json").exists():
        assert serve.list_served(inventory, ["localhost"], as_json=True) == 0
        assert json.loads(capsys.readouterr().out)["localhost"]["mode"] == "none"
