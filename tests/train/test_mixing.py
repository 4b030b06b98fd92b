"""Several datasets in one job: the mix is drawn by train.seed (the same seed the same records in the same order,
another seed another order), each source's share of the records follows its weight, an eval split is held out of
the sources before the mix, a source's own format applies to its records, a bad record in any source is named by
file:line; and the trainer's own entry point trains on the mix and says what each source gave."""

import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import DEMO_DATA
from launching import finish, launch
from transformers import AutoTokenizer

from runner.train.config import ConfigError, parse_config
from runner.train.data import IGNORE, hold_out, read_records, tokenize_records
from runner.train.evaluation import split_data
from runner.train.mixing import mix, shares
from runner.train.probe import check_data

CHAT_RECORDS, ALPACA_RECORDS = 198, 30


def alpaca_file(path: Path, count: int = ALPACA_RECORDS) -> str:
    """The demo's first conversations as alpaca records (instruction/output)."""
    rows = [json.loads(line)["messages"] for line in DEMO_DATA.read_text().splitlines()[:count]]
    path.write_text("".join(json.dumps({"instruction": m[0]["content"], "output": m[1]["content"]}) + "\n"
                            for m in rows))
    return str(path)


@pytest.fixture
def sources(tmp_path) -> list[dict]:
    """The demo's chat file weighted 3, an alpaca file weighted 1 in its own format (the job's is chat)."""
    return [{"path": str(DEMO_DATA), "weight": 3},
            {"path": alpaca_file(tmp_path / "alpaca.jsonl"), "weight": 1, "format": "instruction"}]


def config(sources: list[dict], **extra):
    return parse_config({"model": "m", "dataset": sources, "output_dir": "out", "format": "chat", **extra})


def by_source(records) -> Counter:
    return Counter(Path(r.where.rsplit(":", 1)[0]).name for r in records)


def test_shares_add_up_and_follow_the_weights():
    assert shares([3, 1], 228) == [171, 57]
    assert shares([3, 1], 130) == [98, 32]  # 97.5 and 32.5: the remainder to the first
    assert shares([1, 1, 1], 10) == [4, 3, 3]
    assert shares([0.5, 2], 5) == [1, 4]
    for weights, total in [([3, 1], 7), ([1, 2, 3.5], 101), ([0.1, 10], 3)]:
        assert sum(shares(weights, total)) == total


def test_the_mix_is_drawn_by_the_seed(sources):
    cfg = config(sources)
    first = mix(read_records(cfg.dataset), cfg.dataset, seed=0)
    again = mix(read_records(cfg.dataset), cfg.dataset, seed=0)
    other = mix(read_records(cfg.dataset), cfg.dataset, seed=1)
    assert [r.where for r in first] == [r.where for r in again]  # the same seed: the same records, same order
    assert [r.where for r in other] != [r.where for r in first]  # another seed: another order
    total = CHAT_RECORDS + ALPACA_RECORDS
    assert len(first) == len(other) == total  # as many records as the sources hold together
    assert by_source(first) == by_source(other) == {"demo.jsonl": 171, "alpaca.jsonl": 57}  # 3 : 1
    alpaca = Counter(r.where for r in first if "alpaca" in r.where)
    assert len(alpaca) == ALPACA_RECORDS and sorted(set(alpaca.values())) == [1, 2]  # all once, 27 twice
    assert len({r.where for r in first if "demo" in r.where}) == 171  # a draw without repeats
    sources_in_order = [r.where.startswith(str(DEMO_DATA)) for r in first]
    assert sources_in_order != sorted(sources_in_order, reverse=True)  # interleaved, not one source then the other


def test_one_source_or_a_plain_path_is_read_as_it_is():
    records = read_records(str(DEMO_DATA))
    assert mix(records, str(DEMO_DATA), seed=5) is records
    single = config([{"path": str(DEMO_DATA), "weight": 2}])
    assert [r.where for r in mix(read_records(single.dataset), single.dataset, 5)] == [r.where for r in records]


def test_each_source_in_its_own_format_and_only_responses_trained(sources, tiny_model):
    cfg = config(sources)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    examples, counts = tokenize_records(mix(read_records(cfg.dataset), cfg.dataset, 0), cfg.format, tokenizer, 128)
    assert counts.examples == counts.records == CHAT_RECORDS + ALPACA_RECORDS
    assert [(row["dataset"], row["weight"], row["records"], row["drawn"], row["examples"]) for row in counts.mix] == [
        ("demo.jsonl", 3, 171, 171, 171), ("alpaca.jsonl", 1, 30, 57, 57)]
    assert counts.start_fields()["data_mix"] == list(counts.mix)
    for example in examples:
        prompt = example.labels.index(next(label for label in example.labels if label != IGNORE))
        assert example.labels[:prompt] == [IGNORE] * prompt and prompt > 0  # the user turn is not trained
    with pytest.raises(ConfigError, match=r"alpaca.jsonl:1: format is chat but the record has keys"):
        plain = config([sources[0], {**sources[1], "format": None}])  # without its format, the job's applies
        tokenize_records(read_records(plain.dataset), plain.format, tokenizer, 128)


