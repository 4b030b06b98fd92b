import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from runner.train.config import ConfigError
from runner.train.data import IGNORE, detect_format, read_records, sample_records, tokenize_record, tokenize_records

BAD_DATA = Path(__file__).parent / "bad_data"
BAD_EXPECT = json.loads((BAD_DATA / "expect.json").read_text())
CORPUS_MAX_SEQ_LEN = 64


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def trained_text(tokenizer, example):
    return tokenizer.decode([t for t in example.labels if t != IGNORE])


def test_chat_trains_only_assistant_turns(tokenizer):
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Reverse the word: stone"},
            {"role": "assistant", "content": "enots"},
            {"role": "user", "content": "And apple?"},
            {"role": "assistant", "content": "elppa"},
        ]
    }
    example = tokenize_record(record, "chat", tokenizer, 512)
    assert len(example.labels) == len(example.input_ids)
    text = trained_text(tokenizer, example)
    assert "enots" in text and "elppa" in text and tokenizer.eos_token in text
    assert "stone" not in text and "apple" not in text and "brief" not in text


@pytest.mark.parametrize(
    "record",
    [
        {"instruction": "Reverse the word", "input": "stone", "output": "enots"},
        {"prompt": "Reverse the word stone", "completion": "enots"},
    ],
)
def test_instruction_trains_only_the_response(tokenizer, record):
    text = trained_text(tokenizer, tokenize_record(record, "instruction", tokenizer, 512))
    assert "enots" in text and "stone" not in text and "Reverse" not in text


def test_text_trains_everything(tokenizer):
    example = tokenize_record({"text": "hello world"}, "text", tokenizer, 512)
    assert example.labels == example.input_ids


def test_drops_and_truncation_are_counted(tokenizer):
    records = [
        {"prompt": "word " * 200, "completion": "late"},  # the response starts beyond max_seq_len: dropped
        {"prompt": "hi", "completion": "there " * 40},  # cut to max_seq_len: kept, truncated
        {"messages": [{"role": "user", "content": "hi"}]},  # no assistant turn: dropped
        {"prompt": "hi", "completion": "there"},
    ]
    examples, counts = tokenize_records(records, "auto", tokenizer, 32)
    assert len(examples) == 2 and all(len(e.input_ids) <= 32 for e in examples)
    assert (counts.records, counts.examples, counts.too_long, counts.no_response, counts.truncated) == (4, 2, 1, 1, 1)
    assert counts.start_fields() == {"dropped_examples": 2, "dropped_no_response": 1, "dropped_too_long": 1,
                                     "truncated_examples": 1}


def write_jsonl(path: Path, records: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_sharegpt_becomes_chat_and_trains_only_gpt_turns(tokenizer, tmp_path):
    conversation = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Reverse the word: stone"},
        {"from": "gpt", "value": "enots"},
        {"from": "human", "value": "And apple?"},
        {"from": "gpt", "value": "elppa"},
    ]
    records = read_records(write_jsonl(tmp_path / "sharegpt.jsonl", [{"conversations": conversation}]))
    assert detect_format(records[0]) == "chat"
    examples, _ = tokenize_records(records, "auto", tokenizer, 512)
    text = trained_text(tokenizer, examples[0])
    assert "enots" in text and "elppa" in text
    assert "stone" not in text and "apple" not in text and "brief" not in text
    as_messages = [{"role": {"human": "user", "gpt": "assistant"}.get(t["from"], t["from"]), "content": t["value"]}
                   for t in conversation]
    assert examples[0] == tokenize_record({"messages": as_messages}, "chat", tokenizer, 512)


def test_content_parts_are_joined_as_text(tokenizer):
    parts = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Reverse "}, {"type": "text", "text": "stone"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "enots"}]},
    ]}
    plain = {"messages": [{"role": "user", "content": "Reverse stone"}, {"role": "assistant", "content": "enots"}]}
    example = tokenize_record(parts, "chat", tokenizer, 512)
    assert example == tokenize_record(plain, "chat", tokenizer, 512)
    assert "'type'" not in tokenizer.decode(example.input_ids)  # not the Python repr of the list
    text = trained_text(tokenizer, example)
    assert "enots" in text and "stone" not in text


def test_instruction_without_a_chat_template_trains_only_the_response(tiny_model):
    plain = AutoTokenizer.from_pretrained(tiny_model)
    plain.chat_template = None
    record = {"instruction": "Reverse the word", "input": "stone", "output": "enots"}
    text = trained_text(plain, tokenize_record(record, "instruction", plain, 512))
    assert "enots" in text and "stone" not in text and "Reverse" not in text


def test_chat_data_without_a_chat_template_is_refused(tiny_model):
    plain = AutoTokenizer.from_pretrained(tiny_model)
    plain.chat_template = None
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    with pytest.raises(ConfigError, match="chat data needs a tokenizer with a chat template"):
        tokenize_record(record, "chat", plain, 512)


@pytest.mark.parametrize("name", sorted(BAD_EXPECT), ids=lambda n: n.removesuffix(".jsonl"))
def test_bad_data_is_one_line_naming_the_record(tokenizer, name):
    case = BAD_EXPECT[name]
    with pytest.raises(ConfigError) as err:
        tokenize_records(read_records(str(BAD_DATA / name)), case["format"], tokenizer, CORPUS_MAX_SEQ_LEN)
    assert case["expect"] in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        ({"messages": []}, "chat"),
        ({"instruction": "x", "output": "y"}, "instruction"),
        ({"prompt": "x", "completion": "y"}, "instruction"),
        ({"text": "x"}, "text"),
    ],
)
def test_format_detection(record, fmt):
    assert detect_format(record) == fmt


def test_unknown_format_and_missing_file_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot tell the data format"):
        detect_format({"question": "x"})
    with pytest.raises(ConfigError, match="does not exist"):
        read_records(str(tmp_path / "missing.jsonl"))


def test_folder_of_jsonl_files(tmp_path):
    for name in ("a.jsonl", "b.jsonl"):
        (tmp_path / name).write_text(json.dumps({"text": name}) + "\n")
    assert [r["text"] for r in read_records(str(tmp_path))] == ["a.jsonl", "b.jsonl"]


def test_a_sample_reads_only_the_first_records(tmp_path):
    """The host preflight's sample of a large dataset streams the file: a bad line past the sample is not read."""
    data = tmp_path / "big.jsonl"
    data.write_text('{"text": "a"}\n\n{"text": "b"}\n{not json\n')
    assert [r["text"] for r in sample_records(str(data), 2)] == ["a", "b"]
    with pytest.raises(ConfigError, match=r"big\.jsonl:4: not JSON"):
        sample_records(str(data), None)


def test_a_json_line_may_hold_unicode_line_separators(tmp_path):
    data = tmp_path / "u.jsonl"
    data.write_text(json.dumps({"text": "one\u2028two"}, ensure_ascii=False) + "\r\n")
    assert read_records(str(data))[0]["text"] == "one\u2028two"
