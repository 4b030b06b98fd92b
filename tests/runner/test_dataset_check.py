"""A local dataset the trainer cannot use is refused by `runner train` before any host is touched: exit 3, one
line naming file:line (the bad-data corpus in tests/train/bad_data, as a user's job would name it)."""

import json
import shutil

import pytest
from helpers import REPO, run_runner

from runner.dataset import check_uploaded_dataset
from runner.spec import validate_spec

BAD_DATA = REPO / "tests" / "train" / "bad_data"
CASES = {name: case for name, case in json.loads((BAD_DATA / "expect.json").read_text()).items()
         if case["controller"]}


@pytest.mark.parametrize("name", sorted(CASES), ids=lambda n: n.removesuffix(".jsonl"))
def test_cli_refuses_bad_local_data_before_staging(home, name):
    shutil.copy(BAD_DATA / name, home / name)
    job = home / "job.yaml"
    job.write_text(f"model: {REPO / 'examples' / 'models' / 'tiny-chat'}\ndataset: ./{name}\n"
                   f"format: {CASES[name]['format']}\n")
    result = run_runner("train", str(job))
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and CASES[name]["controller"] in lines[0], lines
    assert not (home / "training").exists() and not (home / "runs").exists()


def test_converted_formats_pass(tmp_path):
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                      {"role": "assistant", "content": "hello"}]},
        {"instruction": "Reverse", "input": "stone", "output": "enots"},
        {"prompt": "hi", "completion": "there"},
        {"messages": [{"role": "user", "content": "no answer"}]},
    ]) + "\n")
    spec = validate_spec({"model": "m", "dataset": "./mixed.jsonl"})
    found = check_uploaded_dataset(spec, {"dataset": "data/mixed.jsonl"},
                                   [{"src": str(data), "dest": "data/mixed.jsonl"}])
    assert found == "chat/instruction, 5 records checked, 1 without a response"
    assert check_uploaded_dataset(spec, {"dataset": "org/hub-dataset"}, []) is None


@pytest.mark.slow
def test_dropped_and_truncated_records_show_on_screen(home, tiny_model):
    """A localhost session through the CLI: what the trainer dropped or cut is on the user's screen."""
    records = [json.loads(line) for line in (REPO / "examples" / "data" / "demo.jsonl").read_text().splitlines()[:40]]
    records += [
        {"messages": [{"role": "user", "content": "no answer here"}]},
        {"conversations": [{"from": "human", "value": "word " * 300}, {"from": "gpt", "value": "late"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                      {"role": "assistant", "content": "long " * 300}]},
    ]
    (home / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    job = home / "job.yaml"
    job.write_text(f"model: {tiny_model}\ndataset: ./data.jsonl\n"
                   "train: {max_steps: 2, batch_size: 4, max_seq_len: 128, learning_rate: 0.003}\n")
    result = run_runner("train", str(job))
    assert result.returncode == 0, result.stderr
    assert ("localhost  data: 41 examples; dropped 2 (1 without an assistant turn, 1 with the response beyond "
            "max_seq_len 128); 1 truncated to max_seq_len") in result.stderr
