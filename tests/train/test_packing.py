"""Packing correctness: packed rows train exactly like padded ones, and examples never see each other."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from runner.train.config import LoraSettings
from runner.train.data import IGNORE, Example
from runner.train.loss import linear_cross_entropy_sum
from runner.train.model import CausalLMLoss, Features, prepare_model
from runner.train.packing import BatchPlan, collate_packed, collate_padded, pack_best_fit


def make_examples(vocab: int, lengths=(7, 19, 3, 12), seed=0) -> list[Example]:
    gen = torch.Generator().manual_seed(seed)
    examples = []
    for n in lengths:
        ids = torch.randint(4, vocab, (n,), generator=gen).tolist()
        prompt = n // 3  # the first third is prompt: no loss there
        examples.append(Example(ids, [IGNORE] * prompt + ids[prompt:]))
    return examples


def lora_model(tiny_model, attention: str) -> CausalLMLoss:
    torch.manual_seed(0)
    if attention == "varlen":
        from runner.train.attention import register_varlen_attention

        register_varlen_attention()
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=attention)
    features = Features(attention=attention, liger=False, compile=False, packing=True)
    model = prepare_model(base, LoraSettings(rank=4, alpha=8, dropout=0.0), features)
    with torch.no_grad():  # LoRA B starts at zero; make the adapters matter
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return CausalLMLoss(model)


def lora_grads(module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("attention", ["sdpa", "eager", "varlen"])
def test_packed_loss_and_grads_equal_padded(tiny_model, attention):
    model = lora_model(tiny_model, attention)
    examples = make_examples(model.model.get_input_embeddings().num_embeddings)
    packed = model(**collate_packed(examples))
    packed.backward()
    packed_grads = lora_grads(model)
    model.zero_grad()
    if attention == "varlen":  # varlen takes packed rows only: compare with one example at a time
        padded = sum(model(**collate_packed([e])) for e in examples)
    else:
        padded = model(**collate_padded(examples, pad_id=0))
    padded.backward()
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)
    for name, grad in lora_grads(model).items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert packed.item() > 0


@pytest.mark.parametrize("attention", ["sdpa", "varlen"])
def test_packed_examples_do_not_attend_to_each_other(tiny_model, attention):
    model = lora_model(tiny_model, attention)
    decoder = model.model.get_base_model().get_decoder()
    first, second = make_examples(model.model.get_input_embeddings().num_embeddings, lengths=(9, 11))
    changed = Example([(t + 1) % 500 + 4 for t in second.input_ids], second.labels)

    def hidden(pair):
        batch = collate_packed(pair)
        cu, m = batch["cu_seq_lens"], batch["max_length"]
        with torch.no_grad():
            return decoder(
                input_ids=batch["input_ids"],
                position_ids=batch["position_ids"],
                use_cache=False,
                cu_seq_lens_q=cu,
                cu_seq_lens_k=cu,
                max_length_q=m,
                max_length_k=m,
            ).last_hidden_state[0]

    base, perturbed, alone = hidden([first, second]), hidden([first, changed]), hidden([first])
    n = len(first.input_ids)
    torch.testing.assert_close(base[:n], perturbed[:n], rtol=0, atol=1e-6)  # the first example never saw the second
    torch.testing.assert_close(base[:n], alone, rtol=1e-5, atol=1e-6)
    assert (base[n:] - perturbed[n:]).abs().max() > 1e-3  # while the second did change
    # and the perturbed example is unaffected by what precedes it
    reversed_ = hidden([changed, first])
    torch.testing.assert_close(reversed_[len(changed.input_ids) :], alone, rtol=1e-5, atol=1e-6)


def test_fused_loss_matches_cross_entropy():
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(50, 16, generator=gen, requires_grad=True)
    weight = torch.randn(300, 16, generator=gen, requires_grad=True)
    targets = torch.randint(0, 300, (50,), generator=gen)
    targets[::3] = IGNORE
    ours = linear_cross_entropy_sum(hidden, weight, targets)
    ours.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    ref = torch.nn.functional.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    ref.backward()
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], weight.grad)


def test_best_fit_respects_capacity_and_keeps_every_example():
    lengths = [5, 9, 3, 10, 1, 7, 7, 2]
    bins = pack_best_fit(lengths, list(range(len(lengths))), capacity=10)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 10 for b in bins)
    assert len(bins) == 5  # 44 tokens: 5 bins of 10 is the minimum


def test_plan_splits_steps_over_ranks_and_pads_the_last():
    examples = [Example([1] * n, [1] * n) for n in (4, 4, 4, 4, 4, 4, 4)]
    plan = BatchPlan(examples, packing=False, rows=1, max_seq_len=8, grad_accum=2, world_size=2, seed=0)
    assert plan.steps_per_epoch == 2
    last = [plan.step_work(1, rank) for rank in (0, 1)]
    assert sum(len(b) for w in last for b in w.micro_batches) == 3  # 7 examples, 4 per step
    assert [] in last[0].micro_batches + last[1].micro_batches  # a filler keeps ranks in step
    assert last[0].trained_tokens == last[1].trained_tokens == 3 * 3


def test_unfused_head_path_gives_the_same_loss(tiny_model):
    """Models whose head cannot be fused (LoRA on lm_head, soft-capped logits) take the logits path."""
    model = lora_model(tiny_model, "sdpa")
    batch = collate_packed(make_examples(model.model.get_input_embeddings().num_embeddings))
    fused = model(**batch)
    model.fused = False
    torch.testing.assert_close(model(**batch), fused, rtol=1e-5, atol=1e-5)
