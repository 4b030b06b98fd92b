"""What a localhost `runner train` leaves in the run folder is usable as it is: the adapter loads by its own
config (AutoPeftModelForCausalLM finds the base the job named), its card says what was trained, and
`tensorboard --logdir runs/` shows the session."""

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import REPO, run_runner

JOB = """
model: ./models/tiny-chat          # on this machine: uploaded, so the host trains from its own copy
dataset: ./data/demo.jsonl
format: chat
lora: {rank: 8, alpha: 16, dropout: 0.0}
train: {max_steps: 12, learning_rate: 0.01, batch_size: 8, max_seq_len: 128, save_steps: 5}
output: {fetch: adapter}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensorboard_scalars(logdir: Path, cwd: Path, run: str, tag: str) -> list[list[float]]:
    """`tensorboard --logdir runs/` as the README says, asked over its HTTP API for one run's scalars."""
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", str(logdir), "--port",
                               str(port), "--host", "127.0.0.1"], cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    query = urllib.parse.urlencode({"run": run, "tag": tag})
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?{query}") as r:
                    found = json.loads(r.read())
                if found:
                    return found
            except OSError:
                pass  # still starting, or the run not loaded yet
            assert server.poll() is None, "tensorboard exited"
            time.sleep(1)
        raise AssertionError(f"tensorboard showed no {tag} for {run}")
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
def test_a_sessions_adapter_loads_by_itself_and_tensorboard_shows_the_run(home, tiny_model):
    import torch
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    shutil.copytree(tiny_model, home / "models" / "tiny-chat")
    (home / "data").mkdir(exist_ok=True)
    shutil.copy(REPO / "examples" / "data" / "demo.jsonl", home / "data" / "demo.jsonl")
    (home / "job.yaml").write_text(JOB)
    result = run_runner("train", "job.yaml", cwd=home, timeout=900)
    assert result.returncode == 0, result.stderr + result.stdout
    run_dir = next((home / "runs").iterdir())
    adapter = run_dir / "localhost" / "adapter"
    users_model = str((home / "models" / "tiny-chat").resolve())  # what the job named, resolved on this machine
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == users_model

    ids = torch.tensor([[1, 5, 9, 14, 27]])
    with torch.no_grad():
        loaded = AutoPeftModelForCausalLM.from_pretrained(adapter)(ids).logits
        expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), adapter)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model)(ids).logits
    assert torch.allclose(loaded, expected, atol=1e-5) and not torch.allclose(loaded, base, atol=1e-3)

    text = (adapter / "README.md").read_text()
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["base_model"] == users_model and front["library_name"] == "peft"
    assert "| steps done | 12 |" in text and "| dataset | `demo.jsonl` |" in text

    metrics = [json.loads(line) for line in (run_dir / "localhost" / "metrics.jsonl").read_text().splitlines()]
    steps = [(m["step"], m["loss"]) for m in metrics if "loss" in m and "event" not in m]
    assert f"localhost: TensorBoard events in {run_dir / 'localhost' / 'tensorboard'}" in result.stdout
    shown = tensorboard_scalars(Path("runs"), home, f"{run_dir.name}/localhost/tensorboard", "train/loss")
    assert [(step, pytest.approx(value, rel=1e-6)) for _, step, value in shown] == steps
    assert len(steps) == 12

    samples = [json.loads(line) for line in (run_dir / "localhost" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and not any(s["held_out"] for s in samples)  # no eval section: training records, marked
    assert all(s["base"] is not None and s["fine_tune"] is not None for s in samples)
    assert f"localhost: samples (base model vs fine-tune) at {run_dir / 'localhost' / 'samples.md'}" in result.stdout
