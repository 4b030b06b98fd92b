"""One training session: load data and model, size batches, train, save. Every rank runs this."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from .checkpoint import STATE_FILE, agreed_checkpoint
from .config import ConfigError, TrainConfig
from .data import Example, read_records, tokenize_records
from .loop import Outcome, StopRequest, Trainer, make_optimizer, make_schedule, total_steps
from .metrics import Metrics, setup_logging
from .model import (
    CausalLMLoss,
    compile_layers,
    enable_checkpointing,
    load_base_model,
    load_tokenizer,
    prepare_model,
    resolve_features,
)
from .packing import BatchPlan
from .sizing import Sizing, choose_sizing

log = logging.getLogger("runner.train")


def make_accelerator(collective_timeout_s: float | None = None) -> Any:
    """The launcher's accelerate settings; bf16 falls back to fp16 on GPUs without it. A collective timeout
    (multi-node) makes a rank whose peer is gone fail instead of waiting for torch's default."""
    from accelerate import Accelerator

    settings: dict[str, Any] = {}
    if collective_timeout_s:
        from accelerate.utils import InitProcessGroupKwargs

        settings["kwargs_handlers"] = [InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=collective_timeout_s))]
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if not torch.cuda.is_available():
        settings["cpu"] = True  # without cpu=True, launched CPU ranks would each run alone
    elif precision == "bf16" and not torch.cuda.is_bf16_supported():
        log.warning("bf16 is not supported on this GPU; using fp16")
        settings["mixed_precision"] = "fp16"
    return Accelerator(**settings)


def strategy_name(accelerator: Any) -> str:
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        return "fsdp"
    return "ddp" if accelerator.num_processes > 1 else "single"


def run_session(
    cfg: TrainConfig, model: torch.nn.Module | None = None, examples: list[Example] | None = None
) -> Outcome:
    """Train as configured. A benchmark may pass an in-memory base model and tokenized examples."""
    from accelerate.utils import set_seed

    accelerator = make_accelerator(cfg.collective_timeout_s)
    # One writer per host: each host's supervisor follows its own metrics (multi-node: same global values)
    setup_logging(accelerator.is_local_main_process)
    metrics = Metrics(cfg.metrics_path, accelerator.is_local_main_process)
    stop = StopRequest(cfg.stop_file)
    device = accelerator.device
    strategy = strategy_name(accelerator)
    if strategy == "fsdp" and getattr(accelerator.state.fsdp_plugin, "fsdp_version", 1) != 2:
        raise ConfigError("FSDP training needs fsdp_version: 2 in the accelerate config")
    set_seed(cfg.train.seed)
    features = resolve_features(cfg, device, sharded=strategy == "fsdp")
    tokenizer, counts = None, None
    if examples is None:
        tokenizer = load_tokenizer(cfg)
        records = read_records(cfg.dataset)
        examples, counts = tokenize_records(records, cfg.format, tokenizer, cfg.train.max_seq_len)
    if model is None:
        model = load_base_model(cfg, accelerator.mixed_precision, features, device, fsdp=strategy == "fsdp")
    else:
        model.set_attn_implementation(features.attention)
    peft_model = prepare_model(model, cfg.lora, features)
    # from_pretrained returns eval mode: dropout and activation checkpointing act only in training mode.
    # Everything from here on trains (the sizing probe too, so it measures checkpointing as it will run).
    peft_model.train()
    loss_model = CausalLMLoss(peft_model)
    saved = agreed_checkpoint(cfg.output_dir, accelerator.device) if cfg.resume else None
    sizing = _sizing(cfg, accelerator, loss_model, features.packing, strategy, saved)
    if features.compile:
        compile_layers(peft_model)
    plan = BatchPlan(
        examples,
        packing=features.packing,
        rows=sizing.rows,
        max_seq_len=cfg.train.max_seq_len,
        grad_accum=cfg.train.grad_accum,
        world_size=accelerator.num_processes,
        seed=cfg.train.seed,
    )
    steps = total_steps(plan, cfg.train)
    optimizer = make_optimizer(loss_model, cfg.train, device)
    scheduler = make_schedule(optimizer, steps, cfg.train.warmup_ratio)
    wrapped, optimizer = accelerator.prepare(loss_model, optimizer)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    info = {
        "world_size": accelerator.num_processes,
        "process_index": accelerator.process_index,
        **plan.shard(accelerator.process_index),
        "precision": accelerator.mixed_precision,
        "strategy": strategy,
        "method": cfg.method,
        "packing": features.packing,
        "attention": features.attention,
        "liger": features.liger,
        "compile": features.compile,
        "gradient_checkpointing": sizing.checkpointing,
        "rows_per_micro_batch": sizing.rows,
        "max_seq_len": cfg.train.max_seq_len,
        "grad_accum": cfg.train.grad_accum,
        "examples": len(examples),
        **(counts.start_fields() if counts else {"dropped_examples": 0}),  # dropped and truncated records
        "trainable_params": trainable,
        "device": _device_name(device),
        **sizing.probe,
    }
    trainer = Trainer(
        accelerator=accelerator,
        wrapped=wrapped,
        peft_model=peft_model,
        optimizer=optimizer,
        scheduler=scheduler,
        plan=plan,
        steps=steps,
        settings=cfg.train,
        output_dir=cfg.output_dir,
        metrics=metrics,
        stop=stop,
        tokenizer=tokenizer,
        pad_id=tokenizer.pad_token_id if tokenizer else 0,
        run_info=info,
    )
    if saved is not None:
        trainer.resume(saved)
    return trainer.run()


def _sizing(
    cfg: TrainConfig, accelerator: Any, loss_model: CausalLMLoss, packing: bool, strategy: str, saved: Path | None
) -> Sizing:
    """A resumed run keeps its checkpoint's batch shape (the data position needs it); else probe memory."""
    if saved is not None:
        state = json.loads((saved / STATE_FILE).read_text())
        settings = dataclasses.replace(
            cfg.train, batch_size=state["rows"], gradient_checkpointing=bool(state["checkpointing"])
        )
        return choose_sizing(loss_model, settings, packing, accelerator.device, can_probe=False)
    sizing = choose_sizing(
        loss_model,
        cfg.train,
        packing,
        accelerator.device,
        accelerator.autocast,
        can_probe=strategy != "fsdp",
    )
    if accelerator.num_processes == 1:
        return sizing
    import torch.distributed as dist

    # Every rank must cut the data the same way: the smallest rows, checkpointing if any rank needs it
    agreed = torch.tensor([sizing.rows, -int(sizing.checkpointing)], device=accelerator.device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    rows, checkpointing = int(agreed[0]), bool(agreed[1] < 0)
    if checkpointing and not sizing.checkpointing:
        enable_checkpointing(loss_model.model)
    return Sizing(rows, checkpointing, sizing.probe)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
