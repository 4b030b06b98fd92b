"""The strategy choice from model size vs the smallest GPU: from config.json, an index or the files' sizes."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO
from simhost import spec

from bench.shapes import SHAPES
from runner.host.strategy import choose_strategy, config_params

# Mistral-Small-24B and Llama-3.1-8B as the benches build them, and a tiny Llama
MISTRAL_24B = {**SHAPES["24b"], "torch_dtype": "bfloat16"}
LLAMA_8B = SHAPES["8b"]
DEMO = REPO / "examples" / "data" / "demo.jsonl"
TINY = {
    "vocab_size": 1024,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


@pytest.fixture
def model_dir(tmp_path):
    def write(config: dict, **files: int):
        (tmp_path / "config.json").write_text(json.dumps(config))
        for name, size in files.items():
            with (tmp_path / f"{name}.safetensors").open("wb") as f:
                f.truncate(size)
        return tmp_path

    return write


def test_parameter_counts_match_the_published_sizes():
    assert round(config_params(MISTRAL_24B) / 1e9, 1) == 23.6
    assert round(config_params(LLAMA_8B) / 1e9, 2) == 8.03


def test_24b_lora_on_two_24gib_gpus_needs_fsdp_and_says_it_is_still_too_big(model_dir):
    choice = choose_strategy(model_dir(MISTRAL_24B), "lora", [24.0, 24.0])
    assert choice.name == "fsdp" and not choice.fits
    assert choice.per_gpu_gib == pytest.approx(22, abs=0.1)  # 44 GiB in bf16, halved
    assert "use qlora" in choice.reason


def test_24b_qlora_fits_each_24gib_gpu_so_ddp(model_dir):
    """A full 4-bit copy (13.2 GiB) fits a 24 GiB card, as the seed says and the H100 run measured."""
    choice = choose_strategy(model_dir(MISTRAL_24B), "qlora", [24.0, 24.0])
    assert choice.name == "ddp" and choice.fits
    assert 12.5 < choice.weights_gib < 14


def test_24b_qlora_on_two_16gib_gpus_pools_them_with_fsdp(model_dir):
    choice = choose_strategy(model_dir(MISTRAL_24B), "qlora", [16.0, 16.0])
    assert choice.name == "fsdp" and choice.fits
    assert "sharded over 2 GPUs" in choice.reason


def test_the_smallest_gpu_decides(model_dir):
    assert choose_strategy(model_dir(MISTRAL_24B), "qlora", [80.0, 16.0]).name == "fsdp"


def test_8b_lora_fits_a_24gib_gpu_and_tiny_anywhere(model_dir):
    assert choose_strategy(model_dir(LLAMA_8B), "lora", [24.0, 24.0]).name == "ddp"
    assert choose_strategy(model_dir(TINY), "lora", [8.0, 8.0]).name == "ddp"


def test_one_gpu_is_never_sharded_but_says_it_does_not_fit(model_dir):
    choice = choose_strategy(model_dir(MISTRAL_24B), "lora", [24.0])
    assert choice.name == "ddp" and not choice.fits
    assert "does not fit one GPU" in choice.reason


def test_the_index_total_size_is_used_when_present(model_dir):
    folder = model_dir(TINY)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 40 * 2**30}}))
    choice = choose_strategy(folder, "lora", [24.0, 24.0])
    assert choice.name == "fsdp" and choice.weights_gib == 40


def test_file_sizes_are_used_and_fp32_files_count_as_bf16(model_dir):
    folder = model_dir({**TINY, "torch_dtype": "float32"}, **{"model-1": 10 * 2**30, "model-2": 10 * 2**30})
    assert choose_strategy(folder, "lora", [24.0, 24.0]).weights_gib == 10  # 20 GiB of fp32, trained in bf16


def gpu(index: int, gib: float):
    from runner.host.nvml import Gpu

    return Gpu(index, f"GPU-{index:08d}-0000-4000-8000-000000000000", "NVIDIA GeForce RTX 4080", f"0000:0{index}:00.0",
               int(gib * 1024), (8, 9), 150, 320, 320, 320, 320, True)


def facts(*gib: float) -> dict:
    """A host's GPU facts as the probe answers them."""
    return {"gpus": [gpu(i, size).as_dict() for i, size in enumerate(gib)]}


def parts(**hosts: dict) -> dict[str, dict]:
    """Each host's part of a multi-node job, as the controller lays it out (hosts in rank order)."""
    from runner.cluster import lay_out
    from runner.inventory import Inventory

    return lay_out(Inventory(None, list(hosts), {h: {} for h in hosts}), list(hosts), hosts, 29500).parts


