"""Model and data problems are refused by the host's preflight, before anything changes.

The checks run as a real host runs them: `python -m runner.host check ROOT` (the playbook's check before
staging, the job on stdin) and `python -m runner.host session DIR` (the supervisor, before power is capped),
each of which runs the trainer's own probe (`python -m runner.train.probe`) in this venv, against the tiny
model folder on disk and the bad-data corpus in tests/train/bad_data.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO
from simhost import A_3090TI, A_4090, phase, spec

from runner.host.trainlog import trainer_error_line
from runner.progress import data_line
from runner.spec import validate_spec

BAD_DATA = REPO / "tests" / "train" / "bad_data"
DEMO = REPO / "examples" / "data" / "demo.jsonl"
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="sessions set power limits, which needs root")


def check(host, job_spec: dict, model: Path | None = None, dataset: Path = DEMO) -> subprocess.CompletedProcess:
    """The playbook's preflight before staging, as it runs it."""
    job = {"session_id": "s1", "host": "localhost", "spec": validate_spec(job_spec).model_dump(),
           "paths": {"model": str(model or host.model), "dataset": str(dataset)}}
    return subprocess.run([sys.executable, "-m", "runner.host", "check", str(host.root)], input=json.dumps(job),
                          capture_output=True, text=True, timeout=900)


def model_copy(tiny_model: Path, folder: Path, change) -> Path:
    """A copy of the tiny model folder with one thing changed."""
    shutil.copytree(tiny_model, folder)
    change(folder)
    return folder


def without_chat_template(folder: Path) -> None:
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def with_model_type(model_type: str):
    def change(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": model_type}))
    return change


BAD_CASES = [
    ("alpaca_as_chat", {"format": "chat"}, BAD_DATA / "alpaca_as_chat.jsonl", None,
     "alpaca_as_chat.jsonl:1: format is chat but the record has keys ['input', 'instruction', 'output']"),
    ("misspelled_role", {"format": "auto"}, BAD_DATA / "misspelled_role.jsonl", None,
     "misspelled_role.jsonl:2: turn 2 has role 'assistent'; known roles: system, user, assistant"),
    ("null_assistant_content", {"format": "auto"}, BAD_DATA / "null_assistant.jsonl", None,
     "null_assistant.jsonl:1: turn 2 (assistant) has no content (null or missing)"),
    ("response_beyond_max_seq_len", {"format": "auto"}, BAD_DATA / "response_beyond_max_seq_len.jsonl", None,
     "no record has response tokens within max_seq_len 128"),
    ("qlora_without_bitsandbytes", {"method": "qlora"}, DEMO, None, "method qlora needs bitsandbytes"),
    ("rank_above_hidden_size", {"lora": {"rank": 256}}, DEMO, None,
     "lora.rank 256 is larger than the model's hidden size 128"),
    ("varlen_without_cuda", {"train": {"attention": "varlen"}}, DEMO, None, "train.attention varlen needs a CUDA GPU"),
    ("chat_without_template", {"format": "chat"}, DEMO, without_chat_template,
     "chat data needs a tokenizer with a chat template"),
    ("unknown_model_type", {}, DEMO, with_model_type("no_such_family"), "transformers cannot read its config"),
    ("not_a_causal_lm", {}, DEMO, with_model_type("vit"), "has no causal-LM class for model type 'vit'"),
]


# Through `runner.host check` in the fast tier: one data and one model case (the probe alone refuses every case
# in-process in test_preflight_probe.py; the rest of these run in the slow tier)
FAST_CASES = {"misspelled_role", "not_a_causal_lm"}


@pytest.mark.parametrize(("name", "change", "dataset", "model_change", "message"),
                         [pytest.param(*c, marks=[pytest.mark.slow] * (c[0] not in FAST_CASES)) for c in BAD_CASES],
                         ids=[c[0] for c in BAD_CASES])
def test_check_before_staging_refuses_with_one_line(host, tmp_path, name, change, dataset, model_change, message):
    if name == "qlora_without_bitsandbytes" and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("bitsandbytes is installed here")
    if name == "varlen_without_cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    model = model_copy(host.model, tmp_path / "model", model_change) if model_change else None
    before = sorted(p.name for p in host.root.rglob("*")) if host.root.exists() else []
    result = check(host, spec(**change), model=model, dataset=dataset)
    assert result.returncode == 3, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refused: ") and message in lines[0], lines
    assert (sorted(p.name for p in host.root.rglob("*")) if host.root.exists() else []) == before
    assert host.limits_w() == {A_3090TI: 450, A_4090: 450}


@pytest.mark.slow  # two processes; test_preflight_probe.py passes the same data in-process
def test_sharegpt_and_content_parts_pass_the_check(host, tmp_path):
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"conversations": [{"from": "human", "value": "Reverse: stone"}, {"from": "gpt", "value": "enots"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "Reverse: apple"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "elppa"}]}]},
    ]) + "\n")
    result = check(host, spec(format="auto"), dataset=data)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert "model: llama (LlamaForCausalLM)" in summary and "data: chat, 2 records checked" in summary


