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

from .activations import apply_checkpointing
from .card import write_card
from .checkpoint import STATE_FILE, agreed_checkpoint, name_base
from .config import ConfigError, TrainConfig
from .data import Example, read_records, tokenize_records
from .evaluation import Evaluation, eval_examples, split_data
from .loop import Outcome, StopRequest, Trainer, make_optimizer, make_schedule, total_steps
from .metrics import Metrics, setup_logging
from .mixing import mix
from .model import CausalLMLoss, compile_layers, load_tokenizer, load_training_model
from .packing import BatchPlan
from .samples import write_samples
from .sizing import Sizing, choose_sizing

log = logging.getLogger("runner.train")


def grow_memory_in_place() -> bool:
    """On CUDA, let the caching allocator grow its segments in place (expandable segments) unless the user set
    PYTORCH_CUDA_ALLOC_CONF: fewer cached-but-unusable blocks, so what the allocator holds stays close to what the
    tensors use, which is what a 24 GB card has room for. Returns whether it was turned on."""
    if not torch.cuda.is_available() or "PYTORCH_CUDA_ALLOC_CONF" in os.environ:
        return False
    try:
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    except (AttributeError, RuntimeError) as err:  # an allocator without them (another backend, old driver)
        log.info("allocator: expandable segments not available (%s)", err)
        return False
    return True


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

    grow_memory_in_place()
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
    tokenizer, counts, evaluation = None, None, None
    if examples is None:
        tokenizer = load_tokenizer(cfg)
        records, held = split_data(cfg, read_records(cfg.dataset))
        examples, counts = tokenize_records(mix(records, cfg.dataset, cfg.train.seed), cfg.format, tokenizer,
                                            cfg.train.max_seq_len)
        if held is not None:
            evaluation = Evaluation(eval_examples(held, cfg, tokenizer), cfg.eval)
    elif cfg.eval is not None:
        raise ConfigError("eval needs the trainer to read the dataset itself, not examples passed in")
    # the paths for this model's family (families.py), the model in training mode (the sizing probe too)
    loss_model, features = load_training_model(
        cfg, accelerator.mixed_precision, device, sharded=strategy == "fsdp", fsdp=strategy == "fsdp", model=model
    )
    peft_model = loss_model.model
    name_base(peft_model, cfg.base_model_name or cfg.model)  # what adapter_config.json names as the base
    saved = agreed_checkpoint(cfg.output_dir, accelerator.device) if cfg.resume else None
    if _stop_agreed(accelerator, stop):  # a stop while loading: no sizing probe and no step, nothing to checkpoint
        at = json.loads((saved / STATE_FILE).read_text())["step"] if saved is not None else 0
        metrics.event("stopped", step=at, checkpoint=None)
        return Outcome("stopped", at, None)
    if features.compile:  # before sizing: the probe measures the compiled layers, which keep other activations
        compile_layers(peft_model)
    sizing = _sizing(cfg, accelerator, loss_model, features.packing, strategy, saved)
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
        "attention_reason": features.attention_reason,
        **loss_model.path_info(),
        "family_warning": features.warning,
        "liger": features.liger,
        "compile": features.compile,
        "gradient_checkpointing": sizing.checkpointing,
        "rows_per_micro_batch": sizing.rows,
        "max_seq_len": cfg.train.max_seq_len,
        "grad_accum": cfg.train.grad_accum,
        "examples": len(examples),
        **({"eval_examples": len(evaluation.examples), "eval_tokens": evaluation.tokens} if evaluation else {}),
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
        forward_rows=sizing.forward_rows,
        evaluation=evaluation,
    )
    if saved is not None:
        trainer.resume(saved)
    outcome = trainer.run()
    if outcome.status == "done":  # every rank: the card lists each one's device
        write_card(accelerator, cfg, info, outcome.step, Path(outcome.path))
        write_samples(accelerator, cfg, peft_model, tokenizer, Path(outcome.path), strategy, stop)  # base vs tuned
    return outcome


def _sizing(
    cfg: TrainConfig, accelerator: Any, loss_model: CausalLMLoss, packing: bool, strategy: str, saved: Path | None
) -> Sizing:
    """A resumed run keeps its checkpoint's batch shape (the data position needs it); else probe memory."""
    if saved is not None:
        state = json.loads((saved / STATE_FILE).read_text())
        settings = dataclasses.replace(
            cfg.train, batch_size=state["rows"], gradient_checkpointing=bool(state["checkpointing"])
        )
        sizing = choose_sizing(loss_model, settings, packing, accelerator.device, can_probe=False)
        layers, offload = state.get("checkpointed_layers"), bool(state.get("offload_checkpoints"))
        chunked = bool(state.get("chunked_mlp"))
        if sizing.checkpointing and (layers is not None or offload or chunked):  # as the checkpointed run had it
            apply_checkpointing(loss_model.model, layers, offload, chunked)
            probe = {**sizing.probe, "checkpointed_layers": layers, "offload_checkpoints": offload,
                     "chunked_mlp": chunked}
            sizing = dataclasses.replace(sizing, probe=probe, checkpointed_layers=layers, offload=offload,
                                         chunked_mlp=chunked)
        return dataclasses.replace(sizing, forward_rows=state.get("forward_rows"))
    sizing = choose_sizing(
        loss_model,
        cfg.train,
        packing,
        accelerator.device,
        accelerator.autocast,
        can_probe=strategy != "fsdp",
        world_size=accelerator.num_processes,
    )
    if accelerator.num_processes == 1:
        return sizing
    import torch.distributed as dist

    # Every rank must cut the data the same way: the smallest rows; the most checkpointing any rank needs
    layers = sizing.probe.get("layers", 0)
    mine = sizing.checkpointed_layers if sizing.checkpointed_layers is not None else layers * sizing.checkpointing
    agreed = torch.tensor([sizing.rows, -mine, -int(sizing.offload), -int(sizing.chunked_mlp)],
                          device=accelerator.device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    rows, checkpointed, offload, chunked = int(agreed[0]), -int(agreed[1]), bool(agreed[2] < 0), bool(agreed[3] < 0)
    if (checkpointed, offload, chunked) != (mine, sizing.offload, sizing.chunked_mlp):
        apply_checkpointing(loss_model.model, checkpointed, offload, chunked)
    probe = {**sizing.probe, "checkpointed_layers": checkpointed, "offload_checkpoints": offload,
             "chunked_mlp": chunked}
    return Sizing(rows, checkpointed > 0, probe, checkpointed, offload, chunked)


def _stop_agreed(accelerator: Any, stop: StopRequest) -> bool:
    """Whether any rank was asked to stop; one all-reduce, so every rank leaves together."""
    flag = torch.tensor([float(stop.requested())], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum")[0] > 0)


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
