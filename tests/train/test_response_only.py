"""Only responses are trained, in every format: read from a file as the trainer reads it and tokenized with
tiny-chat's tokenizer, each record's labels are IGNORE over exactly its prompt tokens (system and user turns, the
role markers up to the assistant's) and equal the input ids over exactly its responses (with their end of turn).

The expected tokens are written out by hand from tiny-chat's chat template, segment by segment, and tokenized
apart: its tokenizer splits at these boundaries, so the concatenation is the whole record's token ids.
"""

import json

import pytest
from transformers import AutoTokenizer

from runner.train.data import IGNORE, read_records, tokenize_records

PROMPT, RESPONSE = False, True
USER_STONE = "<|user|>Reverse the word: stone\n<|assistant|>"
TWO_TURNS = [(f"<|system|>Be brief.\n{USER_STONE}", PROMPT), ("enots</s>\n", RESPONSE),
             ("<|user|>And apple?\n<|assistant|>", PROMPT), ("elppa</s>\n", RESPONSE)]
ALPACA = [("<|user|>Reverse the word\n\nstone\n<|assistant|>", PROMPT), ("enots</s>\n", RESPONSE)]

CASES = {
    "chat messages": (
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": "Reverse the word: stone"},
                      {"role": "assistant", "content": "enots"},
                      {"role": "user", "content": "And apple?"},
                      {"role": "assistant", "content": "elppa"}]},
        TWO_TURNS),
    "chat content parts": (
        {"messages": [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                      {"role": "user", "content": [{"type": "text", "text": "Reverse the word: "},
                                                   {"type": "text", "text": "stone"}]},
                      {"role": "assistant", "content": [{"type": "text", "text": "enots"}]},
                      {"role": "user", "content": "And apple?"},
                      {"role": "assistant", "content": [{"type": "text", "text": "elppa"}]}]},
        TWO_TURNS),
    "sharegpt": (
        {"conversations": [{"from": "system", "value": "Be brief."},
                           {"from": "human", "value": "Reverse the word: stone"},
                           {"from": "gpt", "value": "enots"},
                           {"from": "human", "value": "And apple?"},
                           {"from": "gpt", "value": "elppa"}]},
        TWO_TURNS),
    "sharegpt with role/content": (
        {"conversations": [{"role": "user", "content": "Reverse the word: stone"},
                           {"role": "assistant", "content": "enots"}]},
        [(USER_STONE, PROMPT), ("enots</s>\n", RESPONSE)]),
    "a user turn after the last response": (
        {"messages": [{"role": "user", "content": "Reverse the word: stone"},
                      {"role": "assistant", "content": "enots"},
                      {"role": "user", "content": "And apple?"}]},
        [(USER_STONE, PROMPT), ("enots</s>\n", RESPONSE), ("<|user|>And apple?\n", PROMPT)]),
    "alpaca with input": ({"instruction": "Reverse the word", "input": "stone", "output": "enots"}, ALPACA),
    "alpaca without input": (
        {"instruction": "Reverse the word stone", "output": "enots"},
        [("<|user|>Reverse the word stone\n<|assistant|>", PROMPT), ("enots</s>\n", RESPONSE)]),
    "alpaca with an empty input": (
        {"instruction": "Reverse the word stone", "input": "", "output": "enots"},
        [("<|user|>Reverse the word stone\n<|assistant|>", PROMPT), ("enots</s>\n", RESPONSE)]),
    "prompt/completion": (
        {"prompt": "Reverse the word: stone", "completion": "enots"},
        [(USER_STONE, PROMPT), ("enots</s>\n", RESPONSE)]),
    "text": ({"text": "hello world"}, [("<s>hello world</s>", RESPONSE)]),
}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


def expected(tokenizer, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """(input ids, labels) from the hand-written segments: a prompt's tokens IGNORE, a response's its ids."""
    ids, labels = [], []
    for text, trained in segments:
        part = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += part
        labels += part if trained else [IGNORE] * len(part)
    return ids, labels


def read_back(tmp_path, records: list[dict], fmt: str, tokenizer) -> list:
    """The records through a .jsonl file, the trainer's reader and its tokenizing."""
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    examples, counts = tokenize_records(read_records(str(path)), fmt, tokenizer, 512)
    assert counts.examples == len(records) and counts.dropped == 0
    return examples


@pytest.mark.parametrize("case", CASES)
def test_labels_are_ignore_over_exactly_the_prompt(tokenizer, tmp_path, case):
    record, segments = CASES[case]
    ids, labels = expected(tokenizer, segments)
    example = read_back(tmp_path, [record], "auto", tokenizer)[0]
    assert example.input_ids == ids
    assert example.labels == labels
    if any(not trained for _, trained in segments):
        assert IGNORE in example.labels  # the test can tell a masked prompt from a trained one


def test_the_format_set_by_the_job_trains_the_same(tokenizer, tmp_path):
    """format: chat / instruction / text as the job sets it gives the labels auto detection gives."""
    for fmt, names in {"chat": ["chat messages", "sharegpt", "chat content parts"],
                       "instruction": ["alpaca with input", "alpaca without input", "prompt/completion"],
                       "text": ["text"]}.items():
        records = [CASES[name][0] for name in names]
        assert read_back(tmp_path, records, fmt, tokenizer) == read_back(tmp_path, records, "auto", tokenizer)


def test_without_a_chat_template_instruction_data_trains_only_the_response(tiny_model, tmp_path):
    plain = AutoTokenizer.from_pretrained(tiny_model)
    plain.chat_template = None
    cases = [({"instruction": "Reverse the word", "input": "stone", "output": "enots"},
              [("<s>Reverse the word\n\nstone\n", PROMPT), ("enots</s>", RESPONSE)]),
             ({"prompt": "Reverse the word: stone", "completion": "enots"},
              [("<s>Reverse the word: stone\n", PROMPT), ("enots</s>", RESPONSE)])]
    examples = read_back(tmp_path, [record for record, _ in cases], "auto", plain)
    for example, (_, segments) in zip(examples, cases, strict=True):
        assert (example.input_ids, example.labels) == expected(plain, segments)
