"""Early stopping in-process (the fast tier's check; test_eval.py's run through the trainer's entry point is the slow
tier's): patience ends the run and the best evaluated weights, not the last, are the final adapter."""

from pathlib import Path

import pytest
from test_eval import adapter_eval_loss, events, unlike_eval_file

from runner.train.config import load_config
from runner.train.data import read_records
from runner.train.session import run_session


def test_patience_ends_the_run_and_the_best_evaluated_weights_are_kept(write_config, metrics, tmp_path, tiny_model):
    eval_file = unlike_eval_file(tmp_path)
    evaluation = {"dataset": str(eval_file), "every_steps": 2, "patience": 2}
    outcome = run_session(load_config(write_config({"max_steps": 40, "save_steps": 100}, eval=evaluation)))
    evals, done = events(metrics(), "eval"), metrics()[-1]
    best = [e for e in evals if e["best"]][-1]
    assert outcome.status == "done" and done["early_stopped"] is True and done["steps"] == evals[-1]["step"] < 40
    assert [e["best"] for e in evals[-2:]] == [False, False] and done["best_step"] == best["step"]
    kept = adapter_eval_loss(Path(done["adapter"]), tiny_model, read_records(str(eval_file)))
    assert kept == pytest.approx(best["eval_loss"], abs=1e-4) and abs(kept - evals[-1]["eval_loss"]) > 1e-3
