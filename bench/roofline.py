"""A ceiling for a checkpointed LoRA/QLoRA step: the time its matrix products alone take on this GPU.

A microbenchmark (in memory, no model): for a shape of bench/shapes.py and a step of TOKENS tokens it times, in
bf16 with cuBLAS, each product a step with every layer checkpointed runs, at the step's real sizes:
  forward        x @ W^T for q, k, v, o, gate, up, down and the head
  recompute      the layers' forward again, less down_proj (runner.train recomputes inside the compiled layer,
                 where only what backward needs is recomputed; `--recompute-down` counts it too)
  input grads    dy @ W for every projection and the head (the base is frozen: no weight gradients)
It leaves out everything else (attention, norms, 4-bit dequantisation, LoRA's rank-16 products, the optimizer),
so no trainer can beat the ceiling it prints; the baseline's figure from the same call gives the best ratio
any trainer could reach against it.

Run (GPU): python bench/roofline.py --shape 24b --tokens 6144 [--baseline 2595] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import SHAPES


def projections(shape: dict) -> dict[str, tuple[int, int]]:
    """(in, out) features of each layer projection."""
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    heads, kv, dim = shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"]
    return {
        "q": (hidden, heads * dim),
        "k": (hidden, kv * dim),
        "v": (hidden, kv * dim),
        "o": (heads * dim, hidden),
        "gate": (hidden, inter),
        "up": (hidden, inter),
        "down": (inter, hidden),
    }


def timed(a: torch.Tensor, b: torch.Tensor, repeats: int) -> float:
    """Seconds for one a @ b (median of repeats, after a warm-up)."""
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="24b", choices=sorted(SHAPES))
    parser.add_argument("--tokens", type=int, default=6144)
    parser.add_argument("--baseline", type=float, help="the baseline's tokens/s from the same call")
    parser.add_argument("--recompute-down", action="store_true")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("roofline: needs a CUDA GPU", file=sys.stderr)
        return 2
    shape, m = SHAPES[args.shape], args.tokens
    bf16 = {"device": "cuda", "dtype": torch.bfloat16}
    rows = []
    layer_s = 0.0
    for name, (fan_in, fan_out) in projections(shape).items():
        x, w = torch.randn(m, fan_in, **bf16), torch.randn(fan_out, fan_in, **bf16)
        dy = torch.randn(m, fan_out, **bf16)
        forward, grad = timed(x, w.t(), args.repeats), timed(dy, w, args.repeats)
        recompute = forward if (name != "down" or args.recompute_down) else 0.0
        layer_s += forward + recompute + grad
        flops = 2 * m * fan_in * fan_out
        rows.append({"proj": name, "forward_tflops": round(flops / forward / 1e12),
                     "grad_tflops": round(flops / grad / 1e12)})
        del x, w, dy
    hidden, vocab = shape["hidden_size"], shape["vocab_size"]
    h, head, dlogits = torch.randn(m, hidden, **bf16), torch.randn(vocab, hidden, **bf16), torch.randn(m, vocab, **bf16)
    head_s = timed(h, head.t(), args.repeats) + timed(dlogits, head, args.repeats)
    step_s = shape["num_hidden_layers"] * layer_s + head_s
    ceiling = m / step_s
    result = {
        "shape": args.shape,
        "tokens": m,
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "recompute_down": args.recompute_down,
        "products": rows,
        "step_products_s": round(step_s, 4),
        "ceiling_tokens_per_s": round(ceiling),
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.baseline:
        result["baseline_tokens_per_s"] = args.baseline
        result["ceiling_over_baseline"] = round(ceiling / args.baseline, 2)
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with (args.out / "roofline.jsonl").open("a") as out:
            out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
