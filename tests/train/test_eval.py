"""Evaluation through the trainer's own entry point on the tiny model: the held-out split, eval lines in
metrics.jsonl, patience stopping early, the best evaluated adapter as the final one, and no eval section
changing nothing."""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import DEMO_DATA
from launching import finish, launch
from safetensors.torch import load_file

from runner.train.config import ConfigError
from runner.train.data import hold_out, read_records, tokenize_records

EVAL_KEYS = {"event", "step", "eval_loss", "eval_tokens", "best", "time"}


def events(records: list[dict], name: str) -> list[dict]:
    return [r for r in records if r.get("event") == name]


def steps(records: list[dict]) -> list[dict]:
    return [r for r in records if "event" not in r]


def test_split_is_drawn_by_the_seed():
    records = read_records(str(DEMO_DATA))
    train, held = hold_out(records, 0.1, seed=0)
    again_train, again_held = hold_out(read_records(str(DEMO_DATA)), 0.1, seed=0)
    assert len(held) == round(len(records) * 0.1) and len(train) + len(held) == len(records)
    assert [r.where for r in held] == [r.where for r in again_held]
    assert [r.where for r in train] == [r.where for r in again_train]
    assert not {r.where for r in train} & {r.where for r in held}
    assert [r.where for r in hold_out(records, 0.1, seed=1)[1]] != [r.where for r in held]
    assert len(hold_out(records, 7, seed=0)[1]) == 7  # a whole number is a count
    with pytest.raises(ConfigError, match=f"eval.split {len(records)} holds out {len(records)} of the dataset's"):
        hold_out(records, len(records), seed=0)


def test_eval_lines_in_metrics_at_every_n_steps_and_at_the_end(write_config, metrics, tmp_path):
    out = finish(launch(write_config({"max_steps": 7}, eval={"split": 0.1, "every_steps": 3})))
    records = metrics()
    start, done, evals = records[0], records[-1], events(records, "eval")
    assert start["eval_examples"] == 20 and start["examples"] == 178  # 198 records, 10 % held out
    assert [e["step"] for e in evals] == [3, 6, 7]
    assert all(set(e) == EVAL_KEYS and e["eval_tokens"] == start["eval_tokens"] > 0 for e in evals)
    assert evals[-1]["eval_loss"] < evals[0]["eval_loss"]  # the held-out loss falls as the model learns
    assert evals[0]["best"] is True
    best = min(evals, key=lambda e: e["eval_loss"])
    assert done["event"] == "done" and done["eval_loss"] == pytest.approx(evals[-1]["eval_loss"], abs=1e-6)
    assert done["best_step"] == best["step"] and done["best_eval_loss"] == pytest.approx(best["eval_loss"], abs=1e-6)
    assert done["early_stopped"] is False and "eval at step 3: loss" in out
    assert not (tmp_path / "output" / "best").exists()  # only the final adapter is left


def adapter_eval_loss(adapter: Path, tiny_model: Path, records: list) -> float:
    """The loss per response token of an adapter on records, computed here with transformers + PEFT, one by one."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples, _ = tokenize_records(records, "auto", tokenizer, 128)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter).eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for example in examples:
            out = model(input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels]))
            total += float(out.loss) * example.trained_tokens
            tokens += example.trained_tokens
    return total / tokens


def unlike_eval_file(tmp_path: Path) -> Path:
    """Answers unlike the training data's: the eval loss first falls (turn endings), then rises as the model fits."""
    records = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()[:12]]
    for record in records:
        record["messages"][-1]["content"] = "QQ ZZ XX"
    eval_file = tmp_path / "unlike.jsonl"
    eval_file.write_text("".join(json.dumps(r) + "\n" for r in records))
    return eval_file


@pytest.mark.slow  # a trainer process; test_early_stop.py checks patience in-process
def test_patience_stops_early_and_the_best_evaluated_adapter_is_the_final_one(write_config, metrics, tmp_path,
                                                                            tiny_model):
    eval_file = unlike_eval_file(tmp_path)
    finish(launch(write_config({"max_steps": 40, "save_steps": 100},
                               eval={"dataset": str(eval_file), "every_steps": 2, "patience": 2})))
    records = metrics()
    evals, stop, done = events(records, "eval"), events(records, "early_stop"), records[-1]
    assert done["event"] == "done" and done["early_stopped"] is True and done["steps"] < 40
    assert steps(records)[-1]["step"] == done["steps"] == stop[0]["step"] == evals[-1]["step"]
    best = [e for e in evals if e["best"]][-1]
    assert [e["best"] for e in evals[-2:]] == [False, False] and done["best_step"] == best["step"] < done["steps"]
    assert stop[0]["best_step"] == best["step"] and stop[0]["patience"] == 2
    assert Path(done["adapter"]) == tmp_path / "output" / "adapter" and not (tmp_path / "output" / "best").exists()
    kept = adapter_eval_loss(tmp_path / "output" / "adapter", tiny_model, read_records(str(eval_file)))
    assert kept == pytest.approx(best["eval_loss"], abs=1e-4)  # the best step's weights, not the last step's
    assert abs(kept - evals[-1]["eval_loss"]) > 1e-3


