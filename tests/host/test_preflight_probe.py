"""The trainer's probe, in-process, on test_preflight_data.py's cases: the config the host hands the trainer
(launch.trainer_config) is refused with each bad case's one-line message, and ShareGPT and content parts pass. The fast
tier's check of each message; the whole `python -m runner.host check` path runs two of the bad cases fast and the
others, and the passing data, in the slow tier."""

import importlib.util
import json
from pathlib import Path

import pytest
from simhost import spec
from test_preflight_data import BAD_CASES, model_copy

from runner.host.launch import trainer_config
from runner.spec import validate_spec
from runner.train.config import ConfigError, parse_config
from runner.train.probe import probe

PASSES_WITH = {"qlora_without_bitsandbytes": "bitsandbytes", "varlen_without_cuda": "cuda"}  # a case this host passes


def probe_job(tmp_path: Path, change: dict, model: Path, dataset: Path) -> list[str]:
    """The probe's notes on the trainer config the host would write for this job (raises ConfigError to refuse)."""
    job = {"session_id": "s1", "host": "localhost", "spec": validate_spec(spec(**change)).model_dump(),
           "paths": {"model": str(model), "dataset": str(dataset)}}
    return probe(parse_config(trainer_config(job, tmp_path / "sessions" / "s1")))


def has(what: str) -> bool:
    if what == "cuda":
        import torch

        return torch.cuda.is_available()
    return importlib.util.find_spec(what) is not None


@pytest.mark.parametrize(("name", "change", "dataset", "model_change", "message"), BAD_CASES,
                         ids=[c[0] for c in BAD_CASES])
def test_the_probe_refuses_each_case_in_one_line(tmp_path, tiny_model, monkeypatch, name, change, dataset,
                                                 model_change, message):
    if name in PASSES_WITH and has(PASSES_WITH[name]):
        pytest.skip(f"this machine has {PASSES_WITH[name]}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as the host runs the probe: nothing is downloaded
    model = model_copy(tiny_model, tmp_path / "model", model_change) if model_change else tiny_model
    with pytest.raises(ConfigError) as refused:
        probe_job(tmp_path, change, model, dataset)
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_sharegpt_and_content_parts_pass_the_probe(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "mixed.jsonl"
    records = [{"conversations": [{"from": "human", "value": "Reverse: wolf"}, {"from": "gpt", "value": "flow"}]},
               {"messages": [{"role": "user", "content": [{"type": "text", "text": "Reverse: star"}]},
                             {"role": "assistant", "content": [{"type": "text", "text": "rats"}]}]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    notes = probe_job(tmp_path, {"format": "auto"}, tiny_model, data)
    assert notes == ["model: llama (LlamaForCausalLM)", "data: chat, 2 records checked, 0 without a response; "
                     "2 of 2 tokenized records train within max_seq_len"]  # both shapes read as chat


def eval_job(tmp_path: Path, model: Path, ev: dict, eval_file: Path | None = None) -> list[str]:
    from test_preflight_data import DEMO

    job = {"session_id": "s1", "host": "localhost", "spec": validate_spec(spec(eval=ev)).model_dump(),
           "paths": {"model": str(model), "dataset": str(DEMO),
                     **({"eval.dataset": str(eval_file)} if eval_file else {})}}
    return probe(parse_config(trainer_config(job, tmp_path / "sessions" / "s1")))


def test_the_eval_section_is_checked_against_the_host_data(tmp_path, tiny_model, monkeypatch):
    """A split that leaves nothing to train on, and a separate eval file with a bad record, are refused before
    anything changes (the controller checks them only where it uploads the data); good ones are noted."""
    from test_preflight_data import BAD_DATA, DEMO

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    total = sum(1 for line in DEMO.read_text().splitlines() if line.strip())
    with pytest.raises(ConfigError, match=rf"^eval.split {total} holds out {total} of the dataset's {total} records"):
        eval_job(tmp_path, tiny_model, {"split": total})
    bad = BAD_DATA / "misspelled_role.jsonl"
    with pytest.raises(ConfigError, match=r"^eval.dataset: .*misspelled_role.jsonl:2: turn 2 has role 'assistent'"):
        eval_job(tmp_path, tiny_model, {"dataset": "eval.jsonl"}, eval_file=bad)
    held = round(total * 0.1)
    assert eval_job(tmp_path, tiny_model, {"split": 0.1})[-1] == f"eval: {held} of {total} records held out"
    notes = eval_job(tmp_path, tiny_model, {"dataset": "eval.jsonl"}, eval_file=DEMO)
    assert notes[-1].startswith("eval: chat, ") and "train within max_seq_len" in notes[-1]
    missing = tmp_path / "not-here.jsonl"
    assert eval_job(tmp_path, tiny_model, {"dataset": "eval.jsonl"}, eval_file=missing)[-1] == (
        f"eval: {missing} is not on this host yet: checked when the trainer loads it")
