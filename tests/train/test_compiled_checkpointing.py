"""Compiled layers, checkpointed as `auto` runs them on a GPU, compiled here by inductor for the CPU.

A checkpointed compiled layer runs its checkpoint around the compiled call whichever transformers is installed
(5.2x checkpoints inside the layer's forward, which would put it inside the compiled call): it keeps only its
inputs for backward (no MLP activation), its backward recomputes the layer as offloading does, and the LoRA
gradients are the eager step's.
"""

from __future__ import annotations

import pytest
import torch

from runner.train.activations import apply_checkpointing, layer_checkpointed
from runner.train.model import CausalLMLoss, compile_layers, decoder_layers

pytestmark = pytest.mark.slow  # inductor compiles each variant's C++ kernels (about a minute each here)
TOKENS = 200  # a length no weight has: a saved tensor with it is an activation or a layer input


@pytest.fixture
def compiled_loss_model(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    config = LoraConfig(r=4, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    loss_model = CausalLMLoss(get_peft_model(base, config))
    loss_model.model.train()
    for name, param in loss_model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero: give the adapters a function of their own
            torch.nn.init.normal_(param, std=0.02)
    return loss_model


def step(loss_model: CausalLMLoss) -> tuple[dict[str, torch.Tensor], list[tuple[int, ...]], int]:
    """LoRA gradients of one packed step (two examples), the shapes of what the step saved for backward, and how
    many matrix products its backward ran (the profiler sees the compiled code's calls)."""
    from torch.profiler import profile

    saved: list[tuple[int, ...]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(tensor.shape))
        return tensor

    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 900, (1, TOKENS), generator=gen)
    positions = torch.cat([torch.arange(120), torch.arange(80)]).unsqueeze(0)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_model(input_ids=ids, targets=ids, position_ids=positions)
    with profile() as prof:
        loss.backward()
    products = sum(event.name in ("aten::mm", "aten::addmm", "aten::bmm") for event in prof.events())
    grads = {n: p.grad.clone() for n, p in loss_model.named_parameters() if p.grad is not None}
    loss_model.zero_grad(set_to_none=True)
    return grads, saved, products


def mlp_activations(saved: list[tuple[int, ...]], intermediate: int) -> list[tuple[int, ...]]:
    return [shape for shape in saved if TOKENS in shape and shape[-1] == intermediate]


def test_checkpointed_compiled_layers_keep_only_their_inputs_and_give_the_eager_gradients(compiled_loss_model):
    model = compiled_loss_model.model
    layers = decoder_layers(model)
    intermediate = model.config.intermediate_size
    eager, _, _ = step(compiled_loss_model)
    compile_layers(model)

    apply_checkpointing(model, 0, offload=False)
    plain, plain_saved, _ = step(compiled_loss_model)
    assert not any(layer_checkpointed(layer) for layer in layers)
    assert mlp_activations(plain_saved, intermediate)  # the test sees a kept MLP activation when there is one

    from torch._dynamo.utils import counters

    counters.clear()
    apply_checkpointing(model, None, offload=False)
    assert all(layer_checkpointed(layer) for layer in layers)
    assert not any(layer.gradient_checkpointing for layer in layers)  # transformers' own checkpoint stays off
    step(compiled_loss_model)  # the dynamic-shape compile: the step before did not require grad at every input
    grads, saved, products = step(compiled_loss_model)
    assert not mlp_activations(saved, intermediate)
    assert not counters["graph_break"]  # the layer compiled whole, not run eagerly
    assert grads.keys() == plain.keys() == eager.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager[name], rtol=1e-4, atol=1e-6, msg=name)
        torch.testing.assert_close(plain[name], eager[name], rtol=1e-4, atol=1e-6, msg=name)

    apply_checkpointing(model, None, offload=True)
    offloaded, _, around = step(compiled_loss_model)
    # the same recompute, the whole layer again (transformers 5.2x's own checkpoint, inside the compiled call,
    # would leave down_proj and its adapter's B out: two products a layer fewer)
    assert products == around
    for name, grad in offloaded.items():
        torch.testing.assert_close(grad, eager[name], rtol=1e-4, atol=1e-6, msg=name)

    apply_checkpointing(model, 1, offload=False)
    assert [layer_checkpointed(layer) for layer in layers] == [True] + [False] * (len(layers) - 1)
    partial, _, _ = step(compiled_loss_model)
    for name, grad in partial.items():
        torch.testing.assert_close(grad, eager[name], rtol=1e-4, atol=1e-6, msg=name)

