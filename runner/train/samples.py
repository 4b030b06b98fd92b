"""Samples: the base model's and the fine-tune's answers to a few prompts from the training domain, side by side.

At the end of a finished session rank 0 generates greedily from the model still in memory: with the adapter as
saved (output_dir/adapter, loaded back, so the best evaluated one where the job evaluates) and, under PEFT's
disable_adapter(), the base model: the same weights, no second load. The prompts are the held-out records where
the job has an eval section, else the first records of the training data that the run trained on (of a mix:
those its shares took; samples.md says they were trained on);
each is its record up to the last assistant turn, tokenized exactly as training tokenized it. Inference stays down
while this runs, so samples.budget_s bounds it: what is not done by then is left out, and samples.md says so.
Writes output_dir/samples.md and output_dir/samples.jsonl.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .config import TrainConfig
from .data import IGNORE, has_response, read_records, record_format, tokenize_record
from .evaluation import split_data
from .mixing import mix

log = logging.getLogger("runner.train")

MD, JSONL = "samples.md", "samples.jsonl"
CHUNK = 4  # prompts per generate call: batched decoding is several times faster; a chunk's KV cache stays small
TEXT_PROMPT_TOKENS = 64  # text records: the first half (at most this many tokens) is the prompt, the rest the answer
ENDS = {"end": "ended its answer", "max_new_tokens": "reached max_new_tokens", "budget": "cut at the time budget",
        "stop": "cut by a stop request"}


@dataclass
class Sample:
    where: str  # file:line of the record
    prompt: str  # what the model was given, special tokens included
    reference: str | None  # the record's own answer
    prompt_ids: list[int]
    fine_tune: str | None = None  # None: not generated (the budget ran out first)
    fine_tune_end: str | None = None  # a key of ENDS
    base: str | None = None
    base_end: str | None = None

    def row(self, index: int, held_out: bool) -> dict[str, Any]:
        fields = {k: v for k, v in asdict(self).items() if k != "prompt_ids"}
        return {"index": index, "held_out": held_out, **fields}


def write_samples(accelerator: Any, cfg: TrainConfig, peft_model: Any, tokenizer: Any, adapter: Path, strategy: str,
                  stop: Any) -> None:
    """Every rank calls this after the final adapter is saved; rank 0 generates and writes, the others wait."""
    settings = cfg.samples
    if settings.count == 0 or tokenizer is None:  # off, or a benchmark passing examples in
        return
    out = Path(cfg.output_dir)
    if strategy == "fsdp":  # every rank holds a shard: generation would need all of them in lockstep
        why = "skipped: the model is sharded (FSDP), and generating on it needs every rank in lockstep"
        log.warning("samples %s", why)
        if accelerator.is_main_process:
            (out / MD).write_text(f"# Samples\n\n{why}.\n")
        return
    if accelerator.is_main_process:
        started = time.monotonic()
        try:
            samples, held_out, note = _generate_all(accelerator, cfg, peft_model, tokenizer, adapter, stop, started)
        except Exception as err:  # the adapter is saved: samples failing must not fail the session
            log.exception("samples failed")
            (out / MD).write_text(f"# Samples\n\nfailed: {type(err).__name__}: {err}\n")
        else:
            took = time.monotonic() - started
            _write(out, cfg, samples, held_out, note, took)
            log.info("samples: %d of %d prompts answered by both in %.1f s (budget %g s) -> %s",
                     sum(s.base is not None for s in samples), len(samples), took, settings.budget_s, out / MD)
    accelerator.wait_for_everyone()


def pick_prompts(cfg: TrainConfig, tokenizer: Any) -> tuple[list[Sample], bool]:
    """Up to samples.count prompts with their reference answers, and whether they were held out of training."""
    records, held = split_data(cfg, read_records(cfg.dataset))
    if held is not None:
        pool = held
    else:  # of a mix, only records it trained on (a source's share can leave some of its records out)
        trained = {id(record) for record in mix(records, cfg.dataset, cfg.train.seed)}
        pool = [record for record in records if id(record) in trained]
    picked: list[Sample] = []
    for record in pool:
        sample = _to_sample(record, cfg, tokenizer)
        if sample is not None:
            picked.append(sample)
        if len(picked) == cfg.samples.count:
            break
    return picked, held is not None


def _to_sample(record: Any, cfg: TrainConfig, tokenizer: Any) -> Sample | None:
    """The record up to its last trained span as the prompt, that span as the reference; None with nothing to ask."""
    fmt = record_format(record, cfg.format)
    if not has_response(record, fmt):
        return None
    example = tokenize_record(record, fmt, tokenizer, cfg.train.max_seq_len)
    ids, labels = example.input_ids, example.labels
    if fmt == "text":
        start = min(len(ids) // 2, TEXT_PROMPT_TOKENS)
        end = start + cfg.samples.max_new_tokens
    else:
        trained = [i for i, label in enumerate(labels) if label != IGNORE]
        if not trained:
            return None
        end = start = trained[-1] + 1
        while start > 0 and labels[start - 1] != IGNORE:
            start -= 1
    if start == 0:
        return None
    return Sample(where=getattr(record, "where", "record"), prompt=tokenizer.decode(ids[:start]),
                  reference=tokenizer.decode(ids[start:end], skip_special_tokens=True).rstrip("\n"),
                  prompt_ids=ids[:start])


def _generate_all(accelerator: Any, cfg: TrainConfig, peft_model: Any, tokenizer: Any, adapter: Path, stop: Any,
                  started: float) -> tuple[list[Sample], bool, str]:
    """Both answers to each prompt, a chunk at a time, fine-tune first; stops where the budget or a stop ends it."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    samples, held_out = pick_prompts(cfg, tokenizer)
    set_peft_model_state_dict(peft_model, load_file(adapter / "adapter_model.safetensors"))  # the adapter we ship
    deadline = started + cfg.samples.budget_s
    base = peft_model.get_base_model()
    if base.config._attn_implementation == "varlen":  # reads packed rows only; batched generation pads
        base.set_attn_implementation("sdpa")
    peft_model.eval()
    note = ""
    with _eager(), accelerator.autocast():  # autocast: bf16 base weights meet the fp32 adapter as in training
        for first in range(0, len(samples), CHUNK):
            chunk = samples[first : first + CHUNK]
            for side in ("fine_tune", "base"):
                if stop.requested() or time.monotonic() >= deadline:
                    note = "a stop request" if stop.requested() else f"the {cfg.samples.budget_s:g} s budget"
                    return samples, held_out, note
                with peft_model.disable_adapter() if side == "base" else contextlib.nullcontext():
                    answers = _generate(peft_model, tokenizer, [s.prompt_ids for s in chunk], cfg, deadline, stop)
                for sample, (text, end) in zip(chunk, answers, strict=True):
                    setattr(sample, side, text)
                    setattr(sample, f"{side}_end", end)
    return samples, held_out, note


