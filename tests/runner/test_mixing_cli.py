"""Several datasets in one job as `runner train` meets them: the dry run says what each source gives by its weight
(drawn by train.seed: the same seed the same mix, another seed another draw), each local source is uploaded and
handed to the trainer with its weight and format, a bad record in any source is refused naming file:line before
any host is touched, and the progress line shows the mix from the trainer's start event."""

import json
import shutil

import pytest
from helpers import REPO, run_runner

from runner.commands.train import stage
from runner.host.launch import trainer_config
from runner.inventory import load_inventory
from runner.progress import data_line
from runner.spec import load_spec
from runner.train.config import parse_config

DEMO_DATA = REPO / "examples" / "data" / "demo.jsonl"  # 198 chat records
PROMPTS = 40


def job(home, seed: int = 0) -> str:
    """The demo's chat records weighted 3, prompt/completion records weighted 1 in format instruction."""
    shutil.copy(DEMO_DATA, home / "chat.jsonl")
    rows = [json.loads(line)["messages"] for line in DEMO_DATA.read_text().splitlines()[:PROMPTS]]
    (home / "pc.jsonl").write_text("".join(json.dumps({"prompt": m[0]["content"], "completion": m[1]["content"]})
                                           + "\n" for m in rows))
    path = home / "job.yaml"
    path.write_text(f"model: {REPO / 'examples' / 'models' / 'tiny-chat'}\nformat: chat\n"
                    "dataset:\n  - {path: ./chat.jsonl, weight: 3}\n"
                    "  - {path: ./pc.jsonl, weight: 1, format: instruction}\n"
                    f"train: {{max_steps: 4, batch_size: 4, max_seq_len: 128, seed: {seed}}}\n")
    return str(path)


def plan_lines(result) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line.strip() for line in result.stdout.splitlines() if line.strip().startswith(("data:", "mix", "steps:"))]


@pytest.mark.slow  # three dry runs; tests/train/test_mixing.py draws mixes by the seed in-process
def test_dry_run_shows_the_mix_drawn_by_the_seed(home, tiny_model):
    first = plan_lines(run_runner("train", job(home), "--dry-run"))
    # 238 records: 178.5 and 59.5, the remainder to the first; pc.jsonl's 40 records all once, 19 twice
    assert first[1] == ("mix (drawn by train.seed 0): chat.jsonl weight 3: 179 records -> 179 examples (75 %); "
                        "pc.jsonl weight 1: 40 records -> 59 examples (25 %)"), first
    assert first[0].startswith("data: chat/instruction format, 238 records -> 238 examples; ")
    assert first == plan_lines(run_runner("train", job(home), "--dry-run"))  # the same seed: the same mix
    other = plan_lines(run_runner("train", job(home), "--dry-run", "--set", "train.seed=1"))
    assert other[1] == first[1].replace("seed 0", "seed 1")  # the same shares
    assert other[0] != first[0]  # other records drawn from chat.jsonl: other token counts
    assert not (home / "training").exists() and not (home / "runs").exists()


def test_a_bad_record_in_the_second_source_is_refused_naming_file_and_line(home):
    path = job(home)
    with (home / "pc.jsonl").open("a") as f:
        f.write(json.dumps({"prompt": "Reverse the word: stone", "completion": 5}) + "\n")
    result = run_runner("train", path)
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"Error: {home / 'pc.jsonl'}:{PROMPTS + 1}: 'completion' is int, not text. "
        "Fix the dataset; nothing was staged."]
    assert not (home / "training").exists() and not (home / "runs").exists()


def test_a_missing_source_names_its_key(home):
    path = job(home)
    (home / "pc.jsonl").unlink()
    result = run_runner("train", path, "--dry-run")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().startswith("Error: dataset.1 ./pc.jsonl: no such file"), result.stderr


def test_each_source_is_uploaded_and_handed_to_the_trainer_with_its_weight(home):
    (home / "more").mkdir()
    shutil.copy(DEMO_DATA, home / "more" / "chat.jsonl")  # the same name as the first source: staged apart
    path = job(home)
    text = (home / "job.yaml").read_text()
    (home / "job.yaml").write_text(text.replace("format: instruction}\n", "format: instruction}\n"
                                                "  - {path: ./more/chat.jsonl, weight: 0.5}\n"))
    spec = load_spec(path)
    staging = stage(spec, home / "job.yaml", load_inventory(None))
    dests = {u["src"]: u["dest"] for u in staging.uploads}
    assert dests[str(home / "chat.jsonl")] == "data/chat.jsonl" and dests[str(home / "pc.jsonl")] == "data/pc.jsonl"
    assert dests[str(home / "more" / "chat.jsonl")] == "data/2-chat.jsonl"
    on_host = {**staging.paths, **{key: f"/s/{value}" for key, value in staging.paths.items() if key != "model"}}
    config = trainer_config({"spec": spec.model_dump(), "paths": on_host}, home / "session")
    assert config["dataset"] == [{"path": "/s/data/chat.jsonl", "weight": 3, "format": None},
                                 {"path": "/s/data/pc.jsonl", "weight": 1, "format": "instruction"},
                                 {"path": "/s/data/2-chat.jsonl", "weight": 0.5, "format": None}]
    assert parse_config(config).dataset[1].format == "instruction"  # the trainer accepts what the host hands it


def test_the_progress_line_shows_what_each_source_gave():
    mixed = {"examples": 238, "max_seq_len": 128, "data_mix": [
        {"records": 179, "dataset": "chat.jsonl", "weight": 3, "drawn": 179, "examples": 178},
        {"records": 40, "dataset": "pc.jsonl", "weight": 1, "drawn": 59, "examples": 59}]}
    assert data_line("gpu1", {"trainer": mixed}) == (
        "gpu1  data: 238 examples; mix: chat.jsonl weight 3: 179 records -> 178 examples (75 %); "
        "pc.jsonl weight 1: 40 records -> 59 examples (25 %)")
    assert data_line("gpu1", {"trainer": {"examples": 198}}) == "gpu1  data: 198 examples"


@pytest.mark.slow
def test_a_mixed_session_on_localhost_trains_on_every_source(home, tiny_model):
    """Two uploaded sources and one read where the host has it (an absolute path), through the host's preflight
    and the trainer: the screen and the run folder say what each source gave."""
    path = job(home)
    text = (home / "job.yaml").read_text()
    (home / "job.yaml").write_text(text.replace("format: instruction}\n", "format: instruction}\n"
                                                f"  - {{path: {DEMO_DATA}, weight: 1}}\n"))
    result = run_runner("train", path)
    assert result.returncode == 0, result.stderr + result.stdout
    host_dir = next((home / "runs").iterdir()) / "localhost"
    start = json.loads((host_dir / "metrics.jsonl").read_text().splitlines()[0])
    # 436 records: 3/5, 1/5 and 1/5 of them (261.6, 87.2, 87.2: the remainder to the first)
    assert [(row["dataset"], row["records"], row["drawn"]) for row in start["data_mix"]] == [
        ("chat.jsonl", 198, 262), ("pc.jsonl", PROMPTS, 87), ("demo.jsonl", 87, 87)]
    assert f"localhost  data: {start['examples']} examples; mix: chat.jsonl weight 3: 198 records" in (
        result.stdout + result.stderr)
    card = (host_dir / "adapter" / "README.md").read_text()
    assert "chat.jsonl (weight 3) + pc.jsonl (weight 1) + demo.jsonl (weight 1)" in card
