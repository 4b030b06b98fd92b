"""GPU paths: torch's varlen flash kernel, Liger, torch.compile and memory sizing (skipped without CUDA)."""

import functools

import pytest
import torch

from runner.train.attention import _sdpa_per_example, varlen_attention_forward, varlen_kernel_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU"),
]


def test_varlen_kernel_matches_per_example_sdpa_forward_and_backward():
    device = torch.device("cuda")
    if not varlen_kernel_available(device):
        pytest.skip("torch varlen attention needs sm80+")
    gen = torch.Generator(device=device).manual_seed(0)
    lengths = [37, 300, 5, 128]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    total, heads, kv_heads, dim = sum(lengths), 8, 2, 64

    def rand(h):
        return torch.randn(1, h, total, dim, device=device, dtype=torch.bfloat16, generator=gen).requires_grad_()

    q, k, v = rand(heads), rand(kv_heads), rand(kv_heads)
    out, _ = varlen_attention_forward(None, q, k, v, None, scaling=dim**-0.5, cu_seq_lens_q=cu, max_length_q=2048)
    out.float().square().sum().backward()
    grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = _sdpa_per_example(*(t[0].transpose(0, 1) for t in (q, k, v)), cu.tolist(), dim**-0.5).unsqueeze(0)
    ref.float().square().sum().backward()
    torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2)
    for ours, theirs in zip(grads, (q.grad, k.grad, v.grad), strict=True):
        torch.testing.assert_close(ours.float(), theirs.float(), rtol=5e-2, atol=5e-2)


def test_training_on_gpu_uses_the_fast_paths(write_config, metrics, monkeypatch):
    from runner.train.config import load_config
    from runner.train.session import run_session

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    outcome = run_session(load_config(write_config({"max_steps": 8, "batch_size": "auto"})))
    start = metrics()[0]
    steps = [r for r in metrics() if "loss" in r]
    assert outcome.status == "done" and start["precision"] == "bf16"
    assert start["attention"] == "varlen" and start["compile"] is True and start["packing"] is True
    assert start["gradient_checkpointing"] is False  # a tiny model never needs it
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_qlora_loads_4bit_and_trains(write_config, metrics, monkeypatch):
    pytest.importorskip("bitsandbytes")
    from runner.train.config import load_config
    from runner.train.session import run_session

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    outcome = run_session(load_config(write_config({"max_steps": 6}, method="qlora")))
    start = metrics()[0]
    steps = [r for r in metrics() if "loss" in r]
    assert outcome.status == "done" and start["method"] == "qlora" and start["compile"] is True
    assert steps[-1]["loss"] < steps[0]["loss"]


FSDP_CONFIG = """compute_environment: LOCAL_MACHINE
distributed_type: FSDP
mixed_precision: bf16
fsdp_config:
  fsdp_version: 2
  fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP
  fsdp_reshard_after_forward: true
  fsdp_state_dict_type: FULL_STATE_DICT
  fsdp_cpu_ram_efficient_loading: false
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "fsdp-qlora"])
def test_two_gpus_train_stop_and_resume(write_config, metrics, tmp_path, strategy):
    from launching import finish, launch, stop_after_first_step

    if strategy == "fsdp-qlora":
        pytest.importorskip("bitsandbytes")
    if strategy == "ddp":
        args = ("--multi_gpu", "--mixed_precision", "bf16")
    else:
        (tmp_path / "fsdp.yaml").write_text(FSDP_CONFIG)
        args = ("--config_file", str(tmp_path / "fsdp.yaml"))
    method = "qlora" if strategy == "fsdp-qlora" else "lora"
    config = write_config({"max_steps": 40, "save_steps": 100}, method=method)
    proc = launch(config, processes=2, accelerate_args=args)
    stop_after_first_step(proc, metrics, (tmp_path / "STOP").touch)
    finish(proc)
    records = metrics()
    assert records[0]["world_size"] == 2 and records[0]["strategy"] == strategy.split("-")[0]
    stopped = [r for r in records if r.get("event") == "stopped"]
    assert len(stopped) == 1 and stopped[0]["step"] < 40

    (tmp_path / "STOP").unlink()
    finish(launch(config, processes=2, accelerate_args=args))
    done = metrics()[-1]
    assert done["event"] == "done" and done["steps"] == 40
    assert [r for r in metrics() if r.get("event") == "start"][-1]["start_step"] == stopped[0]["step"]
    steps = [r for r in metrics() if "loss" in r]
    assert steps[-1]["loss"] < steps[0]["loss"]


def packed_step_gradients(loss_model):
    """LoRA gradients of one packed step of two examples (120 and 80 tokens) on fixed tokens."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 900, (1, 200), generator=gen).cuda()
    positions = torch.cat([torch.arange(120), torch.arange(80)]).unsqueeze(0).cuda()
    loss_model(input_ids=ids, targets=ids, position_ids=positions).backward()
    grads = {n: p.grad.clone() for n, p in loss_model.named_parameters() if p.grad is not None}
    loss_model.zero_grad(set_to_none=True)
    return grads


