import json

import pytest
from transformers import AutoTokenizer

from runner.train.config import ConfigError
from runner.train.data import IGNORE, detect_format, read_records, tokenize_record, tokenize_records


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


def test_truncation_and_records_without_response_are_dropped(tokenizer):
    records = [{"prompt": "word " * 200, "completion": "late"}, {"prompt": "hi", "completion": "there"}]
    examples, dropped = tokenize_records(records, "auto", tokenizer, 32)
    assert dropped == 1 and len(examples) == 1 and len(examples[0].input_ids) <= 32


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
