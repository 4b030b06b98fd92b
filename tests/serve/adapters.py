"""Make LoRA adapters for serve tests: PEFT on the tiny model, random lora_B so outputs change."""

from __future__ import annotations

from pathlib import Path


def make_adapter(model: Path, out: Path, rank: int = 8, seed: int = 0, **lora) -> Path:
    """A PEFT LoRA adapter for MODEL with random lora_B (so it changes the output), saved at OUT."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM",
                        **lora)
    peft_model = get_peft_model(base, config)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    peft_model.save_pretrained(out)
    return out
