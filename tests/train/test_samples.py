"""Samples through the trainer's own entry point on the tiny chat model: the base model's and the fine-tune's answers
to held-out prompts in output/samples.md and samples.jsonl, the training records (marked so) without an eval
section, the time budget, and the job spec's samples section."""

import json
import re
from pathlib import Path

import pytest
from conftest import DEMO_DATA
from launching import finish, launch

from runner.errors import UsageError
from runner.spec import validate_spec
from runner.train.data import hold_out, read_records

HIGH_LR = {"max_steps": 12, "learning_rate": 0.05, "save_steps": 100}


def rows(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "output" / "samples.jsonl").read_text().splitlines()]


def test_held_out_prompts_answered_by_base_and_fine_tune(write_config, tmp_path):
    config = write_config({**HIGH_LR, "max_steps": 6}, eval={"split": 8}, samples={"count": 3, "max_new_tokens": 24})
    out = finish(launch(config))
    found = rows(tmp_path)
    held = [r.where for r in hold_out(read_records(str(DEMO_DATA)), 8, seed=0)[1]]
    assert [r["where"] for r in found] == held[:3] and all(r["held_out"] for r in found)
    for row in found:
        record = json.loads(DEMO_DATA.read_text().splitlines()[int(row["where"].rsplit(":", 1)[1]) - 1])
        question, answer = (m["content"] for m in record["messages"])
        assert row["prompt"] == f"<|user|>{question}\n<|assistant|>"  # the chat template, as training renders it
        assert row["reference"] == answer
        assert row["fine_tune_end"] in ("end", "max_new_tokens") and row["base_end"] in ("end", "max_new_tokens")
    # the same weights with and without the adapter, after training at a high learning rate: other answers
    assert [r["fine_tune"] for r in found] != [r["base"] for r in found]
    text = (tmp_path / "output" / "samples.md").read_text()
    assert "Prompts: 3 of the records eval.split held out of training." in text
    assert [int(n) for n in re.findall(r"^## (\d+)\. ", text, re.M)] == [1, 2, 3]
    assert text.count("Base model (") == 3 and text.count("Fine-tune (") == 3 and "stopped by" not in text
    took = re.search(r"samples: 3 of 3 prompts answered by both in ([\d.]+) s \(budget 60 s\)", out)
    assert took, out[-2000:]
    print(f"samples step: {took.group(1)} s for 3 prompts x 2, at most 24 new tokens (tiny model, CPU)")


@pytest.mark.slow  # a trainer process; the fast tier samples held-out prompts
def test_without_eval_the_training_records_are_sampled_and_marked(write_config, tmp_path):
    finish(launch(write_config(HIGH_LR, samples={"count": 2, "max_new_tokens": 8})))
    found = rows(tmp_path)
    assert [r["where"] for r in found] == [f"{DEMO_DATA}:1", f"{DEMO_DATA}:2"]
    assert not any(r["held_out"] for r in found)
    assert "NOT held out, the fine-tune has trained on them" in (tmp_path / "output" / "samples.md").read_text()


@pytest.mark.slow  # a trainer process
def test_the_budget_stops_the_step_and_says_so(write_config, tmp_path):
    out = finish(launch(write_config(HIGH_LR, samples={"count": 4, "budget_s": 0.001})))
    found = rows(tmp_path)
    answered = sum(r["base"] is not None for r in found)
    assert len(found) == 4 and answered < 4
    assert all(r["fine_tune"] is None or r["fine_tune_end"] == "budget" for r in found)
    text = (tmp_path / "output" / "samples.md").read_text()
    assert f"stopped by the 0.001 s budget with {answered} of 4 prompts answered by both" in text
    assert "not generated (the 0.001 s budget)" in text
    assert f"samples: {answered} of 4 prompts answered by both" in out
    assert (tmp_path / "output" / "adapter" / "adapter_model.safetensors").exists()  # the session still succeeds


@pytest.mark.slow  # a trainer process
def test_count_0_turns_samples_off(two_step_run):
    output = two_step_run / "output"
    assert (output / "adapter").is_dir() and not (output / "samples.md").exists()
    assert not (output / "samples.jsonl").exists()


@pytest.mark.parametrize(("samples", "problem"), [
    ({"count": -1}, "samples.count: Input should be greater than or equal to 0"),
    ({"budget_s": 0}, "samples.budget_s: Input should be greater than 0"),
    ({"prompt": 3}, "unknown key 'samples.prompt'"),
])
def test_the_spec_refuses_a_bad_samples_section(samples, problem):
    with pytest.raises(UsageError, match=re.escape(problem)):
        validate_spec({"model": "m", "dataset": "d.jsonl", "samples": samples})


@pytest.mark.slow  # two DDP processes
def test_two_processes_rank_0_writes_while_the_other_waits(two_process_run):
    held = [r.where for r in hold_out(read_records(str(DEMO_DATA)), 21, seed=0)[1]]  # the run holds out 21
    assert [r["where"] for r in rows(two_process_run)] == held[:2]
