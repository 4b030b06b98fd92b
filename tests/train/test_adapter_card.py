"""The adapter a user gets: adapter_config.json names the job's model (not the host's copy) and README.md is a
model card with the job, the data digest, the losses and the hardware; the host still serves and merges it."""

import hashlib
import json
import socket
from pathlib import Path

import pytest
import yaml
from conftest import DEMO_DATA
from launching import finish, launch

from runner.host import served_files
from runner.host.adapter_checks import check_unmerged, read_adapter
from runner.host.launch import trainer_config


def card_of(adapter: Path) -> tuple[dict, dict[str, str]]:
    """The card's YAML front matter, and its table rows (| key | value |) as a dict."""
    text = (adapter / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2 and cells[0]:
            rows[cells[0]] = cells[1].strip("`")
    return yaml.safe_load(front), rows


def base_of(folder: Path) -> str:
    return json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]


def test_the_adapter_names_the_jobs_model_and_its_card_says_what_was_trained(write_config, metrics, tmp_path):
    name = "acme/tiny-chat-base"  # as the job named it; the trainer reads the model from a folder on the host
    finish(launch(write_config({"max_steps": 6, "save_steps": 2}, base_model_name=name)))
    records = metrics()
    adapter = tmp_path / "output" / "adapter"
    assert base_of(adapter) == name
    assert [base_of(c) for c in sorted((tmp_path / "output").glob("checkpoint-*"))] == [name, name]

    front, rows = card_of(adapter)
    assert front["base_model"] == name and front["library_name"] == "peft" and "lora" in front["tags"]
    assert f"base_model:adapter:{name}" in front["tags"]
    assert rows["method"] == "lora" and rows["LoRA rank"] == "8" and rows["LoRA alpha"] == "16"
    assert float(rows["learning rate"]) == 0.005 and rows["steps"] == "6" and rows["max_seq_len"] == "128"
    assert rows["dataset"] == DEMO_DATA.name
    assert rows["dataset sha256"] == hashlib.sha256(DEMO_DATA.read_bytes()).hexdigest()
    assert int(rows["dataset records"]) == sum(1 for line in DEMO_DATA.read_text().splitlines() if line.strip())
    losses = {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}
    best = min(losses, key=losses.get)
    assert rows["steps done"] == "6"
    assert rows["first loss"] == f"{losses[1]:.4f} (step 1)" and rows["last loss"] == f"{losses[6]:.4f} (step 6)"
    assert rows["best loss"] == f"{losses[best]:.4f} (step {best})"
    assert rows["processes"] == "1" and rows["devices"] == f"1 × cpu on {socket.gethostname()}"
    took = records[-1]["time"] - records[0]["time"]
    assert abs(float(rows["training time"].split()[0]) - took) <= 1
    assert "eval loss" not in rows  # no eval section, no eval rows


@pytest.mark.slow  # a trainer process
def test_without_a_name_the_base_is_the_model_it_was_trained_from(two_step_run, tiny_model):
    assert base_of(two_step_run / "output" / "adapter") == str(tiny_model)


def test_the_host_hands_the_trainer_the_name_the_user_gave(tmp_path):
    spec = {"model": "./models/tiny-chat", "format": "auto", "method": "lora", "lora": {}, "train": {},
            "trust_remote_code": False}
    job = {"spec": spec, "paths": {"model": "/srv/training/sessions/S1/model", "dataset": "/d.jsonl"}}
    named = trainer_config({**job, "base_model_name": "/home/me/models/tiny-chat"}, tmp_path)
    assert named["model"] == "/srv/training/sessions/S1/model"
    assert named["base_model_name"] == "/home/me/models/tiny-chat"
    assert trainer_config(job, tmp_path)["base_model_name"] == "./models/tiny-chat"  # a job staged before the key


