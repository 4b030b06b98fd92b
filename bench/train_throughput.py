"""Training throughput: the seed's recipe against runner.train, same GPU, same synthetic data, same run.

Models are built from configs with random weights (no downloads): Llama-3.2-1B and Llama-3.1-8B shapes,
and the Mistral-Small-24B shape for the QLoRA memory check. Examples are random tokens with lengths
~ lognormal(mu=5.5, sigma=0.8) clipped to [16, 2048]; a random 20-80 % tail of each is the response (loss
there only). tokens/s counts the non-pad tokens of the examples trained on, after warm-up steps.

Each run is its own process, so one run's memory and compiled code never help another. Prints one JSON
line per run, then the ratio of ours to the seed's recipe; with --out, also appends them to DIR/results.jsonl.

Run:  python bench/train_throughput.py --models 1b,8b --out /tmp/bench
      python bench/train_throughput.py --one ours --model 8b --set liger=false --set compile=false
      python bench/train_throughput.py --one ours --model 24b --qlora --memory-gib 24 --set max_seq_len=2048
      python bench/train_throughput.py --models tiny          (CPU smoke test)
      accelerate launch --config_file CFG.yaml bench/train_throughput.py --one ours --model 8b --steps 4,8
      (several ranks, one GPU each: each trains its own share of the examples; tokens/s is over all ranks,
      and rank 0 prints the JSON line with every rank's peak memory; bench/multi_gpu.py drives this)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from shapes import SHAPES  # noqa: E402 - the shapes shared with the tests (bench/shapes.py)

LORA = {"rank": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}  # the contract's defaults
SEED_STEPS = (3, 12)  # (warm-up, timed) optimizer steps of the seed's recipe, 4 examples each
OUR_STEPS = (4, 12)  # ours: each step is one packed micro-batch sized from free memory
PEAK_TFLOPS = {"H100": 989, "H200": 989, "A100": 312, "4090": 165, "3090": 71}  # dense bf16 datasheet figures



def synthetic_examples(count: int, vocab: int, max_len: int = 2048, seed: int = 0) -> list:
    """Instruction-tuning length mix: lognormal lengths, the response a random tail of each example."""
    from runner.train.data import IGNORE, Example

    gen = torch.Generator().manual_seed(seed)
    lengths = torch.empty(count).log_normal_(5.5, 0.8, generator=gen).round().clamp(16, max_len).long().tolist()
    examples = []
    for n in lengths:
        ids = torch.randint(0, vocab, (n,), generator=gen).tolist()
        prompt = int(n * (0.2 + 0.6 * torch.rand((), generator=gen).item()))
        examples.append(Example(ids, [IGNORE] * prompt + ids[prompt:]))
    return examples


def build_model(name: str, device: torch.device, qlora: bool) -> torch.nn.Module:
    """A randomly initialised model of the named shape, in the training dtype, on the device."""
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = dict(SHAPES[name])
    config = AutoConfig.for_model(shape.pop("model_type"), **shape)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if qlora:
        quantize_linears(model)
    return model


def quantize_linears(model: torch.nn.Module) -> None:
    """Replace every linear layer but the head with a bitsandbytes NF4 layer (double quant, bf16 storage)."""
    import bitsandbytes as bnb

    head = model.get_output_embeddings()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear and child is not head:
                layer = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=torch.bfloat16,
                    compress_statistics=True,
                    quant_type="nf4",
                    quant_storage=torch.bfloat16,
                    device="meta",
                )
                weight = bnb.nn.Params4bit(
                    child.weight.data,
                    requires_grad=False,
                    compress_statistics=True,
                    quant_type="nf4",
                    quant_storage=torch.bfloat16,
                    module=layer,
                )
                layer.weight = weight.to(child.weight.device)
                setattr(parent, name, layer)
    model.is_loaded_in_4bit = True  # PEFT picks its 4-bit LoRA layers by this flag
    torch.cuda.empty_cache()


def run_seed(args: argparse.Namespace, model: torch.nn.Module, examples: list) -> dict:
    """The seed's recipe: HF Trainer + PEFT LoRA, batch 1, grad accum 4, no packing, bf16 where supported."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainerCallback, TrainingArguments

    warm, timed = SEED_STEPS
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=LORA["rank"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    seen = {"tokens": 0}

    def collate(batch: list) -> dict:
        seen["tokens"] += sum(len(e.input_ids) for e in batch)
        return {
            "input_ids": torch.tensor([e.input_ids for e in batch]),
            "labels": torch.tensor([e.labels for e in batch]),
            "attention_mask": torch.ones(len(batch), len(batch[0].input_ids), dtype=torch.long),
        }

    clock: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args_, state, control, **kwargs):
            if state.global_step == warm:
                _sync()
                clock.update(start=time.perf_counter(), tokens=seen["tokens"])

        def on_step_end(self, args_, state, control, **kwargs):
            if state.global_step == warm + timed:
                _sync()
                clock.update(end=time.perf_counter(), tokens=seen["tokens"] - clock["tokens"])

    with tempfile.TemporaryDirectory() as tmp:
        training = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=4,
            max_steps=warm + timed,
            learning_rate=2e-4,
            bf16=torch.cuda.is_available(),
            save_strategy="no",
            report_to=[],
            logging_steps=1000,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            seed=0,
        )
        Trainer(
            model=peft_model, args=training, train_dataset=examples, data_collator=collate, callbacks=[Timer()]
        ).train()
    seconds = clock["end"] - clock["start"]
    return {
        "tokens_per_s": clock["tokens"] / seconds,
        "timed_steps": timed,
        "timed_tokens": clock["tokens"],
        "settings": {"batch_size": 1, "grad_accum": 4, "packing": False, "bf16": torch.cuda.is_available()},
    }


