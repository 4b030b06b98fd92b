"""Which records the end-of-training samples ask: without an eval section, only records the run trained on."""

import json
from pathlib import Path

from runner.train.config import parse_config
from runner.train.data import read_records
from runner.train.mixing import mix
from runner.train.model import load_tokenizer
from runner.train.samples import pick_prompts


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def test_without_eval_a_mix_samples_only_records_it_trained_on(tmp_path: Path, tiny_model: Path):
    """A source of 100 records at weight 1 beside one of 10 at weight 10 gets 10 places in the mix: most of its
    first records are not trained on, so they are not the samples that samples.md calls trained on."""
    big, small = tmp_path / "big.jsonl", tmp_path / "small.jsonl"
    big.write_text("".join(json.dumps(chat(f"Reverse: w{i}", f"{i}w")) + "\n" for i in range(100)))
    small.write_text("".join(json.dumps(chat(f"Upper: s{i}", f"S{i}")) + "\n" for i in range(10)))
    cfg = parse_config({"model": str(tiny_model), "output_dir": str(tmp_path / "out"), "samples": {"count": 8},
                        "dataset": [{"path": str(big), "weight": 1}, {"path": str(small), "weight": 10}]})
    samples, held_out = pick_prompts(cfg, load_tokenizer(cfg))
    trained = {getattr(r, "where", None) for r in mix(read_records(cfg.dataset), cfg.dataset, cfg.train.seed)}
    assert not held_out and len(samples) == 8
    assert all(sample.where in trained for sample in samples), [s.where for s in samples]
    firsts = {f"{big}:{line}" for line in range(1, 9)}
    assert not firsts <= {s.where for s in samples}  # not simply the file's first records
