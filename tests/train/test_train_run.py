"""The trainer end to end on CPU: `python -m runner.train` and `accelerate launch`, stop, resume."""

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from conftest import trainer_config
from launching import finish, launch, stop_after_first_step
from safetensors.torch import load_file

STOP_RESUME_LORA = {"rank": 8, "alpha": 16, "dropout": 0.1}  # dropout: the RNG must be restored too
STOP_RESUME_TRAIN = {"max_steps": 30, "save_steps": 100}


def adapter_weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(path / "adapter_model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model) -> dict[str, torch.Tensor]:
    """The adapter weights of the 30-step run never stopped, which each stopped and resumed run must match."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    finish(launch(trainer_config(folder, tiny_model, STOP_RESUME_TRAIN, lora=STOP_RESUME_LORA)))
    return adapter_weights(folder / "output" / "adapter")


def test_single_process_trains_and_writes_the_contract(write_config, metrics, tmp_path):
    out = finish(launch(write_config()))
    records = metrics()
    start, steps, done = records[0], [r for r in records if "step" in r and "event" not in r], records[-1]
    assert start["event"] == "start" and start["world_size"] == 1 and start["total_steps"] == 6
    assert start["packing"] is True and start["precision"] == "no" and start["strategy"] == "single"
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert set(steps[0]) == {"step", "total_steps", "loss", "lr", "tokens_per_s", "epoch", "time",
                             "avg_tokens_per_s", "elapsed_s", "eta_s"}
    # the pace over the run: time so far only grows, the time left reaches 0 at the last step
    assert [s["elapsed_s"] for s in steps] == sorted(s["elapsed_s"] for s in steps) and steps[-1]["eta_s"] == 0
    assert all(s["avg_tokens_per_s"] > 0 for s in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]
    assert done["event"] == "done" and done["steps"] == 6 and done["final_loss"] == pytest.approx(steps[-1]["loss"])
    adapter = Path(done["adapter"])
    assert adapter == tmp_path / "output" / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {p.name for p in adapter.iterdir()}
    assert sorted(p.name for p in (tmp_path / "output").iterdir()) == ["adapter", "checkpoint-2", "checkpoint-4",
                                                                        "samples.jsonl", "samples.md"]
    assert [r["step"] for r in records if r.get("event") == "checkpoint"] == [2, 4]
    assert "step 6/6" in out


@pytest.mark.slow  # a trainer process; test_adapter_card loads a trained adapter with PEFT in the fast tier
def test_adapter_loads_with_peft(two_step_run, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    done = json.loads((two_step_run / "metrics.jsonl").read_text().splitlines()[-1])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), done["adapter"])
    assert model.merge_and_unload() is not None


@pytest.mark.parametrize("how", ["stop_file", "sigterm"])
@pytest.mark.slow  # two trainer runs of 30 steps, and the uninterrupted one both ways share
def test_stop_then_resume_matches_an_uninterrupted_run(write_config, metrics, tmp_path, how, uninterrupted):
    config = write_config(STOP_RESUME_TRAIN, lora=STOP_RESUME_LORA)
    proc = launch(config)
    stop_file = tmp_path / "STOP"
    stop_after_first_step(
        proc, metrics, stop_file.touch if how == "stop_file" else lambda: proc.send_signal(signal.SIGTERM)
    )
    finish(proc)
    stopped = metrics()[-1]
    assert stopped["event"] == "stopped" and 1 <= stopped["step"] < 30
    assert Path(stopped["checkpoint"]).name == f"checkpoint-{stopped['step']}"
    assert not (tmp_path / "output" / "adapter").exists()  # nothing claimed as final

    stop_file.unlink(missing_ok=True)
    finish(launch(config))
    records = metrics()
    resumed = [r for r in records if r.get("event") == "start"][-1]
    assert resumed["start_step"] == stopped["step"]
    assert records[-1]["event"] == "done" and records[-1]["steps"] == 30
    for name, weight in adapter_weights(tmp_path / "output" / "adapter").items():
        torch.testing.assert_close(weight, uninterrupted[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow  # two DDP runs of two processes
def test_two_processes_agree_to_stop_and_resume(write_config, metrics, tmp_path):
    config = write_config({"max_steps": 40, "save_steps": 100})
    proc = launch(config, processes=2)
    stop_after_first_step(proc, metrics, (tmp_path / "STOP").touch)
    finish(proc)
    records = metrics()
    assert records[0]["world_size"] == 2 and records[0]["strategy"] == "ddp"
    stopped = [r for r in records if r.get("event") == "stopped"]
    assert len(stopped) == 1 and stopped[0]["step"] < 40  # rank 0 writes, once
    assert {p.name for p in Path(stopped[0]["checkpoint"]).iterdir()} >= {"rng-0.pt", "rng-1.pt", "optimizer.pt"}

    (tmp_path / "STOP").unlink()
    finish(launch(config, processes=2))
    assert metrics()[-1]["event"] == "done" and metrics()[-1]["steps"] == 40
    shutil.rmtree(tmp_path / "output")


def test_unknown_key_exits_2_with_one_line(write_config):
    proc = launch(write_config(epochz=3))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert out.startswith("Error: unknown config key 'epochz'") and out.count("\n") == 1
