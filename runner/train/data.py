"""Training data: read records, detect their format, tokenize with loss only on responses."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError

IGNORE = -100  # label value the loss skips (prompt tokens, padding, packing boundaries)
DATA_SUFFIXES = (".jsonl", ".json")


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels[1:])  # the first token has nothing to predict it


def read_records(source: str) -> list[dict[str, Any]]:
    """Records from a .jsonl/.json file, a folder of them, or a Hugging Face dataset id."""
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in DATA_SUFFIXES)
        if not files:
            raise ConfigError(f"dataset folder {source} holds no .jsonl or .json files")
        return [record for file in files for record in _read_file(file)]
    if path.is_file():
        return list(_read_file(path))
    if path.suffix in DATA_SUFFIXES or source.startswith(("/", ".")):
        raise ConfigError(f"dataset {source} does not exist")
    import datasets  # only for hub ids: local files need no pyarrow

    return [dict(r) for r in datasets.load_dataset(source, split="train")]


def _read_file(path: Path) -> Iterator[dict[str, Any]]:
    text = path.read_text()
    if path.suffix == ".json" and text.lstrip().startswith("["):
        yield from json.loads(text)
        return
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{number}: not JSON: {err.msg}") from err


def detect_format(record: dict[str, Any]) -> str:
    """chat, instruction or text, from the keys of one record."""
    if "messages" in record:
        return "chat"
    if "instruction" in record or ("prompt" in record and "completion" in record):
        return "instruction"
    if "text" in record:
        return "text"
    raise ConfigError(f'cannot tell the data format from keys {sorted(record)}; set "format"')


def tokenize_records(
    records: Iterable[dict[str, Any]], fmt: str, tokenizer: Any, max_seq_len: int
) -> tuple[list[Example], int]:
    """Examples truncated to max_seq_len, and how many records were dropped for having no response."""
    records = list(records)
    if not records:
        raise ConfigError("the dataset is empty")
    if fmt == "auto":
        fmt = detect_format(records[0])
    examples, dropped = [], 0
    for record in records:
        example = tokenize_record(record, fmt, tokenizer, max_seq_len)
        if example.trained_tokens:
            examples.append(example)
        else:
            dropped += 1
    if not examples:
        raise ConfigError(f"no record has response tokens within max_seq_len {max_seq_len}")
    return examples, dropped


def tokenize_record(record: dict[str, Any], fmt: str, tokenizer: Any, max_seq_len: int) -> Example:
    """One record as token ids, labels masked to the trained spans."""
    if fmt == "chat":
        text, spans = _chat_spans(record["messages"], tokenizer)
    elif fmt == "instruction":
        text, spans = _instruction_spans(record, tokenizer)
    elif fmt == "text":
        text, spans = _plain_spans(record["text"], tokenizer)
    else:
        raise ConfigError(f"unknown format {fmt!r}")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(encoded["input_ids"])[:max_seq_len]
    offsets = encoded["offset_mapping"][: len(ids)]
    labels = [
        token if any(start <= lo and hi <= end and hi > lo for start, end in spans) else IGNORE
        for token, (lo, hi) in zip(ids, offsets, strict=True)
    ]
    return Example(ids, labels)


def _chat_spans(messages: list[dict[str, str]], tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation; the spans cover each assistant turn with its end-of-turn tokens."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat data needs a tokenizer with a chat template")
    text = _render(tokenizer, messages, False)
    spans = []
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = _render(tokenizer, messages[:index], True)
        upto = _render(tokenizer, messages[: index + 1], False)
        if text.startswith(prompt) and text.startswith(upto) and len(upto) > len(prompt):
            spans.append((len(prompt), len(upto)))
        else:  # templates that rewrite earlier turns: fall back to finding the content itself
            start = text.find(message["content"], spans[-1][1] if spans else 0)
            if start >= 0:
                spans.append((start, start + len(message["content"]) + len(tokenizer.eos_token or "")))
    return text, spans


def _render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def _instruction_spans(record: dict[str, Any], tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    if "instruction" in record:
        prompt = record["instruction"] + (f"\n\n{record['input']}" if record.get("input") else "")
        response = record.get("output", "")
    else:
        prompt, response = record["prompt"], record["completion"]
    if getattr(tokenizer, "chat_template", None):
        return _chat_spans([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenizer)
    head = (tokenizer.bos_token or "") + prompt + "\n"
    text = head + response + (tokenizer.eos_token or "")
    return text, [(len(head), len(text))]


def _plain_spans(body: str, tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    text = (tokenizer.bos_token or "") + body + (tokenizer.eos_token or "")
    return text, [(0, len(text))]
