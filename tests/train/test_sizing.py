"""Sizing by throughput: the budget, the choice among shapes that fit, partial and offloaded checkpointing.

The choice is tested with probe figures given (as a GPU's probe would measure them) on the real tiny model,
whose layers must end up checkpointed as chosen; checkpointing and its CPU offload are tested on that model
loaded from its folder, by counting recomputed layer calls and comparing gradients with the plain step.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import torch

from runner.train import activations, sizing
from runner.train.activations import apply_checkpointing, layer_checkpointed, mlp_chunked
from runner.train.config import ConfigError, TrainSettings
from runner.train.model import CausalLMLoss, decoder_layers
from runner.train.sizing import (
    GIB,
    Measure,
    best_candidate,
    choose_sizing,
    fit_model,
    memory_budget,
)

LAYERS = 32


def test_budget_on_a_24_gib_cap_leaves_the_context_out_and_stays_under_22_gib():
    capped = memory_budget(24 * GIB, world_size=1, fraction_limited=True)
    assert capped <= 22 * GIB
    assert capped == pytest.approx(24 * GIB * (1 - sizing.ALLOCATOR_SLACK) - sizing.CUDA_CONTEXT_GIB * GIB)
    # a real card's free memory already lacks the context; several processes also hold NCCL's buffers
    assert memory_budget(24 * GIB, 1, fraction_limited=False) - capped == pytest.approx(sizing.CUDA_CONTEXT_GIB * GIB)
    assert capped - memory_budget(24 * GIB, 2, True) == pytest.approx(sizing.NCCL_BUFFERS_GIB * GIB)


def qlora_8b(tokens: int, checkpointed: bool) -> tuple[float, float]:
    """Peak bytes and seconds of a step, shaped like an 8B QLoRA step on a 24 GiB card: 6 GiB of weights, 8 MiB
    of activations a token without checkpointing (0.6 with), and a per-step cost (4-bit dequantisation of every
    weight) that more tokens per step amortise; checkpointing adds a third to the token cost."""
    per_token = 0.6 * 2**20 if checkpointed else 8 * 2**20
    seconds = 0.25 + tokens / 12000 * (1.33 if checkpointed else 1.0)
    return 6 * GIB + per_token * tokens, seconds


def measures(tokens_list: list[int], checkpointed: bool, budget_cap: float = 22 * GIB) -> list[Measure]:
    out = []
    for tokens in tokens_list:
        peak, seconds = qlora_8b(tokens, checkpointed)
        out.append(Measure(tokens, int(peak) if peak <= budget_cap else None, seconds))
    return out


def test_more_rows_with_checkpointing_beat_one_row_without_when_that_is_faster():
    model = fit_model(measures([2048, 4096], True), measures([2048, 4096], False), LAYERS)
    rows, kept, peak, speed = best_candidate(model, 2048, list(range(1, 9)), list(range(LAYERS + 1)), 21 * GIB)
    assert peak <= 21 * GIB
    one_row_plain = 2048 / qlora_8b(2048, False)[1]
    assert rows > 1 and kept < LAYERS and speed > 1.3 * one_row_plain
    # the model reproduces the given figures (time: checkpointing's share measured at one size, applied to all)
    assert model.peak(2048, 0) == pytest.approx(qlora_8b(2048, True)[0])
    assert model.seconds(2048, LAYERS) == pytest.approx(qlora_8b(2048, False)[1])
    assert model.seconds(4096, LAYERS) == pytest.approx(qlora_8b(4096, False)[1], rel=0.1)


def test_without_memory_pressure_nothing_is_checkpointed():
    model = fit_model(measures([2048, 4096], True), measures([2048, 4096], False), LAYERS)
    rows, _, _, speed = best_candidate(model, 2048, list(range(1, 9)), list(range(LAYERS + 1)), 200 * GIB)
    # within 1 % (measurement noise) of no checkpointing at all, the shape that holds less is kept
    assert rows == 8 and speed >= 0.99 * 8 * 2048 / model.seconds(8 * 2048, LAYERS)


def test_a_shape_over_budget_is_never_chosen():
    model = fit_model(measures([2048, 4096], True), [], LAYERS)  # no plain figures: all layers checkpointed
    assert best_candidate(model, 2048, [1, 2, 3], [0, LAYERS], 6 * GIB) is None
    rows, kept, peak, _ = best_candidate(model, 2048, list(range(1, 9)), [0, LAYERS], 10 * GIB)
    assert kept == 0 and peak <= 10 * GIB and model.peak(2048 * (rows + 1), 0) > 10 * GIB


def test_a_launch_bound_small_step_does_not_inflate_the_predicted_speed():
    # The probe of an 8B QLoRA on a 24 GiB cap (H200, 2026-12-03): 512 tokens took as long as 2,048. The chosen
    # shape, 8 rows of 2,048 checkpointed, then trained at 9.9k tokens/s (14.1 GiB); a slope through the 512-token
    # step had predicted 15.3k.
    probe = [Measure(512, int(6.24 * GIB), 0.307), Measure(2048, int(7.63 * GIB), 0.315),
             Measure(4096, int(8.23 * GIB), 0.479)]
    model = fit_model(probe, [], LAYERS)
    predicted = 16384 / model.seconds(16384, 0)
    assert 9_000 < predicted < 12_000
    assert model.peak(4096, 0) == pytest.approx(8.23 * GIB, rel=1e-6)  # the largest step is reproduced
    # memory over the widest span: not under the 14.1 GiB measured at 16,384 tokens less 1 GiB of noise
    assert model.peak(16384, 0) > 13 * GIB


class FakeProbe:
    """Probe steps with the figures of qlora_8b under a cap, for choose_sizing on a CPU: what a GPU would measure."""

    runs: ClassVar[list[tuple[int, int, bool, float]]] = []

    def __init__(self, loss_model, max_seq_len, packing, device, autocast):
        self.model = loss_model

    def run(self, rows: int, length: int) -> Measure:
        layers = decoder_layers(self.model.model)
        checkpointed = any(layer_checkpointed(layer) for layer in layers)
        offloaded = any(hasattr(layer._gradient_checkpointing_func, "plain") for layer in layers)
        chunked = any(mlp_chunked(layer.mlp) for layer in layers)
        peak, seconds = qlora_8b(rows * length, checkpointed)
        if offloaded:
            peak -= 0.5 * 2**20 * rows * length
        if chunked:
            peak -= 0.05 * 2**20 * rows * length
        FakeProbe.runs.append((rows, length, checkpointed, peak))
        return Measure(rows * length, int(peak) if peak <= self.available() else None, seconds)

    def available(self) -> float:
        return 24 * GIB

    def fraction_limited(self) -> bool:
        return True

    def optimizer_bytes(self) -> int:
        return 0


@pytest.fixture
def tiny_loss_model(tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    peft_model.train()
    return CausalLMLoss(peft_model)


def test_choose_sizing_picks_by_throughput_and_sets_the_layers(monkeypatch, tiny_loss_model):
    monkeypatch.setattr(sizing, "_Probe", FakeProbe)
    FakeProbe.runs = []
    chosen = choose_sizing(tiny_loss_model, TrainSettings(max_seq_len=2048), True, torch.device("cuda", 0))
    layers = decoder_layers(tiny_loss_model.model)
    assert chosen.rows > 1 and chosen.checkpointing and not chosen.offload
    assert chosen.probe["predicted_peak_gib"] <= chosen.probe["memory_budget_gib"] <= 22
    assert [layer.gradient_checkpointing for layer in layers][: chosen.checkpointed_layers] == [True] * (
        chosen.checkpointed_layers
    )
    assert sum(layer.gradient_checkpointing for layer in layers) == chosen.checkpointed_layers
    assert any(not c for _, _, c, _ in FakeProbe.runs) and any(c for _, _, c, _ in FakeProbe.runs)
    # the probe keeps to the budget too: no step was tried whose peak was predicted over it
    assert max(peak for *_, peak in FakeProbe.runs) <= chosen.probe["memory_budget_gib"] * GIB


def test_long_context_offloads_the_checkpointed_inputs(monkeypatch, tiny_loss_model):
    monkeypatch.setattr(sizing, "_Probe", FakeProbe)
    chosen = choose_sizing(tiny_loss_model, TrainSettings(max_seq_len=32768), True, torch.device("cuda", 0))
    layers = decoder_layers(tiny_loss_model.model)
    assert (chosen.rows, chosen.checkpointing, chosen.offload, chosen.chunked_mlp) == (1, True, True, False)
    assert all(hasattr(layer._gradient_checkpointing_func, "plain") for layer in layers)
    assert not any(mlp_chunked(layer.mlp) for layer in layers)
    # longer: offloading is not enough, the MLP runs in sequence chunks as well
    chosen = choose_sizing(tiny_loss_model, TrainSettings(max_seq_len=196608), True, torch.device("cuda", 0))
    assert (chosen.offload, chosen.chunked_mlp, chosen.probe["chunked_mlp"]) == (True, True, True)
    assert all(mlp_chunked(layer.mlp) for layer in layers)
    with pytest.raises(ConfigError, match="even with checkpointing offloaded to CPU and the MLP in chunks"):
        choose_sizing(tiny_loss_model, TrainSettings(max_seq_len=2**20), True, torch.device("cuda", 0))


class H200QloraProbe(FakeProbe):
    """The 8B QLoRA's figures on a 24 GiB cap (H200, compiled layers, 2026-12-03): checkpointed steps of 512, 2,048
    and 4,096 tokens took 0.379, 0.391 and 0.514 s (launch-bound), and the trained step of 16,384 tokens 1.535 s
    at 15.0 GiB; in between, linear. Without checkpointing: 9.53 GiB at 512 tokens, 20.79 at 2,048."""

    TIMES: ClassVar[list[tuple[int, float]]] = [(0, 0.379), (2048, 0.391), (4096, 0.514), (16384, 1.535)]

    def run(self, rows: int, length: int) -> Measure:
        tokens = rows * length
        checkpointed = any(layer_checkpointed(layer) for layer in decoder_layers(self.model.model))
        seconds = float(np.interp(tokens, *zip(*self.TIMES, strict=True)))
        if checkpointed:
            peak = (6.16 + (15.01 - 6.16) * (tokens - 512) / (16384 - 512)) * GIB
        else:
            peak, seconds = (9.53 + (20.79 - 9.53) * (tokens - 512) / (2048 - 512)) * GIB, seconds * 0.75
        FakeProbe.runs.append((rows, length, checkpointed, peak))
        return Measure(tokens, int(peak) if peak <= self.available() else None, seconds)


def test_a_step_at_the_scale_chosen_from_sets_the_predicted_speed(monkeypatch, tiny_loss_model):
    """The small steps alone predicted 13.1k tokens/s for 8 x 2,048 tokens, which trained at 10.7k: the probe runs
    a step at the most rows predicted to fit, and the prediction follows it."""
    monkeypatch.setattr(sizing, "_Probe", H200QloraProbe)
    FakeProbe.runs = []
    chosen = choose_sizing(tiny_loss_model, TrainSettings(max_seq_len=2048), True, torch.device("cuda", 0))
    # the step at scale timed twice: the first to reach a new high of memory also maps it (8B LoRA: 1.059 s for
    # 10,240 tokens the first time, 0.95 s a step in training)
    assert [run[:3] for run in FakeProbe.runs].count((8, 2048, True)) == 2
    assert chosen.rows == 8 and chosen.checkpointed_layers == len(decoder_layers(tiny_loss_model.model))
    assert chosen.probe["predicted_tokens_per_s"] == pytest.approx(16384 / 1.535, rel=0.02)
    assert chosen.probe["predicted_peak_gib"] == pytest.approx(15.01, abs=0.05)


H200_CALL = {  # 8B on a 24 GiB cap, H200, 2026-12-03 (fourth session, third call): probe steps (GiB, s) by tokens
    "qlora": {
        "checkpointed": {512: (6.16, 0.375), 2048: (7.57, 0.315), 4096: (8.19, 0.44), 16384: (14.7, 1.622)},
        "plain": {512: (9.53, 0.284), 2048: (20.79, 0.222)},
        # what the line through the big steps chose, and what it trained at: one row without checkpointing
        "chosen": (1, 32, 9914),  # rows, layers kept, tokens/s trained (predicted 11,558)
    },
    "lora": {
        "checkpointed": {512: (15.81, 0.309), 2048: (17.21, 0.287), 4096: (17.83, 0.414), 10240: (20.91, 1.015)},
        "plain": {512: (19.17, 0.188)},
        "chosen": (1, 11, 9043),  # predicted 11,113
    },
}


@pytest.mark.parametrize("method", sorted(H200_CALL))
def test_small_steps_are_predicted_from_their_own_measured_time(method):
    """A small step's time is launch-bound: predicted from the steps measured around it, not from the line
    through the big steps (that line chose one row and over-predicted it by a fifth); one row is no longer the
    choice, and what it did train at is not under-valued by more than the noise of a step."""
    call = H200_CALL[method]
    measures = [
        [Measure(tokens, int(peak * GIB), seconds) for tokens, (peak, seconds) in call[kind].items()]
        for kind in ("checkpointed", "plain")
    ]
    model = fit_model(*measures, LAYERS)
    rows, kept, trained = call["chosen"]
    predicted = rows * 2048 / model.seconds(rows * 2048, kept)
    assert predicted < trained * 1.05
    best = best_candidate(model, 2048, list(range(1, 9)), list(range(LAYERS + 1)), 21.8 * GIB)
    assert best is not None and best[0] > 1


def test_rows_at_and_past_a_scale_step_that_did_not_fit_are_not_chosen(monkeypatch, tiny_loss_model):
    class Steeper(H200QloraProbe):  # past 12k tokens memory grows faster than the small steps showed
        def run(self, rows: int, length: int) -> Measure:
            measure = super().run(rows, length)
            if measure.tokens > 12000:
                return Measure(measure.tokens, None, measure.seconds)  # out of memory
            return measure

    monkeypatch.setattr(sizing, "_Probe", Steeper)
    FakeProbe.runs = []
    chosen = choose_sizing(tiny_loss_model, TrainSettings(max_seq_len=2048), True, torch.device("cuda", 0))
    assert (8, 2048, True) in [run[:3] for run in FakeProbe.runs] and chosen.rows < 8


def step_gradients(loss_model: CausalLMLoss) -> tuple[dict[str, torch.Tensor], int]:
    """LoRA gradients of one packed step on fixed tokens, and how many decoder-layer forwards it ran."""
    calls = []
    layers = decoder_layers(loss_model.model)  # the MLP runs in the forward and again in a recompute
    hooks = [layer.mlp.register_forward_pre_hook(lambda *_: calls.append(1)) for layer in layers]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 900, (1, 48), generator=gen)
    positions = torch.cat([torch.arange(20), torch.arange(28)]).unsqueeze(0)
    loss = loss_model(input_ids=ids, targets=ids, position_ids=positions)
    loss.backward()
    for hook in hooks:
        hook.remove()
    grads = {n: p.grad.clone() for n, p in loss_model.named_parameters() if p.grad is not None}
    loss_model.zero_grad(set_to_none=True)
    return grads, len(calls)


def test_partial_and_offloaded_checkpointing_recompute_what_they_say_with_the_same_gradients(tiny_loss_model):
    layers = len(decoder_layers(tiny_loss_model.model))
    apply_checkpointing(tiny_loss_model.model, 0, offload=False)
    plain, plain_calls = step_gradients(tiny_loss_model)
    assert plain_calls == layers
    for checkpointed, offload in ((None, False), (1, False), (None, True)):
        apply_checkpointing(tiny_loss_model.model, checkpointed, offload)
        grads, calls = step_gradients(tiny_loss_model)
        assert calls == layers + (layers if checkpointed is None else checkpointed)  # recomputed in backward
        assert grads.keys() == plain.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(grad, plain[name], rtol=1e-5, atol=1e-7, msg=name)


def test_the_mlp_in_sequence_chunks_gives_the_same_gradients_one_chunk_at_a_time(tiny_loss_model, monkeypatch):
    """Offloaded checkpointing with each MLP in chunks of 16 tokens (48 in the step): the MLP's projections see
    16 tokens at a time, each chunk runs in the forward and again in its own recompute in backward, and the
    LoRA gradients are the plain step's; switching it off restores the MLP's own forward."""
    monkeypatch.setattr(activations, "MLP_CHUNK_TOKENS", 16)
    layers = decoder_layers(tiny_loss_model.model)
    apply_checkpointing(tiny_loss_model.model, 0, offload=False)
    plain, _ = step_gradients(tiny_loss_model)
    seen = []
    hooks = [layer.mlp.down_proj.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[-2]))
             for layer in layers]
    apply_checkpointing(tiny_loss_model.model, None, offload=True, chunked_mlp=True)
    grads, _ = step_gradients(tiny_loss_model)
    for hook in hooks:
        hook.remove()
    # every chunk in the forward and in its own recompute (the layer's recompute stops early, after the last
    # chunk's input: torch's checkpoint early stop)
    assert set(seen) == {16} and 2 * 3 * len(layers) <= len(seen) <= 3 * 3 * len(layers)
    assert grads.keys() == plain.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain[name], rtol=1e-5, atol=1e-7, msg=name)
    apply_checkpointing(tiny_loss_model.model, None, offload=False, chunked_mlp=False)
    assert not any("forward" in vars(layer.mlp) for layer in layers)


def test_chunking_wraps_and_then_keeps_an_mlp_forward_patched_on_the_instance(tiny_loss_model, monkeypatch):
    """Liger patches each MLP's forward on the instance: the chunks run that forward, and switching the chunks
    off (as every sizing does) puts it back rather than the class's own."""
    monkeypatch.setattr(activations, "MLP_CHUNK_TOKENS", 16)
    layers = decoder_layers(tiny_loss_model.model)
    calls = []
    for layer in layers:
        own = layer.mlp.forward

        def patched(x, own=own):
            calls.append(x.shape[-2])
            return own(x)

        layer.mlp.forward = patched
    patches = [layer.mlp.forward for layer in layers]
    apply_checkpointing(tiny_loss_model.model, None, offload=True, chunked_mlp=True)
    step_gradients(tiny_loss_model)
    assert calls and set(calls) == {16}
    apply_checkpointing(tiny_loss_model.model, None, offload=False, chunked_mlp=False)
    assert [layer.mlp.forward for layer in layers] == patches


