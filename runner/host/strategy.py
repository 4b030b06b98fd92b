"""Pick DDP or FSDP for a session from the model's weight size and the smallest GPU's memory. Imports no torch.

DDP keeps a full copy of the base weights on every GPU; FSDP shards them, so it is the one way to train a
model whose weights do not fit the smallest GPU (it pools VRAM), at the cost of gathering each layer's
weights in every step. So: DDP where a full copy fits each GPU's budget, FSDP otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
FIXED_GIB = 1.5  # per GPU: CUDA context, NCCL buffers, allocator slack
ACTIVATION_SHARE = 0.25  # of each GPU kept for activations, LoRA weights, their gradients and optimizer state
NF4_BYTES_PER_PARAM = 0.5 * 1.03  # 4 bits, plus the double-quantized block scales (~3 %)
BYTES_PER_DTYPE = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Strategy:
    name: str  # "ddp" or "fsdp": the accelerate config's strategy
    reason: str  # one line, for the user and the session log
    weights_gib: float  # the base weights as trained (4-bit linears for qlora), one full copy
    per_gpu_gib: float  # what each GPU holds of them under this strategy
    budget_gib: float  # what each GPU can give the base weights
    fits: bool  # False: even this strategy is over the budget; the run will likely run out of memory


def choose_strategy(model_dir: str | Path, method: str, gpu_memory_gib: list[float]) -> Strategy:
    """DDP where the model's weights fit the smallest GPU's budget, else FSDP; says why in one line."""
    weights, embeddings = model_weight_bytes(Path(model_dir))
    if method == "qlora":  # linear layers go to NF4; embeddings and the head stay 16-bit
        weights = embeddings + (weights - embeddings) // 2 * NF4_BYTES_PER_PARAM
    smallest = min(gpu_memory_gib)
    count = len(gpu_memory_gib)
    budget = smallest * (1 - ACTIVATION_SHARE) - FIXED_GIB
    full = weights / GIB
    kind = "4-bit" if method == "qlora" else "16-bit"
    rule = f"{smallest:.1f} GiB x {1 - ACTIVATION_SHARE:.2f} - {FIXED_GIB} GiB"
    if full <= budget or count == 1:
        fits = full <= budget
        verdict = "each GPU trains a full copy" if fits else "it does not fit one GPU: use qlora or more GPUs"
        return Strategy(
            "ddp",
            f"ddp: {kind} weights {full:.1f} GiB vs the smallest GPU's budget {budget:.1f} GiB ({rule}): {verdict}",
            round(full, 2),
            round(full, 2),
            round(budget, 2),
            fits,
        )
    shard = full / count
    fits = shard <= budget
    verdict = "fits" if fits else "still over: use qlora or more GPUs"
    return Strategy(
        "fsdp",
        f"fsdp: {kind} weights {full:.1f} GiB exceed the smallest GPU's budget {budget:.1f} GiB ({rule});"
        f" sharded over {count} GPUs, {shard:.1f} GiB each: {verdict}",
        round(full, 2),
        round(shard, 2),
        round(budget, 2),
        fits,
    )


def model_weight_bytes(model_dir: Path) -> tuple[int, int]:
    """(all base weights, the embedding and head) in bytes at 16 bits a parameter.

    From the safetensors index's total_size, else the safetensors files' sizes, else counted from config.json.
    """
    config = json.loads((model_dir / "config.json").read_text())
    config = config.get("text_config", config)  # multimodal configs nest the language model's
    stored = BYTES_PER_DTYPE.get(str(config.get("torch_dtype") or config.get("dtype") or "bfloat16"), 2)
    embeddings = 2 * embedding_params(config)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        total = json.loads(index.read_text())["metadata"]["total_size"]
    elif files := sorted(model_dir.glob("*.safetensors")):
        total = sum(f.stat().st_size for f in files)  # headers are a few KiB of these GiBs
    else:
        return 2 * config_params(config), embeddings
    return total * 2 // stored, embeddings  # trained in 16 bits whatever the stored precision


def embedding_params(config: dict) -> int:
    table = config["vocab_size"] * config["hidden_size"]
    return table if config.get("tie_word_embeddings") else 2 * table


def config_params(config: dict) -> int:
    """Parameters of a decoder-only transformer (Llama/Mistral/Qwen shape) from its config."""
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv_heads = config.get("num_key_value_heads") or heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q and o, k and v
    mlp = 3 * hidden * config["intermediate_size"]  # gate, up, down
    return embedding_params(config) + layers * (attention + mlp + 2 * hidden) + hidden
