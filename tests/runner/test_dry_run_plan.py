"""The dry run's words on what will train: processes and strategy by the host's own rule, the data as the trainer
reads and tokenizes it, steps and epochs (max_steps overrides epochs)."""

from pathlib import Path

from helpers import REPO

from runner.cluster import lay_out
from runner.inventory import Inventory
from runner.plan import data_lines, processes_line, samples_line, steps_line
from runner.spec import validate_spec

TINY = str(REPO / "examples" / "models" / "tiny-chat")
DATA = str(REPO / "examples" / "data" / "demo.jsonl")


def gpu(index: int, memory_mib: int) -> dict:
    return {"index": index, "uuid": f"GPU-0000000{index}-0000-0000-0000-000000000000", "name": "NVIDIA RTX 4090",
            "pci_bus_id": f"0000:0{index}:00.0", "memory_total_mib": memory_mib, "compute_capability": [8, 9],
            "power_min_w": 150.0, "power_max_w": 450.0, "power_default_w": 450.0, "power_limit_w": 450.0,
            "enforced_limit_w": 450.0, "persistence_mode": True, "processes": []}


def spec(**changes):
    return validate_spec({"model": "./models/tiny-chat", "dataset": "./data/demo.jsonl", **changes})


def test_processes_and_the_strategy_the_host_will_pick(tiny_model):
    two_big, two_small = [gpu(0, 24576), gpu(1, 24576)], [gpu(0, 2048), gpu(1, 2048)]
    assert processes_line([], spec(), TINY, 1, "no") == "processes: 1 on the CPU (no GPU found), fp32"
    assert processes_line([gpu(0, 24576)], spec(), TINY, 1, "bf16") == "processes: 1 on GPU 0, bf16"
    line = processes_line(two_big, spec(), TINY, 2, "bf16")
    assert line.startswith("processes: 2, one per GPU; ddp: 16-bit weights") and line.endswith("; bf16")
    assert "; fsdp: 16-bit weights" in processes_line(two_small, spec(), TINY, 2, "bf16")  # 2 GiB cards pool
    assert "; fsdp: set by the job;" in processes_line(two_big, spec(strategy="fsdp"), TINY, 2, "bf16")
    assert "decided when it is there" in processes_line(two_big, spec(), None, 2, "bf16")
    machines = lay_out(Inventory(None, ["a", "b"], {"a": {}, "b": {}}), ["a", "b"],
                       {"a": {"gpus": two_big}, "b": {"gpus": [gpu(0, 24576)]}}, 29500)
    assert processes_line(two_big, spec(), TINY, 2, "bf16", machines.parts["a"]).startswith(
        "processes: 2 in all, 1 on each of 2 machines; ddp: ")


def test_data_counted_with_the_trainers_reader_and_the_models_tokenizer(tiny_model):
    job = spec(train={"max_steps": 40, "batch_size": 8, "max_seq_len": 128})
    paths = {"model": "/host/model", "dataset": "/host/data.jsonl"}
    uploads = [{"src": TINY + "/", "dest": "/host/model"}, {"src": DATA, "dest": "/host/data.jsonl"}]
    data, steps = data_lines(job, paths, uploads, processes=1)
    records = sum(1 for line in Path(DATA).read_text().splitlines() if line.strip())
    assert data.startswith(f"data: chat format, {records} records -> ") and " tokens an epoch, " in data
    assert steps.startswith("steps: 40 (train.max_steps; it overrides epochs: 1), about ")
    on_host = spec(dataset="/srv/data.jsonl")
    read_there = data_lines(on_host, {"model": "/host/model", "dataset": "/srv/data.jsonl"}, uploads[:1], 1)
    assert read_there[0] == "data: /srv/data.jsonl is read on the host; examples and tokens show when training starts"


def test_steps_and_epochs():
    fixed = spec(train={"epochs": 2, "batch_size": 4, "grad_accum": 2, "packing": False})
    assert steps_line(fixed, None, processes=2, examples=100) == "steps: about 14 (2 epoch(s) of 7 steps)"
    assert steps_line(spec(train={"max_steps": 30}), None, 1).startswith("steps: 30 (train.max_steps; it overrides")
    assert "known when the host has sized batch_size auto" in steps_line(spec(), 5000, processes=2)


def test_samples_line_says_what_the_end_costs():
    assert samples_line(spec()) == (
        "samples: 4 prompts from the training data (no eval section: not held out) answered by the base model and "
        "the fine-tune, up to 128 tokens each, within 60 s before inference comes back")
    assert samples_line(spec(eval={"split": 0.1})).startswith("samples: 4 held-out prompts answered")
    assert samples_line(spec(samples={"count": 0})) == "samples: off (samples.count 0)"