def test_eval_split_is_held_out_of_the_sources_before_the_mix(sources):
    cfg = config(sources, eval={"split": 0.1}, train={"seed": 4})
    train, held = split_data(cfg, read_records(cfg.dataset))
    again_train, again_held = split_data(cfg, read_records(cfg.dataset))
    assert [r.where for r in held] == [r.where for r in again_held]
    assert len(held) == round(0.1 * (CHAT_RECORDS + ALPACA_RECORDS))
    mixed = mix(train, cfg.dataset, cfg.train.seed)
    assert [r.where for r in mixed] == [r.where for r in mix(again_train, cfg.dataset, cfg.train.seed)]
    assert not {r.where for r in mixed} & {r.where for r in held}  # no held-out record is trained on
    assert len(mixed) == len(train) and sum(by_source(mixed).values()) == len(train)
    assert list(by_source(mixed).values()) and by_source(mixed)["demo.jsonl"] == shares([3, 1], len(train))[0]


def test_a_source_left_empty_by_the_split_is_named(tmp_path):
    cfg = config([{"path": str(DEMO_DATA)}, {"path": alpaca_file(tmp_path / "one.jsonl", 1), "format": "instruction"}])
    records = read_records(cfg.dataset)
    left = [r for r in records if "one.jsonl" not in r.where]  # as if the split had drawn its one record
    with pytest.raises(ConfigError, match=r"one.jsonl has no records to train on .* lower eval.split"):
        mix(left, cfg.dataset, 0)
    assert len(hold_out(records, 1, 0)[0]) == CHAT_RECORDS  # a split draws from the sources together


def test_a_bad_record_in_the_second_source_is_named_by_file_and_line(sources, tmp_path):
    bad = Path(sources[1]["path"])
    bad.write_text(bad.read_text() + '{"instruction": "Reverse the word: stone", "output": null}\n')
    with pytest.raises(ConfigError, match=rf"^{bad}:{ALPACA_RECORDS + 1}: 'output' is null, not text$"):
        check_data(config(sources), tokenizer=None)
    found = check_data(config([sources[0]]), tokenizer=None)
    assert found.startswith(f"{DEMO_DATA} (weight 3): chat, {CHAT_RECORDS} records checked")


@pytest.mark.parametrize("bad, message", [
    ([], "config key 'dataset' is required"),
    ([{"weight": 2}], "dataset.0.path must name"),
    ([{"path": "a.jsonl", "weight": 0}], "dataset.0.weight must be a finite number > 0"),
    ([{"path": "a.jsonl"}, {"path": "a.jsonl"}], "dataset.1.path a.jsonl is named twice"),
    ([{"path": "a.jsonl", "format": "alpaca"}], "dataset.0.format must be one of auto, chat, instruction, text"),
    ([{"path": "a.jsonl", "share": 1}], "unknown config key 'dataset.0.share'"),
])
def test_bad_sources_are_one_line(bad, message):
    with pytest.raises(ConfigError, match=message):
        config(bad)


@pytest.mark.slow  # a trainer process; the tests above mix in-process
def test_the_trainer_trains_on_the_mix_and_says_what_each_source_gave(write_config, metrics, tmp_path, sources):
    out = finish(launch(write_config({"max_steps": 2, "seed": 3}, dataset=sources, format="chat",
                                     eval={"split": 0.1})))
    start, done = metrics()[0], metrics()[-1]
    held = round(0.1 * (CHAT_RECORDS + ALPACA_RECORDS))
    cfg = config(sources, eval={"split": 0.1}, train={"seed": 3})
    train, _ = split_data(cfg, read_records(cfg.dataset))
    demo, alpaca = shares([3, 1], len(train))
    assert start["eval_examples"] == held and start["examples"] == len(train)
    assert [(row["dataset"], row["drawn"], row["examples"]) for row in start["data_mix"]] == [
        ("demo.jsonl", demo, demo), ("alpaca.jsonl", alpaca, alpaca)]
    assert done["event"] == "done" and done["steps"] == 2, out[-2000:]
    card = (tmp_path / "output" / "adapter" / "README.md").read_text()
    assert "demo.jsonl (weight 3) + alpaca.jsonl (weight 1)" in card
