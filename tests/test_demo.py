"""The demo session end to end through ansible-runner on localhost, and --dry-run changing nothing."""

import json

import pytest
from helpers import REPO, run_runner

DEMO = REPO / "examples" / "demo.yaml"


@pytest.mark.slow
def test_demo_session_trains_and_brings_back_a_usable_adapter(home, tiny_model):
    result = run_runner("train", str(DEMO), "--set", "train.max_steps=30")
    assert result.returncode == 0, result.stderr + result.stdout
    run_dir = next((home / "runs").iterdir())
    host_dir = run_dir / "localhost"
    status = json.loads((host_dir / "status.json").read_text())
    assert status["outcome"] == "succeeded"
    phases = {p["name"]: p for p in status["phases"]}
    assert phases["power"]["outcome"] == "skipped" and "no NVIDIA GPU" in phases["power"]["detail"]
    assert "no inference service configured" in phases["inference"]["detail"]
    losses = [json.loads(line)["loss"] for line in (host_dir / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert losses[-1] < losses[0]
    assert "adapter at" in result.stdout and str(run_dir) in result.stdout
    assert (host_dir / "session.png").stat().st_size > 1000

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(base, host_dir / "adapter")
    ids = torch.tensor([[1, 5, 9, 14]])
    with torch.no_grad():
        peft_logits = model(ids).logits
        merged = model.merge_and_unload()
        assert not any("lora" in name for name, _ in merged.named_parameters())
        assert torch.allclose(peft_logits, merged(ids).logits, atol=1e-4)


def test_dry_run_prints_the_plan_and_changes_nothing(home, tiny_model):
    result = run_runner("train", str(DEMO), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "[localhost]" in result.stdout and "processes: 1 on the CPU (no GPU found), fp32" in result.stdout
    assert "steps: 40 (train.max_steps; it overrides epochs: 1), about " in result.stdout
    assert "nothing was changed" in result.stdout
    assert not (home / "training").exists() and not (home / "runs").exists()
