"""Training data: read records, detect their format, tokenize with loss only on responses.

Formats: chat (OpenAI `messages`, content a string or a list of text parts; ShareGPT `conversations` with
`from`/`value`), instruction (alpaca `instruction`/`input`/`output`, or `prompt`/`completion`) and text.
A bad record is one ConfigError line naming file:line and the problem. Several sources are read in order, each
record tagged with its source (its format, its weight); runner/train/mixing.py draws the mix.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ConfigError, DataSource

IGNORE = -100  # label value the loss skips (prompt tokens, padding, packing boundaries)
DATA_SUFFIXES = (".jsonl", ".json")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {"system": "system", "human": "user", "gpt": "assistant", "user": "user", "assistant": "assistant"}


class Record(dict):
    """One dataset record; `where` names it in errors (file:line, or the hub dataset and index); `source` is the
    source of a mix it came from (its format overrides the job's)."""

    where: str = "record"
    source: DataSource | None = None
    source_index: int = 0  # its place in the job's list


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss is taken
    truncated: bool = False  # longer than max_seq_len: the tail was cut

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE for label in self.labels[1:])  # the first token has nothing to predict it


@dataclass(frozen=True)
class DataCounts:
    """What became of the records: shown in the start event and on the user's screen."""

    records: int
    examples: int
    no_response: int  # dropped: no assistant turn (or an empty one)
    too_long: int  # dropped: the response starts beyond max_seq_len
    truncated: int  # kept, cut to max_seq_len
    mix: tuple[dict[str, Any], ...] = ()  # a mix: per source, its records, how many were drawn, examples kept

    @property
    def dropped(self) -> int:
        return self.no_response + self.too_long

    def start_fields(self) -> dict[str, int]:
        return {"dropped_examples": self.dropped, "dropped_no_response": self.no_response,
                "dropped_too_long": self.too_long, "truncated_examples": self.truncated,
                **({"data_mix": list(self.mix)} if self.mix else {})}


def read_records(source: str | tuple[DataSource, ...]) -> list[Record]:
    """Records from a .jsonl/.json file, a folder of them, or a Hugging Face dataset id; of a mix, every source's
    records in turn, each tagged with its source."""
    if not isinstance(source, str):
        return [_tagged(record, each, i) for i, each in enumerate(source) for record in read_records(each.path)]
    path = Path(source)
    if path.is_dir():
        return [record for file in _local_files(source) for record in _read_file(file)]
    if path.is_file():
        return list(_read_file(path))
    if path.suffix in DATA_SUFFIXES or source.startswith(("/", ".")):
        raise ConfigError(f"dataset {source} does not exist")
    import datasets  # only for hub ids: local files need no pyarrow

    rows = datasets.load_dataset(source, split="train")
    return [_record(dict(row), f"{source} record {index}") for index, row in enumerate(rows)]


def _read_file(path: Path, limit: int | None = None) -> Iterator[Record]:
    """Records of one file; JSON Lines are streamed, so a sample reads only its first `limit` records."""
    with path.open("rb") as f:
        is_array = path.suffix == ".json" and f.read(4096).lstrip().startswith(b"[")
    if is_array:
        text = _decode(path.read_bytes(), path)
        try:
            items = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}:{err.lineno}: not JSON: {err.msg}") from None
        for index, item in enumerate(items[:limit]):
            yield _record(item, f"{path} record {index}")
        return
    count = 0
    with path.open("rb") as f:
        for number, raw in enumerate(f, 1):
            line = _decode(raw, path, number)
            if not line.strip():
                continue
            if limit is not None and count >= limit:
                return
            count += 1
            try:
                item = json.loads(line)
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path}:{number}: not JSON: {err.msg}") from None
            yield _record(item, f"{path}:{number}")


def _decode(data: bytes, path: Path, first_line: int = 1) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + data[: err.start].count(b"\n")
        raise ConfigError(f"{path}:{line}: not UTF-8 text; save the dataset as UTF-8") from None


def _record(item: Any, where: str) -> Record:
    if not isinstance(item, dict):
        raise ConfigError(f"{where}: a record is a JSON object such as {{\"messages\": [...]}}, "
                          f"not {type(item).__name__}")
    record = Record(item)
    record.where = where
    return record


def _tagged(record: Record, source: DataSource, index: int) -> Record:
    record.source, record.source_index = source, index
    return record


def held_out_count(split: float, total: int) -> int:
    """How many of `total` records eval.split holds out: a whole count as given, a fraction rounded (at least 1)."""
    count = split if isinstance(split, int) else max(1, round(total * split))
    if count >= total:
        raise ConfigError(f"eval.split {split} holds out {count} of the dataset's {total} records and leaves none "
                          "to train on; lower eval.split")
    return count