def test_files_not_on_the_host_yet_are_left_to_the_session(host):
    """Before staging, an uploaded dataset and model are not there: the check says so and passes."""
    job = {"session_id": "s1", "spec": validate_spec(spec()).model_dump(),
           "paths": {"model": "model", "dataset": "data/demo.jsonl"}}
    result = subprocess.run([sys.executable, "-m", "runner.host", "check", str(host.root)], input=json.dumps(job),
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)["summary"]
    assert "dataset data/demo.jsonl is not on this host yet" in summary


@needs_root
def test_session_refuses_bad_data_before_power_is_capped(host):
    session = host.session_dir(spec(format="chat"), paths={"model": str(host.model),
                                                            "dataset": str(BAD_DATA / "alpaca_as_chat.jsonl")})
    rc, status = host.run(session)
    assert rc == 3 and status["outcome"] == "refused"
    assert "format is chat but the record has keys" in status["error"] and "\n" not in status["error"]
    assert phase(status, "preflight")["outcome"] == "refused"
    assert [p["name"] for p in status["phases"]] == ["preflight"]  # power and inference never began
    assert host.limits_w() == {A_3090TI: 450, A_4090: 450}
    assert not (session / "train.json").exists()


@needs_root
@pytest.mark.slow  # a whole session; the log's error line is found in the fast tier
def test_a_trainer_failure_names_the_trainers_own_error(host, tmp_path):
    """Weights the probe does not read (it loads no weights) break only in the trainer: the error carries its line."""
    def corrupt_weights(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")

    model = model_copy(host.model, tmp_path / "model", corrupt_weights)
    session = host.session_dir(spec(), paths={"model": str(model), "dataset": str(DEMO)})
    rc, status = host.run(session)
    assert rc == 1 and status["outcome"] == "failed"
    assert status["error"].startswith("trainer exited with code 1: "), status["error"]
    said = status["error"].removeprefix("trainer exited with code 1: ")
    assert said in (session / "train.log").read_text() and "CalledProcessError" not in said
    assert status["restore"]["ok"] and host.limits_w() == {A_3090TI: 450, A_4090: 450}


@needs_root
@pytest.mark.slow  # a whole session with a trainer
def test_dropped_and_truncated_records_are_counted_on_screen(host, tmp_path):
    records = [json.loads(line) for line in DEMO.read_text().splitlines()[:40]]
    records += [
        {"messages": [{"role": "user", "content": "no answer here"}]},  # no assistant turn
        {"messages": [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "late"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "long " * 300}]},
    ]
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    session = host.session_dir(spec(train={"max_steps": 2}), paths={"model": str(host.model), "dataset": str(data)})
    rc, status = host.run(session)
    assert rc == 0, (session / "train.log").read_text()[-2000:]
    start = status["trainer"]
    assert (start["dropped_no_response"], start["dropped_too_long"], start["truncated_examples"]) == (1, 1, 1)
    assert start["examples"] == 41 and start["dropped_examples"] == 2
    assert data_line("localhost", status) == ("localhost  data: 41 examples; dropped 2 (1 without an assistant turn, "
                                              "1 with the response beyond max_seq_len 128); 1 truncated to max_seq_len")


def test_the_trainers_error_line_is_found_in_its_log(tmp_path, tiny_model):
    """The trainer's own entry point on data it refuses: its one 'Error:' line is what the user sees."""
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"model": str(tiny_model), "dataset": str(BAD_DATA / "misspelled_role.jsonl"),
                                  "output_dir": str(tmp_path / "out")}))
    log = tmp_path / "train.log"
    with log.open("w") as out:
        rc = subprocess.run([sys.executable, "-m", "runner.train", str(config)], stdout=out, stderr=out,
                            timeout=600).returncode
    assert rc == 2
    assert trainer_error_line(log) == (f"{BAD_DATA / 'misspelled_role.jsonl'}:2: turn 2 has role 'assistent'; "
                                       "known roles: system, user, assistant")