def test_a_multi_node_job_sizes_one_strategy_over_every_machines_gpus(model_dir):
    from runner.host.preflight import pick_strategy

    spec = {"strategy": "auto", "method": "qlora"}
    model = str(model_dir(MISTRAL_24B))
    alone = pick_strategy(spec, model, [gpu(0, 16)])
    assert alone == ("ddp", "")  # one GPU: nothing to shard over
    two_machines = parts(a=facts(16), b=facts(16))
    name, reason = pick_strategy(spec, model, [gpu(0, 16)], two_machines["b"])
    assert name == "fsdp" and "sharded over 2 GPUs" in reason  # 13.2 GiB of 4-bit weights pooled over 2 x 16 GiB
    # every machine runs one process (c has one GPU), so b's second GPU does not count; a, with two 80 GiB cards,
    # would train alone with DDP, but the job's strategy is the same on every host: b's 16 GiB card needs FSDP
    assert pick_strategy(spec, model, [gpu(0, 80), gpu(1, 80)])[0] == "ddp"
    own = {"a": [gpu(0, 80), gpu(1, 80)], "b": [gpu(0, 16), gpu(1, 48)], "c": [gpu(0, 80)]}
    job = parts(**{h: facts(*(g.memory_total_mib / 1024 for g in gpus)) for h, gpus in own.items()})
    chosen = {pick_strategy(spec, model, own[h], part) for h, part in job.items()}
    assert len(chosen) == 1
    name, reason = chosen.pop()
    assert name == "fsdp" and "sharded over 3 GPUs" in reason and "16.0 GiB" in reason


def host_command(host, state, *args: str, job: dict | None = None) -> dict:
    """`python -m runner.host ARGS` as the playbook runs it on a host whose GPUs are STATE's; its answer."""
    done = subprocess.run([sys.executable, "-m", "runner.host", *args, str(host.root)], capture_output=True,
                          text=True, timeout=900, input=json.dumps(job) if job else None,
                          env={**os.environ, "GPU_SIM_STATE": str(state)})
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # five runner.host probe/check processes, each with the trainer's probe
def test_the_dry_run_every_hosts_check_and_its_accelerate_config_agree_on_the_jobs_strategy(host, tmp_path):
    """Two simulated hosts on this machine: 'big' (two 24 GiB cards, DDP on its own) and 'small' (two 1.6 GiB
    cards). The controller lays the job out from their probes; each host's check (the playbook's, with the part
    job.json carries, as the supervisor runs it again) picks FSDP, the dry run says so and the config renders it."""
    from runner.cluster import lay_out
    from runner.host.cluster import interfaces
    from runner.inventory import Inventory
    from runner.plan import processes_line
    from runner.spec import validate_spec
    from runner.templates import accelerate_config

    address = next((a[0] for name, a in interfaces().items() if name != "lo" and a), None)
    if address is None:
        pytest.skip("this machine has no network interface with an address")
    small = tmp_path / "small-gpus.json"
    small.write_text(json.dumps({**(state := json.loads(host.state.read_text())),
                                 "gpus": [{**g, "memory_total_mib": 1600} for g in state["gpus"]]}))
    states = {"big": host.state, "small": small}
    facts = {name: host_command(host, path, "probe") for name, path in states.items()}
    inventory = Inventory(None, list(states), {name: {"train_session_cluster_address": address} for name in states})
    machines = lay_out(inventory, list(states), facts, 29500)
    job_spec = validate_spec(spec()).model_dump()
    job = {"session_id": "s1", "spec": job_spec, "paths": {"model": str(host.model), "dataset": str(DEMO)}}
    alone = host_command(host, host.state, "check", job={**job, "host": "big"})
    assert alone["strategy"] == "ddp"  # the tiny model fits one 24 GiB card
    for name, path in states.items():
        checked = host_command(host, path, "check", job={**job, "host": name, "cluster": machines.parts[name]})
        config = accelerate_config(facts[name]["gpus"], checked["strategy"], 29500, **machines.accelerate_inputs(name))
        planned = processes_line(facts[name]["gpus"], validate_spec(spec()), str(host.model),
                                 int(config["num_processes"]), config["mixed_precision"], machines.parts[name])
        assert checked["strategy"] == "fsdp", (name, checked)
        assert config["distributed_type"] == "FSDP" and config["num_processes"] == 4
        assert "in all, 2 on each of 2 machines; fsdp: 16-bit weights" in planned, planned