def hold_out(records: list[Record], split: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(training, evaluation) records: the held-out ones are drawn by the seed, the same on every rank and run."""
    held = set(random.Random(seed).sample(range(len(records)), held_out_count(split, len(records))))
    return [r for i, r in enumerate(records) if i not in held], [r for i, r in enumerate(records) if i in held]


def sample_records(source: str, limit: int) -> list[Record]:
    """The first `limit` records of a local file, or of each file in a folder (the host preflight's sample)."""
    return [record for file in _local_files(source) for record in _read_file(file, limit)]


def count_records(source: str) -> int:
    """How many records a local file or folder holds, streamed without keeping them."""
    return sum(1 for file in _local_files(source) for _ in _read_file(file))


def data_files(source: str) -> list[Path]:
    """The data files of a local source: the file itself, or a folder's .jsonl/.json files in order."""
    path = Path(source)
    return sorted(p for p in path.rglob("*") if p.suffix in DATA_SUFFIXES) if path.is_dir() else [path]


def _local_files(source: str) -> list[Path]:
    files = data_files(source)
    if not files:
        raise ConfigError(f"dataset folder {source} holds no .jsonl or .json files")
    return files


def detect_format(record: dict[str, Any]) -> str:
    """chat, instruction or text, from the keys of one record."""
    if "messages" in record or "conversations" in record:
        return "chat"
    if "instruction" in record or ("prompt" in record and "completion" in record):
        return "instruction"
    if "text" in record:
        return "text"
    raise ConfigError(f"{_where(record)}: cannot tell the data format from keys {sorted(record)}; "
                      'use messages, conversations, instruction/output, prompt/completion or text, or set "format"')


def record_format(record: dict[str, Any], fmt: str) -> str:
    """The job's format (a mix's source: its own, where it sets one), or with "auto" each record's own (a folder may
    mix files of different formats)."""
    source = getattr(record, "source", None)
    fmt = (source.format or fmt) if source is not None else fmt
    return detect_format(record) if fmt == "auto" else fmt


def tokenize_records(
    records: Iterable[dict[str, Any]], fmt: str, tokenizer: Any, max_seq_len: int
) -> tuple[list[Example], DataCounts]:
    """Examples truncated to max_seq_len, and counts of what was dropped (no response, response too late)
    and truncated."""
    records = list(records)
    if not records:
        raise ConfigError("the dataset is empty")
    examples, no_response, too_long, kept = [], 0, 0, []
    for record in records:
        record_fmt = record_format(record, fmt)
        if not has_response(record, record_fmt):
            no_response += 1
            continue
        example = tokenize_record(record, record_fmt, tokenizer, max_seq_len)
        if example.trained_tokens:
            examples.append(example)
            kept.append(record)
        else:
            too_long += 1
    counts = DataCounts(len(records), len(examples), no_response, too_long, sum(e.truncated for e in examples),
                        _mix_counts(records, kept))
    if not examples:
        raise ConfigError(f"no record has response tokens within max_seq_len {max_seq_len} ({no_response} without "
                          f"an assistant turn, {too_long} with the response beyond it); raise train.max_seq_len "
                          "or check the data")
    return examples, counts


def _mix_counts(records: list[Record], kept: list[Record]) -> tuple[dict[str, Any], ...]:
    """Per source of a mix: its name and weight, its records (each once), how many were drawn, examples kept."""
    found: dict[DataSource, dict[str, Any]] = {}
    for record in records:
        source = getattr(record, "source", None)
        if source is not None:
            row = found.setdefault(source, {"dataset": _source_name(source.path), "weight": source.weight,
                                            "ids": set(), "drawn": 0, "examples": 0, "at": record.source_index})
            row["ids"].add(id(record))
            row["drawn"] += 1
    for record in kept:
        if getattr(record, "source", None) in found:
            found[record.source]["examples"] += 1
    rows = sorted(found.values(), key=lambda row: row["at"])  # in the job's order
    return tuple({"records": len(row["ids"]), **{k: v for k, v in row.items() if k not in ("ids", "at")}}
                 for row in rows)


def _source_name(path: str) -> str:
    """A file or folder by its name, a hub dataset by its id."""
    return Path(path).name if Path(path).exists() else path


def has_response(record: dict[str, Any], fmt: str) -> bool:
    """Whether the record has something to train on (an assistant turn with text; text data always)."""
    if fmt == "text":
        return bool(to_text(record))
    messages = to_messages(record, fmt)
    return any(m["role"] == "assistant" and m["content"] for m in messages)


def tokenize_record(record: dict[str, Any], fmt: str, tokenizer: Any, max_seq_len: int) -> Example:
    """One record as token ids, labels masked to the trained spans."""
    if fmt == "text":
        text, spans = _plain_spans(to_text(record), tokenizer)
    elif fmt in ("chat", "instruction"):
        messages = to_messages(record, fmt)
        if fmt == "instruction" and not getattr(tokenizer, "chat_template", None):
            text, spans = _instruction_spans(messages[0]["content"], messages[1]["content"], tokenizer)
        else:
            text, spans = _chat_spans(messages, tokenizer)
    else:
        raise ConfigError(f"unknown format {fmt!r}")
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    full = list(encoded["input_ids"])
    ids = full[:max_seq_len]
    offsets = encoded["offset_mapping"][: len(ids)]
    labels = [
        token if any(start <= lo and hi <= end and hi > lo for start, end in spans) else IGNORE
        for token, (lo, hi) in zip(ids, offsets, strict=True)
    ]
    return Example(ids, labels, truncated=len(full) > max_seq_len)


# -- records to conversations ---------------------------------------------------------------------------------


def to_messages(record: dict[str, Any], fmt: str) -> list[dict[str, str]]:
    """The record as [{role, content}] with text content: chat as given (ShareGPT and content parts converted),
    instruction as one user turn and one assistant turn. Raises ConfigError naming file:line."""
    where = _where(record)
    if fmt == "instruction":
        if "instruction" in record:
            prompt = _string(record, "instruction", where)
            extra = record.get("input")
            if extra is not None and not isinstance(extra, str):
                raise ConfigError(f"{where}: 'input' is {type(extra).__name__}, not text")
            return [{"role": "user", "content": prompt + (f"\n\n{extra}" if extra else "")},
                    {"role": "assistant", "content": _string(record, "output", where)}]
        if "prompt" in record:
            return [{"role": "user", "content": _string(record, "prompt", where)},
                    {"role": "assistant", "content": _string(record, "completion", where)}]
        raise ConfigError(f"{where}: format is instruction but the record has keys {sorted(record)}; instruction "
                          "records hold instruction/output or prompt/completion (or set format: auto)")
    if "messages" in record:
        turns, role_key, content_key, roles = record["messages"], "role", "content", {r: r for r in ROLES}
    elif "conversations" in record:  # ShareGPT: from/value, human/gpt/system (some exports use role/content)
        turns, roles = record["conversations"], SHAREGPT_ROLES
        first = turns[0] if isinstance(turns, list) and turns and isinstance(turns[0], dict) else {}
        role_key, content_key = ("role", "content") if "role" in first else ("from", "value")
    else:
        raise ConfigError(f"{where}: format is chat but the record has keys {sorted(record)}; chat records hold "
                          "'messages' (or ShareGPT 'conversations'); set format: auto or instruction")
    if not isinstance(turns, list):
        raise ConfigError(f"{where}: the conversation is {type(turns).__name__}, not a list of turns")
    return [_turn(turn, index, role_key, content_key, roles, where) for index, turn in enumerate(turns, 1)]


def _turn(turn: Any, index: int, role_key: str, content_key: str, roles: dict[str, str], where: str) -> dict:
    if not isinstance(turn, dict):
        raise ConfigError(f"{where}: turn {index} is {type(turn).__name__}, not an object with "
                          f"'{role_key}' and '{content_key}'")
    role = turn.get(role_key)
    if role not in roles:
        raise ConfigError(f"{where}: turn {index} has {role_key} {role!r}; known roles: {', '.join(roles)}")
    content = turn.get(content_key)
    if content is None:
        raise ConfigError(f"{where}: turn {index} ({role}) has no {content_key} (null or missing); "
                          "give it text or remove the turn")
    return {"role": roles[role], "content": _content_text(content, index, where)}


def _content_text(content: Any, index: int, where: str) -> str:
    """A string, or OpenAI content parts joined as text (not the list's repr)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ConfigError(f"{where}: turn {index} has a content part of type {kind!r}; "
                                  'only text parts ({"type": "text", "text": ...}) can be trained')
            texts.append(part["text"])
        return "".join(texts)
    raise ConfigError(f"{where}: turn {index} content is {type(content).__name__}, not text")


def to_text(record: dict[str, Any]) -> str:
    return _string(record, "text", _where(record))


def _string(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str):
        got = "missing" if key not in record else f"{type(value).__name__}" if value is not None else "null"
        raise ConfigError(f"{where}: '{key}' is {got}, not text")
    return value


def _where(record: dict[str, Any]) -> str:
    return getattr(record, "where", "record")


# -- rendering and trained spans ------------------------------------------------------------------------------


def _chat_spans(messages: list[dict[str, str]], tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation; the spans cover each assistant turn with its end-of-turn tokens."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat data needs a tokenizer with a chat template; use a chat model's tokenizer, or "
                          "instruction/text data")
    text = _render(tokenizer, messages, False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
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


def _instruction_spans(prompt: str, response: str, tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    """Without a chat template: prompt, newline, response; only the response and EOS are trained."""
    head = (tokenizer.bos_token or "") + prompt + "\n"
    text = head + response + (tokenizer.eos_token or "")
    return text, [(len(head), len(text))]


def _plain_spans(body: str, tokenizer: Any) -> tuple[str, list[tuple[int, int]]]:
    text = (tokenizer.bos_token or "") + body + (tokenizer.eos_token or "")
    return text, [(0, len(text))]
