"""Checkpoints and the final adapter: written to a temp dir, then renamed, so only complete ones exist."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .disk import space_for

STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint
TRAINABLE_FILE = "trainable.safetensors"  # FSDP only: full trainable tensors by the wrapped module's names
KEEP = 2
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def save_checkpoint(
    accelerator: Any,
    wrapped: nn.Module,
    peft_model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    output_dir: str | Path,
) -> Path:
    """All ranks call this; returns the checkpoint's final path. Keeps the newest KEEP checkpoints.

    Each host (its local rank 0) keeps its own copy, so every host of a multi-node job can resume: the
    state and scheduler everywhere, the weights and optimizer everywhere under DDP (identical on every
    rank), and on rank 0 only under FSDP (it loads them and scatters them to the shards).
    """
    final = Path(output_dir) / f"checkpoint-{state['step']}"
    tmp = final.with_name(f".tmp-{final.name}")
    local_main = accelerator.is_local_main_process
    sharded = is_fsdp(accelerator)
    writes_weights = accelerator.is_main_process or (local_main and not sharded)
    what = f"checkpoint {state['step']}"
    if local_main:
        shutil.rmtree(tmp, ignore_errors=True)
        with space_for(what, tmp):
            tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    trainable = gather_trainable(wrapped) if sharded else None  # collectives: every rank takes part
    optimizer_state = gather_optimizer_state(wrapped, optimizer) if sharded else optimizer.state_dict()
    with space_for(what, tmp):
        torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
        if writes_weights:
            peft_model.save_pretrained(tmp, state_dict=_peft_keys(trainable), save_embedding_layers=False)
            if trainable is not None:
                from safetensors.torch import save_file

                save_file(trainable, tmp / TRAINABLE_FILE)
            torch.save(optimizer_state, tmp / "optimizer.pt")
        if local_main:
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    if local_main:
        with space_for(what, tmp):
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        _replace(tmp, final)
        for old in checkpoints(output_dir)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def agreed_checkpoint(output_dir: str | Path, device: torch.device) -> Path | None:
    """The newest checkpoint every rank has (hosts of a multi-node job may have stopped one apart);
    a collective when several ranks run: all call it."""
    found = {int(_NAME.match(p.name).group(1)): p for p in checkpoints(output_dir)}
    newest = max(found, default=0)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        agreed = torch.tensor(newest, dtype=torch.int64, device=device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        newest = int(agreed)
    if newest and newest not in found:
        raise FileNotFoundError(f"checkpoint-{newest}, the newest every host has, is missing from {output_dir}")
    return found.get(newest)


def load_checkpoint(
    accelerator: Any, path: Path, wrapped: nn.Module, peft_model: nn.Module, optimizer: Any, scheduler: Any
) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and this rank's RNG; returns the saved trainer state."""
    if is_fsdp(accelerator):
        _load_sharded(accelerator, path, wrapped, optimizer)
    else:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        device = next(p.device for p in peft_model.parameters() if p.requires_grad)
        set_peft_model_state_dict(peft_model, load_file(path / "adapter_model.safetensors", device=str(device)))
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-{accelerator.process_index}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((path / STATE_FILE).read_text())


def name_base(peft_model: nn.Module, name: str) -> None:
    """Every adapter and checkpoint saved from here names `name` as its base (adapter_config.json's
    base_model_name_or_path): the model as the job named it, which the user's machine can load, not the
    folder the host staged it in."""
    for config in peft_model.peft_config.values():
        config.base_model_name_or_path = name


def save_adapter(
    accelerator: Any, wrapped: nn.Module, peft_model: nn.Module, tokenizer: Any, output_dir: str | Path
) -> Path:
    """The final PEFT adapter (+ tokenizer) at output_dir/adapter; all ranks call this."""
    final = Path(output_dir) / "adapter"
    tmp = final.with_name(".tmp-adapter")
    trainable = gather_trainable(wrapped) if is_fsdp(accelerator) else None
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        with space_for("the adapter", tmp):
            peft_model.save_pretrained(tmp, state_dict=_peft_keys(trainable), save_embedding_layers=False)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        _replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def is_fsdp(accelerator: Any) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def gather_trainable(wrapped: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copies of the trainable (LoRA) tensors, keyed by the wrapped module's names; a collective.

    Only these small tensors are gathered: frozen (possibly 4-bit) base weights stay sharded.
    """
    gathered = {}
    for name, param in wrapped.named_parameters():  # the same order on every rank
        if param.requires_grad:
            full = param.full_tensor() if hasattr(param, "full_tensor") else param  # FSDP2 shards are DTensors
            gathered[name] = full.detach().to("cpu", copy=True).contiguous()
    return gathered


def gather_optimizer_state(wrapped: nn.Module, optimizer: Any) -> dict[str, Any]:
    """The full optimizer state on rank 0 (empty elsewhere), keyed by parameter name; a collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    return get_optimizer_state_dict(wrapped, inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _load_sharded(accelerator: Any, path: Path, wrapped: nn.Module, optimizer: Any) -> None:
    """Rank 0 reads the full trainable and optimizer state; FSDP scatters it to the shards."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    main = accelerator.is_main_process
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
    set_model_state_dict(wrapped, load_file(path / TRAINABLE_FILE) if main else {}, options=options)
    inner = getattr(optimizer, "optimizer", optimizer)
    state = torch.load(path / "optimizer.pt", weights_only=True) if main else {}
    set_optimizer_state_dict(wrapped, inner, state, options=options)


def _peft_keys(trainable: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
    """The wrapped module's names as PEFT's (CausalLMLoss holds the PEFT model as .model); None: PEFT reads its own."""
    if trainable is None:
        return None
    return {k.removeprefix("model."): v for k, v in trainable.items()}


def _replace(tmp: Path, final: Path) -> None:
    """Rename tmp to final; an existing final is moved aside first and removed after."""
    old = final.with_name(f".old-{final.name}")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _rng_state() -> dict[str, torch.Tensor | None]:
    return {
        "cpu": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
    }
