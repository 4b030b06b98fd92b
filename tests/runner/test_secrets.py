"""No command writes a secret to disk: a planted HF_TOKEN is in no file that any command leaves behind."""

import json
import secrets

import pytest
from helpers import REPO, run_runner

DEMO = str(REPO / "examples" / "demo.yaml")


@pytest.mark.slow
def test_a_planted_token_is_in_no_file_any_command_writes(home, tiny_model, monkeypatch):
    token = "hf_planted" + secrets.token_hex(12)
    monkeypatch.setenv("HF_TOKEN", token)
    assert run_runner("train", DEMO, "--dry-run").returncode == 0
    trained = run_runner("train", DEMO, "--set", "train.max_steps=2", "--set", "train.save_steps=1")
    assert trained.returncode == 0, trained.stderr
    session = json.loads(run_runner("status", "--json").stdout)[0]["id"]
    for args in (("status", session), ("logs", session), ("stop", session), ("attach", session), ("hosts",),
                 ("power", "plan"), ("setup", "--check"), ("serve", "--list")):
        run_runner(*args)  # some refuse here (no GPU, no inference server): they still run their playbooks

    ran = {path.parents[2].name.split("-")[2] for path in (home / "data" / "ansible").glob("*/artifacts/*/command")}
    assert {"train", "probe", "session", "hosts", "setup", "serve"} <= ran  # the grep below sees every playbook
    assert list((home / "training" / "sessions" / session / "output").glob("checkpoint-*"))  # the host side too
    leaked = [str(p) for p in home.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert leaked == []
