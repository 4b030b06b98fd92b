"""The eval section as `runner train` meets it: the dry run says what is held out, a split that leaves nothing
to train on is refused (exit 3) before any host is touched, an eval file is staged and handed to the trainer."""

import json
import shutil

from helpers import REPO, run_runner

from runner.commands.train import stage
from runner.host.launch import trainer_config
from runner.inventory import load_inventory
from runner.spec import load_spec

DEMO_DATA = REPO / "examples" / "data" / "demo.jsonl"  # 198 records


def job(home, eval_section: str) -> str:
    shutil.copy(DEMO_DATA, home / "data.jsonl")
    path = home / "job.yaml"
    path.write_text(f"model: {REPO / 'examples' / 'models' / 'tiny-chat'}\ndataset: ./data.jsonl\n"
                    f"train: {{max_steps: 4, batch_size: 4, max_seq_len: 128}}\neval: {eval_section}\n")
    return str(path)


def test_dry_run_says_which_records_are_held_out(home, tiny_model):
    result = run_runner("train", job(home, "{split: 0.1, every_steps: 2, patience: 3}"), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert ("eval: 20 of 198 records held out of the dataset (drawn by train.seed 0), every 2 steps and at the end; "
            "stops after 3 evaluations without a lower loss; the adapter is the best evaluated one") in result.stdout
    assert not (home / "training").exists() and not (home / "runs").exists()


def test_a_split_leaving_nothing_to_train_on_is_refused_before_any_host(home):
    result = run_runner("train", job(home, "{split: 198}"))
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["Error: eval.split 198 holds out 198 of the dataset's 198 records and leaves none to train on; "
                     "lower eval.split. Fix the dataset; nothing was staged."]
    assert not (home / "training").exists() and not (home / "runs").exists()


def test_a_bad_record_in_the_eval_file_is_refused_naming_it(home):
    (home / "eval.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n[1]\n")
    result = run_runner("train", job(home, "{dataset: ./eval.jsonl}"))
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: eval.dataset: {home / 'eval.jsonl'}:2: a record is"), lines


def test_an_eval_file_is_uploaded_and_handed_to_the_trainer(home):
    (home / "eval.jsonl").write_text(DEMO_DATA.read_text().splitlines(keepends=True)[0])
    path = job(home, "{dataset: ./eval.jsonl, every_steps: 2}")
    spec = load_spec(path)
    staging = stage(spec, home / "job.yaml", load_inventory(None))
    assert {"src": str(home / "eval.jsonl"), "dest": "data/eval-eval.jsonl"} in staging.uploads
    session = home / "session"
    config = trainer_config({"spec": spec.model_dump(), "paths": {**staging.paths, "eval.dataset": "/s/data/e.jsonl"}},
                            session)
    assert config["eval"] == {"split": None, "dataset": "/s/data/e.jsonl", "every_steps": 2, "patience": None}
    assert "eval" not in trainer_config({"spec": load_spec(REPO / "examples" / "demo.yaml").model_dump(),
                                         "paths": {"model": "model", "dataset": "data/demo.jsonl"}}, session)