def run_ours(args: argparse.Namespace, model: torch.nn.Module, examples: list) -> dict:
    """runner.train itself (run_session), on the in-memory model and examples."""
    from runner.train.config import parse_config
    from runner.train.session import run_session

    warm, timed = args.steps or OUR_STEPS
    os.environ.setdefault("ACCELERATE_MIXED_PRECISION", "bf16" if torch.cuda.is_available() else "no")
    train = {"max_steps": warm + timed, "max_seq_len": 2048, "save_steps": 10**6, **dict(args.set)}
    with tempfile.TemporaryDirectory() as tmp:
        metrics = Path(tmp) / "metrics.jsonl"
        cfg = parse_config(
            {
                "model": "(in memory)",
                "dataset": "(synthetic)",
                "output_dir": f"{tmp}/out",
                "metrics_path": str(metrics),
                "method": "qlora" if args.qlora else "lora",
                "lora": LORA,
                "train": train,
            }
        )
        run_session(cfg, model=model, examples=examples)
        if not metrics.exists():  # only rank 0 writes metrics
            return {}
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
    start = next(r for r in records if r.get("event") == "start")
    steps = [r for r in records if "step" in r and "event" not in r]
    # time-weighted mean of the per-step rates = timed tokens over timed seconds
    spans = [(b["time"] - a["time"], b["tokens_per_s"]) for a, b in zip(steps[warm - 1 :], steps[warm:], strict=False)]
    seconds = sum(s for s, _ in spans)
    tokens = sum(s * rate for s, rate in spans)
    return {
        "tokens_per_s": tokens / seconds,
        "timed_steps": len(spans),
        "timed_tokens": round(tokens),
        "final_loss": steps[-1]["loss"],
        "settings": {k: v for k, v in start.items() if k not in ("event", "time")},
    }