def _generate(model: Any, tokenizer: Any, prompts: list[list[int]], cfg: TrainConfig, deadline: float,
              stop: Any) -> list[tuple[str, str]]:
    """Greedy answers to left-padded prompts, each with why it ended (a key of ENDS)."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Stopped(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), stop.requested(), dtype=torch.bool, device=input_ids.device)

    device = model.get_input_embeddings().weight.device
    pad = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    eos = _eos_ids(model, tokenizer)
    limit = cfg.samples.max_new_tokens
    out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=limit, do_sample=False,
                         use_cache=True, eos_token_id=eos, pad_token_id=pad,
                         max_time=max(deadline - time.monotonic(), 0.001),
                         stopping_criteria=StoppingCriteriaList([Stopped()]))
    answers = []
    for row in out[:, width:].tolist():
        ended = next((i for i, token in enumerate(row) if token in eos), None)
        tokens = row if ended is None else row[:ended]
        why = "end" if ended is not None else "max_new_tokens" if len(row) >= limit else \
            "stop" if stop.requested() else "budget"
        answers.append((tokenizer.decode(tokens, skip_special_tokens=True), why))
    return answers


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """The model's end-of-sequence ids and the tokenizer's (a chat template ends turns with the latter)."""
    ids = model.generation_config.eos_token_id
    ids = list(ids) if isinstance(ids, list | tuple) else [ids] if ids is not None else []
    return sorted({*ids, *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])})


def _eager() -> contextlib.AbstractContextManager:
    """Compiled layers run eagerly: each new sequence length would recompile them (torch 2.6+)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance else contextlib.nullcontext()


def _write(out: Path, cfg: TrainConfig, samples: list[Sample], held_out: bool, note: str, took: float) -> None:
    rows = [s.row(i, held_out) for i, s in enumerate(samples, 1)]
    (out / JSONL).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    both = sum(s.base is not None for s in samples)
    if cfg.eval is not None and cfg.eval.dataset is not None:
        source = f"the first {len(samples)} answerable records of eval.dataset (held out)"
    elif held_out:
        source = f"{len(samples)} of the records eval.split held out of training"
    else:
        source = (f"the first {len(samples)} answerable records of the training data: NOT held out, the fine-tune "
                  "has trained on them (add an eval section to sample held-out records)")
    lines = [
        "# Samples: the base model and the fine-tune",
        "",
        f"Model `{cfg.base_model_name or cfg.model}` without and with the adapter; greedy decoding, at most "
        f"{cfg.samples.max_new_tokens} new tokens. Prompts: {source}.",
        "",
        f"Generated in {took:.1f} s of a {cfg.samples.budget_s:g} s budget (inference stays down meanwhile)"
        + (f"; stopped by {note} with {both} of {len(samples)} prompts answered by both." if note else "."),
    ]
    for row in rows:
        lines += ["", f"## {row['index']}. {row['where']}", "", "Prompt:", "", _fenced(row["prompt"])]
        if row["reference"]:
            lines += ["", "Reference (the record's answer):", "", _fenced(row["reference"])]
        for side, title in (("base", "Base model"), ("fine_tune", "Fine-tune")):
            if row[side] is None:
                lines += ["", f"{title}: not generated ({note or 'the budget ran out'})."]
            else:
                lines += ["", f"{title} ({ENDS[row[f'{side}_end']]}):", "", _fenced(row[side])]
    (out / MD).write_text("\n".join(lines) + "\n")


def _fenced(text: str) -> str:
    """A code block whose fence is longer than any run of backticks in the text."""
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text}\n{fence}"
