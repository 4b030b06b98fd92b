"""Checkpoints and the final adapter: written to a temp dir, then renamed, so only complete ones exist."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

STATE_FILE = "trainer_state.json"  # written last: its presence marks a complete checkpoint
KEEP = 2
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(
    accelerator: Any,
    wrapped: nn.Module,
    peft_model: nn.Module,
    optimizer: Any,
    scheduler: Any,
    state: dict[str, Any],
    output_dir: str | Path,
) -> Path:
    """All ranks call this; returns the checkpoint's final path. Keeps the newest KEEP checkpoints."""
    final = Path(output_dir) / f"checkpoint-{state['step']}"
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    adapter = adapter_state_dict(accelerator, wrapped)
    torch.save(_rng_state(), tmp / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        peft_model.save_pretrained(tmp, state_dict=adapter, save_embedding_layers=False)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        _replace(tmp, final)
        for old in checkpoints(output_dir)[:-KEEP]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(path: Path, peft_model: nn.Module, optimizer: Any, scheduler: Any, rank: int) -> dict[str, Any]:
    """Restore adapter weights, optimizer, scheduler and this rank's RNG; returns the saved trainer state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    device = next(p.device for p in peft_model.parameters() if p.requires_grad)
    set_peft_model_state_dict(peft_model, load_file(path / "adapter_model.safetensors", device=str(device)))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.is_file():
        rng = torch.load(rng_file, weights_only=True)
        torch.set_rng_state(rng["cpu"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    return json.loads((path / STATE_FILE).read_text())


def save_adapter(
    accelerator: Any, wrapped: nn.Module, peft_model: nn.Module, tokenizer: Any, output_dir: str | Path
) -> Path:
    """The final PEFT adapter (+ tokenizer) at output_dir/adapter; all ranks call this."""
    final = Path(output_dir) / "adapter"
    tmp = final.with_name(".tmp-adapter")
    adapter = adapter_state_dict(accelerator, wrapped)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        peft_model.save_pretrained(tmp, state_dict=adapter, save_embedding_layers=False)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def adapter_state_dict(accelerator: Any, wrapped: nn.Module) -> dict[str, torch.Tensor] | None:
    """Under FSDP the shards are gathered (a collective: all ranks call); otherwise PEFT reads its own."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.FSDP:
        return None
    full = accelerator.get_state_dict(wrapped)
    prefix = "model."  # CausalLMLoss holds the PEFT model as .model
    return {k[len(prefix) :]: v for k, v in full.items() if "lora_" in k}


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
