"""The model card's results and hardware rows, rendered in-process from a session's metrics.jsonl (the fast tier's
check of the card; test_adapter_card.py's trainer runs with evaluation and two processes are in the slow tier)."""

import json

from conftest import DEMO_DATA
from test_adapter_card import card_of

from runner.train.card import data_digest, read_history, render_card
from runner.train.config import load_config

# A session stopped at step 2 (its checkpoint at step 1), resumed: the redone step 2 and the second try's lines count
METRICS = [
    {"event": "start", "time": 100.0},
    {"step": 1, "loss": 3.0, "time": 101.0},
    {"step": 2, "loss": 1.0, "time": 102.0},
    {"event": "eval", "step": 2, "eval_loss": 2.5, "best": True, "time": 102.5},
    {"event": "stopped", "step": 2, "time": 103.0},
    {"event": "start", "time": 200.0},
    {"step": 2, "loss": 1.8, "time": 201.0},
    {"step": 3, "loss": 1.5, "time": 202.0},
    {"event": "eval", "step": 3, "eval_loss": 2.75, "best": False, "time": 202.5},
    {"event": "early_stop", "step": 3, "best_step": 2, "patience": 1, "time": 203.5},
    {"event": "done", "steps": 3, "adapter_step": 2, "early_stopped": True, "time": 204.0},
]


def test_eval_rows_the_adapters_step_every_try_and_every_process(write_config, tmp_path):
    cfg = load_config(write_config(eval={"split": 20, "every_steps": 1, "patience": 1}))
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in METRICS))
    info = {"examples": 178, "eval_examples": 20, "dropped_examples": 0, "truncated_examples": 0, "strategy": "ddp"}
    devices = ["cpu on box"] * 2  # what hardware() gathers from two ranks
    text = render_card(cfg, info, 3, read_history(cfg.metrics_path), devices, data_digest(str(DEMO_DATA)))
    (tmp_path / "README.md").write_text(text)
    _, rows = card_of(tmp_path)
    assert rows["first loss"] == "3.0000 (step 1)" and rows["last loss"] == "1.5000 (step 3)"
    assert rows["best loss"] == "1.5000 (step 3)"  # step 2's first try (1.0) was redone: the later value counts
    assert rows["eval loss"] == "2.7500 (step 3)" and rows["best eval loss"] == "2.5000 (step 2)"
    assert rows["adapter weights from step"] == "2" and rows["early stopped"].startswith("yes")
    assert rows["eval examples"] == "20" and rows["examples trained on"] == "178 (0 dropped, 0 truncated)"
    assert rows["training time"] == "7 s over 2 tries (resumed)"  # 3 s + 4 s, not the gap between the tries
    assert rows["processes"] == "2" and rows["devices"] == "2 × cpu on box" and rows["strategy"] == "ddp"
    assert rows["steps done"] == "3" and rows["dataset records"] == "198"
