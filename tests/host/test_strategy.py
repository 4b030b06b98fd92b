"""The strategy choice from model size vs the smallest GPU: from config.json, an index or the files' sizes."""

import json

import pytest

from bench.shapes import SHAPES
from runner.host.strategy import choose_strategy, config_params

# Mistral-Small-24B and Llama-3.1-8B as the benches build them, and a tiny Llama
MISTRAL_24B = {**SHAPES["24b"], "torch_dtype": "bfloat16"}
LLAMA_8B = SHAPES["8b"]
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


def test_a_multi_node_job_counts_every_machines_gpus(model_dir):
    from runner.host.preflight import pick_strategy

    spec = {"strategy": "auto", "method": "qlora"}
    model = str(model_dir(MISTRAL_24B))
    alone = pick_strategy(spec, model, [gpu(0, 16)])
    assert alone == ("ddp", "")  # one GPU: nothing to shard over
    two_machines = {"num_machines": 2, "processes_per_machine": 1}
    name, reason = pick_strategy(spec, model, [gpu(0, 16)], two_machines)
    assert name == "fsdp" and "sharded over 2 GPUs" in reason  # 13.2 GiB of 4-bit weights pooled over 2 x 16 GiB
    # a host whose second GPU the job does not use (every machine runs one process) counts one
    name, reason = pick_strategy(spec, model, [gpu(0, 16), gpu(1, 48)], {"num_machines": 3, "processes_per_machine": 1})
    assert name == "fsdp" and "sharded over 3 GPUs" in reason and "16.0 GiB" in reason