@pytest.mark.slow  # two DDP processes
def test_two_processes_evaluate_every_held_out_example_once(two_process_run, tiny_model):
    """Two DDP ranks share 21 held-out examples unevenly; the loss they agree on is the one-by-one loss."""
    records = [json.loads(line) for line in (two_process_run / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["world_size"] == 2 and records[0]["eval_examples"] == 21
    (evaluation,) = events(records, "eval")
    held = hold_out(read_records(str(DEMO_DATA)), 21, seed=0)[1]
    expected = adapter_eval_loss(two_process_run / "output" / "adapter", tiny_model, held)
    assert evaluation["step"] == 3 and evaluation["eval_loss"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow  # three trainer runs of 30 steps
def test_a_stopped_and_resumed_run_keeps_its_best_evaluation(write_config, metrics, tmp_path):
    """Stopped after its best evaluation, then resumed: the same evaluations, best step and adapter as a run
    never stopped (the best so far travels in the checkpoint, its adapter in output/best)."""
    train, lora = {"max_steps": 30, "save_steps": 100}, {"rank": 8, "alpha": 16, "dropout": 0.1}
    evaluation = {"dataset": str(unlike_eval_file(tmp_path)), "every_steps": 2}
    finish(launch(write_config(train, lora=lora, eval=evaluation, output_dir=str(tmp_path / "whole"))))
    whole = metrics()
    best_step = whole[-1]["best_step"]
    assert best_step <= 24  # evaluations after the best one follow, so the stop below comes after it
    (tmp_path / "metrics.jsonl").unlink()

    config = write_config(train, lora=lora, eval=evaluation)
    proc = launch(config)
    deadline = time.monotonic() + 300
    while not any(e["step"] > best_step for e in events(metrics(), "eval")):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before the evaluation after its best"
        time.sleep(0.005)
    (tmp_path / "STOP").touch()
    finish(proc)
    stopped = metrics()[-1]
    assert stopped["event"] == "stopped" and best_step < stopped["step"] < 30
    (tmp_path / "STOP").unlink()
    finish(launch(config))
    resumed = metrics()
    assert resumed[-1]["event"] == "done" and resumed[-1]["best_step"] == best_step
    assert resumed[-1]["best_eval_loss"] == pytest.approx(whole[-1]["best_eval_loss"], abs=1e-5)
    marks = [[(e["step"], e["best"]) for e in events(run, "eval")] for run in (resumed, whole)]
    assert marks[0] == marks[1]
    for ours, theirs in zip(events(resumed, "eval"), events(whole, "eval"), strict=True):
        assert ours["eval_loss"] == pytest.approx(theirs["eval_loss"], abs=1e-5)
    kept = load_file(tmp_path / "output" / "adapter" / "adapter_model.safetensors")
    for name, weight in load_file(tmp_path / "whole" / "adapter" / "adapter_model.safetensors").items():
        torch.testing.assert_close(kept[name], weight, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow  # two trainer runs
def test_no_eval_section_changes_nothing(write_config, metrics, tmp_path):
    """Without eval: no eval lines or fields. With a separate eval file: the same training, step for step
    (evaluation takes no random numbers and changes no weights; dropout on)."""
    train, lora = {"max_steps": 7, "save_steps": 3}, {"rank": 8, "alpha": 16, "dropout": 0.1}
    finish(launch(write_config(train, lora=lora)))
    plain = metrics()
    assert not events(plain, "eval") and not events(plain, "early_stop")
    assert not {"eval_examples", "eval_tokens"} & set(plain[0])
    assert not {"eval_loss", "best_eval_loss", "best_step", "early_stopped"} & set(plain[-1])
    plain_weights = load_file(tmp_path / "output" / "checkpoint-6" / "adapter_model.safetensors")
    shutil.rmtree(tmp_path / "output")
    (tmp_path / "metrics.jsonl").unlink()

    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text("".join(DEMO_DATA.read_text().splitlines(keepends=True)[:16]))
    finish(launch(write_config(train, lora=lora, eval={"dataset": str(eval_file), "every_steps": 2})))
    evaluated = metrics()
    assert [e["step"] for e in events(evaluated, "eval")] == [2, 4, 6, 7]
    assert [s["loss"] for s in steps(evaluated)] == [s["loss"] for s in steps(plain)]
    weights = load_file(tmp_path / "output" / "checkpoint-6" / "adapter_model.safetensors")
    for name, weight in plain_weights.items():
        torch.testing.assert_close(weights[name], weight, rtol=0, atol=0, msg=name)


@pytest.mark.slow  # a trainer process; test_split_is_drawn_by_the_seed checks the message in-process
def test_bad_eval_settings_end_the_trainer_with_one_line(write_config, tmp_path):
    proc = launch(write_config(eval={"split": 1000}))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0
    assert "eval.split 1000 holds out 1000 of the dataset's 198 records and leaves none to train on" in out