def test_out_of_memory_mid_run_lowers_the_rows_and_trains_the_same_steps(write_config, metrics, tmp_path, monkeypatch):
    """An out-of-memory error raised from a real layer's forward (as the allocator would raise it) once a
    micro-batch holds more than one row: the run continues with one row per forward pass, says so, and its
    losses are the uninterrupted run's (the optimizer steps on the same tokens). CPU: the error is injected."""
    from transformers.models.llama.modeling_llama import LlamaMLP

    from runner.train.config import load_config
    from runner.train.session import run_session

    train = {"max_steps": 4, "batch_size": 2, "grad_accum": 1, "max_seq_len": 128, "save_steps": 2}
    run_session(load_config(write_config(train, output_dir=str(tmp_path / "whole"))))
    whole = [r["loss"] for r in metrics() if "loss" in r and "event" not in r]
    (tmp_path / "metrics.jsonl").unlink()

    original, raised = LlamaMLP.forward, []

    def forward(self, x):
        if x.shape[1] > 128 and not raised:  # more tokens than one row: this "card" is out of memory
            raised.append(x.shape[1])
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(self, x)

    monkeypatch.setattr(LlamaMLP, "forward", forward)
    outcome = run_session(load_config(write_config(train)))
    records = metrics()
    events = [r for r in records if r.get("event") == "out_of_memory"]
    assert raised and outcome.status == "done" and outcome.step == 4
    assert len(events) == 1 and events[0]["before"]["forward_rows"] == 2 and events[0]["after"]["forward_rows"] == 1
    assert "out of GPU memory" in events[0]["message"] and events[0]["resumed_from"] is None
    losses = [r["loss"] for r in records if "loss" in r and "event" not in r]
    assert losses == pytest.approx(whole, rel=1e-5)
    state = (tmp_path / "output" / "checkpoint-2" / "trainer_state.json").read_text()
    assert '"forward_rows": 1' in state  # a resumed run keeps the lower rows


