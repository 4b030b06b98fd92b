"""A real-architecture model folder and a chat dataset for bench/gpu_e2e.sh (no model hub needed).

Run: python bench/e2e_model.py MODEL_DIR DATA_JSONL [--shape 1b|tiny] [--rows N]

1b is the Llama-3.2-1B shape (16 layers, hidden 2048, GQA 32/8 heads, 128,256-entry vocabulary, tied
embeddings), random weights in bf16, built on the GPU when there is one; tiny is make_tiny_model.py's model,
for rehearsing on a CPU. Both use make_tiny_model.py's local byte-level BPE tokenizer (its ids fill the
start of the vocabulary). The dataset is random chat turns over the demo's words.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from make_tiny_model import build_model, build_tokenizer, corpus_lines
from shapes import SHAPES


def llama_1b(tok) -> LlamaForCausalLM:
    shape = {k: v for k, v in SHAPES["1b"].items() if k != "model_type"}
    cfg = LlamaConfig(**{**shape, "max_position_embeddings": 8192}, rms_norm_eps=1e-5,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # random init of 1.2B weights: seconds on a GPU
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    return model.cpu()


def write_dataset(path: Path, rows: int, rng: random.Random) -> None:
    words = sorted({w for line in corpus_lines(random.Random(0)) for w in line.split()})
    with path.open("w", encoding="utf-8") as out:
        for _ in range(rows):
            ask = " ".join(rng.choice(words) for _ in range(rng.randint(5, 40)))
            answer = " ".join(rng.choice(words) for _ in range(rng.randint(20, 200)))
            out.write(json.dumps({"messages": [{"role": "user", "content": ask},
                                               {"role": "assistant", "content": answer}]}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("data")
    parser.add_argument("--shape", choices=("1b", "tiny"), default="1b")
    parser.add_argument("--rows", type=int, default=4000)
    args = parser.parse_args()
    start = time.monotonic()
    out = Path(args.model_dir)
    tok = build_tokenizer(random.Random(0))
    model = llama_1b(tok) if args.shape == "1b" else build_model(tok)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(out)  # whole model or nothing
    write_dataset(Path(args.data), args.rows, random.Random(1))
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.shape} model ({params:,} params) at {out}, {args.rows} rows at {args.data}, "
          f"{time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