def one_run(args: argparse.Namespace) -> dict | None:
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:  # launched: one GPU per rank
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    model = build_model(args.model, device, args.qlora)
    if args.memory_gib and device.type == "cuda":  # simulate a smaller card (after the bf16 build is gone)
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(args.memory_gib * 2**30 / total, device)
    # a 4-bit weight packs (bits of its storage element / 4) values per element
    params = sum(
        p.numel() * (p.element_size() * 2 if getattr(p, "quant_state", None) is not None else 1)
        for p in model.parameters()
    )
    max_len = dict(args.set).get("max_seq_len", 2048)
    examples = synthetic_examples(4000, SHAPES[args.model]["vocab_size"], max_len)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    training_peak = watch_training_peak(device)
    result = (run_seed if args.one == "seed" else run_ours)(args, model, examples)
    ranks = gather_ranks(
        {
            **training_peak(),
            "device": str(device),
        }
    )
    if not result:
        return None
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in gpu), None)
    return {
        "run": args.one,
        "model": args.model,
        "qlora": args.qlora,
        **result,
        "mfu": round(4 * params * result["tokens_per_s"] / (len(ranks) * peak * 1e12), 4) if peak else None,
        "mfu_basis": f"4 x {params / 1e9:.2f}B params x tokens/s over {len(ranks)} x {peak} TFLOP/s" if peak else None,
        "peak_mem_gib": ranks[0]["peak_mem_gib"],
        "memory_limit_gib": args.memory_gib,
        "world_size": len(ranks),
        "ranks": ranks,
        "gpu": gpu,
        **versions(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def watch_training_peak(device: torch.device):
    """Memory held when training starts (after sizing and sharding) and its peak from there; returns a reader."""
    from runner.train.loop import Trainer

    seen: dict[str, float] = {}
    if device.type != "cuda":
        return lambda: {"peak_mem_gib": None}
    run = Trainer.run

    def run_from_a_clean_peak(self):
        seen["setup_peak"] = torch.cuda.max_memory_allocated(device)  # sizing probe, sharding
        torch.cuda.reset_peak_memory_stats(device)
        seen["train_start"] = torch.cuda.memory_allocated(device)
        try:
            return run(self)
        finally:
            seen["train_peak"] = torch.cuda.max_memory_allocated(device)

    Trainer.run = run_from_a_clean_peak

    def read() -> dict:
        found = {f"{k}_mem_gib": round(v / 2**30, 2) for k, v in seen.items()}
        return {"peak_mem_gib": max(found.values(), default=None), **found}

    return read


def gather_ranks(mine: dict) -> list[dict]:
    """Every rank's dict, in rank order (just this one's when not distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return everyone


def versions() -> dict:
    import importlib.metadata as md

    found = {}
    for name in ("torch", "transformers", "peft", "accelerate", "liger-kernel", "bitsandbytes", "triton"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return {"versions": found, "cuda": torch.version.cuda}


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def compare(args: argparse.Namespace) -> None:
    """For each model: the seed's recipe, then ours, each in a fresh process; then the ratio."""
    out = Path(args.out) if args.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    for model in args.models.split(","):
        results = {}
        for recipe in ("seed", "ours"):
            cmd = [sys.executable, __file__, "--one", recipe, "--model", model]
            cmd += [a for kv in args.set for a in ("--set", f"{kv[0]}={json.dumps(kv[1])}")]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith('{"run"')]
            if proc.returncode or not lines:
                print(json.dumps({"run": recipe, "model": model, "error": (proc.stderr or proc.stdout)[-2000:]}))
                continue
            results[recipe] = json.loads(lines[-1])
            emit(lines[-1], out)
        if len(results) == 2:
            ratio = results["ours"]["tokens_per_s"] / results["seed"]["tokens_per_s"]
            emit(json.dumps({"ratio": round(ratio, 2), "model": model, "gpu": results["ours"]["gpu"]}), out)


def emit(line: str, out: Path | None) -> None:
    print(line, flush=True)
    if out:
        with (out / "results.jsonl").open("a") as f:
            f.write(line + "\n")


def parse_setting(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parse_steps(text: str) -> tuple[int, int]:
    warm, timed = (int(n) for n in text.split(","))
    return warm, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="1b,8b", help="comma-separated shapes to compare")
    parser.add_argument("--one", choices=("seed", "ours"), help="run one recipe in this process")
    parser.add_argument("--model", default="8b", choices=sorted(SHAPES))
    parser.add_argument("--qlora", action="store_true", help="NF4 base weights (needs bitsandbytes)")
    parser.add_argument("--memory-gib", type=float, help="cap this process's GPU memory (simulates a smaller card)")
    parser.add_argument("--set", action="append", type=parse_setting, default=[], help="train.KEY=VALUE for ours")
    parser.add_argument("--steps", type=parse_steps, help="WARM,TIMED optimizer steps for ours (default 4,12)")
    parser.add_argument("--out", help="folder for results.jsonl")
    args = parser.parse_args()
    if args.one:
        result = one_run(args)
        if result is not None:  # rank 0 only
            print(json.dumps(result), flush=True)
    else:
        compare(args)


if __name__ == "__main__":
    main()