def test_the_host_serves_and_merges_it_from_its_own_copy_of_the_base(write_config, tmp_path, tiny_model, monkeypatch):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    users_path = "/home/someone/models/tiny-chat"  # the laptop's path: the host never had it
    session_dir = tmp_path / "training" / "sessions" / "S1"
    session_dir.mkdir(parents=True)
    config = write_config({"max_steps": 4, "learning_rate": 0.05}, base_model_name=users_path,
                          output_dir=str(session_dir / "output"))
    finish(launch(config))
    (session_dir / "job.json").write_text(json.dumps({"spec": {"method": "lora"}, "paths": {"model": str(tiny_model)}}))
    adapter = read_adapter(session_dir / "output" / "adapter", session_dir)
    assert base_of(adapter.path) == users_path and adapter.base == str(tiny_model)
    assert check_unmerged(adapter, str(tiny_model)) == 8
    monkeypatch.setattr(served_files, "SERVE_ROOT", tmp_path / "serve")
    merged = served_files.merge(adapter, "lora", tmp_path / "serve" / "S1" / "merged")
    ids = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter.path)(ids)
        got = AutoModelForCausalLM.from_pretrained(merged)(ids)
    assert torch.allclose(got.logits, expected.logits, atol=1e-4)


@pytest.mark.parametrize("folder", [False, True], ids=["file", "folder"])
def test_the_data_digest_covers_every_file(tmp_path, folder):
    from runner.train.card import data_digest

    lines = DEMO_DATA.read_text().splitlines(keepends=True)
    if folder:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "a.jsonl").write_text("".join(lines[:5]))
        (tmp_path / "data" / "b.jsonl").write_text("".join(lines[5:9]))
        digest = data_digest(str(tmp_path / "data"))
        listing = "".join(f"{hashlib.sha256((tmp_path / 'data' / n).read_bytes()).hexdigest()}  {n}\n"
                          for n in ("a.jsonl", "b.jsonl"))
        assert digest.records == 9 and digest.sha256 == hashlib.sha256(listing.encode()).hexdigest()
        (tmp_path / "data" / "b.jsonl").write_text("".join(lines[5:8]))
        assert data_digest(str(tmp_path / "data")).sha256 != digest.sha256  # a changed file changes the digest
    else:
        digest = data_digest(str(DEMO_DATA))
        assert digest.sha256 == hashlib.sha256(DEMO_DATA.read_bytes()).hexdigest()
    assert data_digest("HuggingFaceH4/no_robots").sha256 is None  # a hub id: read on the host, no bytes here


@pytest.mark.slow  # a trainer process
def test_the_card_gives_the_eval_loss_and_the_step_the_adapter_holds(write_config, metrics, tmp_path):
    finish(launch(write_config({"max_steps": 6, "learning_rate": 0.05}, eval={"split": 0.1, "every_steps": 2})))
    records = metrics()
    evals = {r["step"]: r["eval_loss"] for r in records if r.get("event") == "eval"}
    done = records[-1]
    _, rows = card_of(tmp_path / "output" / "adapter")
    best = min(evals, key=evals.get)
    assert sorted(evals) == [2, 4, 6] and rows["eval loss"] == f"{evals[6]:.4f} (step 6)"
    assert rows["best eval loss"] == f"{evals[best]:.4f} (step {best})"
    assert rows["adapter weights from step"] == str(done["adapter_step"]) == str(best)
    assert rows["eval examples"] == "20" and rows["examples trained on"].startswith("178 ")
    assert rows["dataset records"] == "198"  # the whole file: 178 trained on, 20 held out
    assert base_of(tmp_path / "output" / "adapter") == str(DEMO_DATA.parents[1] / "models" / "tiny-chat")


@pytest.mark.slow  # two DDP processes; test_card_rows.py renders two processes' rows in-process
def test_the_card_counts_every_process_of_the_job(two_process_run):
    _, rows = card_of(two_process_run / "output" / "adapter")
    assert rows["processes"] == "2" and rows["devices"] == f"2 × cpu on {socket.gethostname()}"
    assert rows["strategy"] == "ddp" and base_of(two_process_run / "output" / "adapter") == "acme/tiny-chat-base"
