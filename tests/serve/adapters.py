"""Make LoRA adapters for serve tests: PEFT on the tiny model, random lora_B so outputs change.

Built in a child process: once Ansible's modules are loaded in the test process (other suites run
playbooks in-process), importing torch's compiler through peft fails there.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def make_adapter(model: Path, out: Path, rank: int = 8, seed: int = 0, **lora) -> Path:
    """A PEFT LoRA adapter for MODEL with random lora_B (so it changes the output), saved at OUT."""
    subprocess.run([sys.executable, __file__, str(model), str(out), str(rank), str(seed), json.dumps(lora)],
                   check=True)
    return out


def build(model: str, out: str, rank: int, seed: int, lora: dict) -> None:
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


if __name__ == "__main__":
    build(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), json.loads(sys.argv[5]))
