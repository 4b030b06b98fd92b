"""The baseline of bench/consumer.py: HF Trainer + PEFT (+ bitsandbytes NF4) + Liger on the same model folder and
data, at its best settings (packed rows, checkpointing, Liger's fused kernels), each run in its own capped
process that consumer.py starts (`consumer.py hf-worker`, `consumer.py hf-longest-worker`)."""

from __future__ import annotations

import argparse
import itertools
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

LORA = {"rank": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}  # the contract's defaults


def load_hf_model(model_dir: str, method: str, cpu: bool, checkpointing: bool) -> tuple[Any, dict]:
    """The baseline's model: from_pretrained (NF4 for QLoRA), Liger's kernels, checkpointing, PEFT LoRA."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": torch.bfloat16 if not cpu else torch.float32, "attn_implementation": "sdpa"}
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    if not cpu:
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    notes = {"attention": "sdpa"}
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        if not cpu:
            _apply_liger_kernel_to_instance(model=model)  # RMSNorm, SwiGLU, RoPE, fused linear cross-entropy
            notes["liger"] = "all (incl. fused linear cross-entropy)"
            try:  # Liger's patched forward against this transformers version, before the Trainer relies on it
                with torch.no_grad():
                    ids = torch.ones((1, 16), dtype=torch.long, device=model.device)
                    model(input_ids=ids, labels=ids)
            except Exception as err:
                model.forward = type(model).forward.__get__(model)
                notes["liger"] = f"kernels only; fused cross-entropy failed: {type(err).__name__}: {err}"[:200]
    except ImportError:
        notes["liger"] = "not installed"
    model.config.use_cache = False
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=LORA["rank"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"],
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), notes


def hf_examples(model_dir: str, data: str, max_len: int) -> list[dict[str, list[int]]]:
    """Chat template, prompt masked with -100, truncated to max_len (the usual SFT preprocessing)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    out = []
    for line in Path(data).read_text().splitlines():
        messages = json.loads(line)["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids)
        ids = tokenizer(full, add_special_tokens=False).input_ids[:max_len]
        labels = [-100] * min(n_prompt, len(ids)) + ids[n_prompt:]
        if any(t != -100 for t in labels):
            out.append({"input_ids": ids, "labels": labels})
    return out


def hf_worker(args: argparse.Namespace) -> int:
    """HF Trainer, padding-free packing (DataCollatorWithFlattening) of about --hf-tokens tokens per batch."""
    import torch
    from transformers import DataCollatorWithFlattening, Trainer, TrainerCallback, TrainingArguments

    examples = hf_examples(args.model, args.data, args.max_seq_len)
    checkpointing = args.hf_checkpointing == "true"
    model, notes = load_hf_model(args.model, args.method, args.cpu, checkpointing)
    rng = random.Random(0)
    rng.shuffle(examples)
    batches, current, size = [], [], 0
    for e in examples:  # greedy: consecutive examples up to the token budget
        if current and size + len(e["input_ids"]) > int(args.hf_tokens):
            batches.append(current)
            current, size = [], 0
        current.append(e)
        size += len(e["input_ids"])
    batches.append(current)
    flatten = DataCollatorWithFlattening(return_position_ids=True)
    ends: list[tuple[float, int]] = []
    seen: list[int] = []

    def collate(items: list) -> dict:
        seen.append(sum(len(e["input_ids"]) for e in items[0]))
        return flatten(items[0])

    class Timer(TrainerCallback):
        def on_step_end(self, args_, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            ends.append((time.time(), seen[len(ends)] if len(ends) < len(seen) else 0))

    training = TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        max_steps=args.warmup + args.steps,
        per_device_train_batch_size=1,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=1,
        bf16=not args.cpu,
        optim="adamw_torch_fused" if not args.cpu else "adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=args.cpu,
    )
    trainer = Trainer(model=model, args=training, train_dataset=batches, data_collator=collate, callbacks=[Timer()])
    result: dict[str, Any] = {"hf_tokens_per_batch": int(args.hf_tokens), "checkpointing": checkpointing, **notes}
    try:
        trainer.train()
    finally:
        result["step_ends"] = ends
        result["step_s"] = [round(b[0] - a[0], 3) for a, b in itertools.pairwise(ends)]  # to see a slow step
        Path(args.result).write_text(json.dumps(result))
    return 0


# ---------------------------------------------------------------- longest single example


def hf_longest(args: argparse.Namespace) -> int:
    """The baseline's longest single example: one forward+backward per length, ascending, until out of memory."""
    import torch

    model, notes = load_hf_model(args.model, args.method, args.cpu, checkpointing=True)
    model.train()
    device = "cpu" if args.cpu else "cuda"
    vocab = model.get_input_embeddings().num_embeddings
    best, tried = 0, []
    for length in [int(n) for n in args.lengths.split(",")]:
        ids = torch.randint(0, vocab, (1, length), device=device)
        ok = True
        try:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=not args.cpu):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        except torch.OutOfMemoryError:
            ok = False
        loss = None
        model.zero_grad(set_to_none=True)
        if not args.cpu:
            torch.cuda.empty_cache()
        tried.append([length, ok])
        if not ok:
            break
        best = length
    Path(args.result).write_text(json.dumps({"longest": best, "tried": tried, **notes}))
    return 0
