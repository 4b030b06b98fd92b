"""An evaluating job through the CLI on localhost: the eval loss reaches the run folder (metrics.jsonl, status.json,
session.png), the screen, and `runner status` (text and --json)."""

import json

import pytest
from helpers import REPO, run_runner

from runner.commands.session import eval_words
from runner.progress import progress_line


def test_the_progress_line_and_status_text_show_the_eval_loss():
    state = {"phase": "train", "step": 6, "total_steps": 40, "loss": 2.5, "eval_loss": 2.75, "best_eval_loss": 2.7,
             "best_step": 4}
    assert "step 6/40 (15%)  loss 2.500  eval 2.750" in progress_line("gpu1", state)
    assert eval_words(state) == ", eval loss 2.7500 (best 2.7000 at step 4)"
    assert "eval" not in progress_line("gpu1", {"phase": "train", "step": 6, "loss": 2.5}) + eval_words({})


@pytest.mark.slow
def test_an_evaluating_session_shows_eval_loss_in_the_run_folder_and_runner_status(home, tiny_model):
    result = run_runner("train", str(REPO / "examples" / "eval.yaml"), "--set", "train.max_steps=6",
                        "--set", "eval.every_steps=2")
    assert result.returncode == 0, result.stderr + result.stdout
    run_dir = next((home / "runs").iterdir())
    host_dir = run_dir / "localhost"
    records = [json.loads(line) for line in (host_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("event") == "eval"]
    assert [e["step"] for e in evals] == [2, 4, 6]
    best = min(evals, key=lambda e: e["eval_loss"])
    status = json.loads((host_dir / "status.json").read_text())
    assert status["eval_loss"] == evals[-1]["eval_loss"]
    assert (status["best_eval_loss"], status["best_step"]) == (best["eval_loss"], best["step"])
    assert status["eval_losses"] == [[e["step"], e["eval_loss"]] for e in evals]
    assert f"the adapter is from step {best['step']} (lowest eval loss)" in result.stderr
    assert f"localhost: eval loss {evals[-1]['eval_loss']:.4f}, best {best['eval_loss']:.4f}" in result.stdout
    assert (host_dir / "adapter" / "adapter_model.safetensors").exists()
    assert (host_dir / "session.png").stat().st_size > 1000

    listed = json.loads(run_runner("status", run_dir.name, "--json").stdout)
    assert listed[0]["outcome"] == "succeeded"
    assert (listed[0]["eval_loss"], listed[0]["best_eval_loss"], listed[0]["best_step"]) == (
        evals[-1]["eval_loss"], best["eval_loss"], best["step"])
    assert listed[0]["eval_by_host"]["localhost"]["best_step"] == best["step"]
    assert f"eval loss {evals[-1]['eval_loss']:.4f}" in run_runner("status", run_dir.name).stdout