def test_compiled_layers_with_the_mlp_in_chunks_give_the_plain_gradients(tiny_model, monkeypatch):
    """The long-context levers on compiled layers (as `auto` runs them on CUDA): checkpointing offloaded to CPU
    and each MLP in chunks (eager inside the compiled layer) give the gradients of the plain compiled step."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from runner.train import activations
    from runner.train.activations import apply_checkpointing
    from runner.train.model import CausalLMLoss, compile_layers

    monkeypatch.setattr(activations, "MLP_CHUNK_TOKENS", 64)
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).cuda()
    loss_model = CausalLMLoss(get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM")))
    loss_model.model.train()
    compile_layers(loss_model.model)
    gradients = functools.partial(packed_step_gradients, loss_model)

    apply_checkpointing(loss_model.model, 0, offload=False)
    plain = gradients()
    apply_checkpointing(loss_model.model, None, offload=True, chunked_mlp=True)
    chunked = gradients()
    assert chunked.keys() == plain.keys()
    for name, grad in chunked.items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_qlora_compiled_checkpointed_layers_give_the_compiled_plain_gradients(tiny_model):
    """QLoRA as `auto` runs it on CUDA: NF4 layers compiled and checkpointed (around the compiled call, whichever
    transformers) give the LoRA gradients of the compiled step without checkpointing, to within what an H200 with
    torch 2.11 showed between any two of these NF4 steps (2026-12-03: 2.5e-3 of a gradient's norm, checkpointed
    against plain, and 2.2e-3 compiled against eager; not explained; a wrong function is off by order one).
    The non-quantized path is exact to 1e-4 (tests/train/test_compiled_checkpointing.py, on the CPU)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from runner.train.activations import apply_checkpointing, layer_checkpointed
    from runner.train.model import CausalLMLoss, compile_layers, decoder_layers, qlora_quantization

    base = AutoModelForCausalLM.from_pretrained(
        tiny_model, dtype=torch.float32, quantization_config=qlora_quantization(torch.float32), device_map={"": 0}
    )
    config = LoraConfig(r=4, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    loss_model = CausalLMLoss(get_peft_model(base, config))
    loss_model.model.train()
    for name, param in loss_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.02)
    gradients = functools.partial(packed_step_gradients, loss_model)

    compile_layers(loss_model.model)
    apply_checkpointing(loss_model.model, 0, offload=False)
    gradients()
    plain = gradients()
    apply_checkpointing(loss_model.model, None, offload=False)
    assert all(layer_checkpointed(layer) for layer in decoder_layers(loss_model.model))
    compiled = gradients()
    assert compiled.keys() == plain.keys()
    worst = max(((compiled[n] - plain[n]).norm() / plain[n].norm()).item() for n in plain)
    assert worst < 1e-2, f"largest relative gradient difference {worst:.2e}"