def test_out_of_memory_in_the_optimizer_step_continues_from_the_last_checkpoint(
    write_config, metrics, tmp_path, monkeypatch
):
    """An out-of-memory error inside the optimizer step (parameters may be half updated): the run goes back to
    its last checkpoint with fewer rows per pass and trains the remaining steps as the uninterrupted run did."""
    from runner.train.config import load_config
    from runner.train.session import run_session

    train = {"max_steps": 4, "batch_size": 2, "grad_accum": 1, "max_seq_len": 128, "save_steps": 2}
    run_session(load_config(write_config(train, output_dir=str(tmp_path / "whole"))))
    whole = {r["step"]: r["loss"] for r in metrics() if "loss" in r and "event" not in r}
    (tmp_path / "metrics.jsonl").unlink()

    original, calls = torch.optim.AdamW.step, []

    def step(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third step, after checkpoint-2
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    outcome = run_session(load_config(write_config(train)))
    records = metrics()
    events = [r for r in records if r.get("event") == "out_of_memory"]
    assert outcome.status == "done" and outcome.step == 4
    assert len(events) == 1 and events[0]["resumed_from"].endswith("checkpoint-2")
    assert events[0]["after"]["forward_rows"] == 1
    losses = {r["step"]: r["loss"] for r in records if "loss" in r and "event" not in r}
    assert losses == pytest.approx(whole, rel=1e-5)
