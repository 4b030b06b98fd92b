"""The model folders and chat data bench/consumer.py trains on: a real shape's config with random weights saved as
safetensors beside the tiny-chat tokenizer and chat template, and conversations of single-token words."""

from __future__ import annotations

import datetime
import json
import random
import shutil
import time
from pathlib import Path

from shapes import SHAPES

REPO = Path(__file__).resolve().parents[1]
TOKENIZER = REPO / "examples" / "models" / "tiny-chat"  # its tokenizer and chat template go into every folder


def log(*parts: object) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}]", *parts, flush=True)


def build(shape: str, folder: Path) -> None:
    """Random weights of the real shape, in bf16 (on the GPU when there is one), saved as a session reads them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    spec = dict(SHAPES[shape])
    config = AutoConfig.for_model(
        spec.pop("model_type"),
        **spec,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.time()
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, max_shard_size="5GB")
    tokenizer.save_pretrained(tmp)
    tmp.rename(folder)
    size = sum(f.stat().st_size for f in folder.iterdir()) / 2**30
    params = sum(p.numel() for p in model.parameters())
    log(f"built {shape}: {params / 1e9:.2f}B params, {size:.1f} GiB at {folder} in {time.time() - start:.0f} s")


def one_token_words(model: Path) -> list[str]:
    """Words the tokenizer keeps as one token after a space, so a text of n words is about n tokens."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    words = []
    for token in tokenizer.get_vocab():
        one = token.startswith("Ġ") and token[1:].isalpha() and len(token) > 2
        if one and len(tokenizer(" " + token[1:], add_special_tokens=False).input_ids) == 1:
            words.append(token[1:])
    return sorted(words)


def write_data(model: Path, out: Path, count: int, max_len: int, exact: int | None = None, seed: int = 0) -> None:
    """Chat JSONL: lognormal lengths (or `exact` tokens each), the reply a random 20-80 % tail."""
    import torch

    words = one_token_words(model)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    if exact:
        lengths = [exact] * count
    else:
        lengths = torch.empty(count).log_normal_(5.5, 0.8, generator=gen).round().clamp(16, max_len).long().tolist()
    margin = 12  # the template's role and end tokens
    with out.open("w") as f:
        for n in lengths:
            body = max(n - margin, 4)
            prompt = max(1, int(body * rng.uniform(0.2, 0.8)))
            user = " ".join(rng.choice(words) for _ in range(prompt))
            reply = " ".join(rng.choice(words) for _ in range(body - prompt))
            f.write(
                json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]})
            )
            f.write("\n")
    log(f"{count} conversations, {sum(lengths)} tokens at {out}")


# ---------------------------------------------------------------- running a capped process
