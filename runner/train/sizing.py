"""Size micro-batches and activation checkpointing by throughput, among the shapes that fit the memory budget.

Probe steps (a forward and backward over random tokens, timed and measured) give, per token, the memory and
time of a micro-batch with every decoder layer checkpointed, and what leaving layers un-checkpointed adds in
memory and saves in time. Every (rows, checkpointed layers) candidate that fits the budget is scored by its
modelled tokens/s and the fastest is used: on a tight card that is often more rows with checkpointing, not
the most rows that fit without it. Where even one row with checkpointing does not fit, the checkpointed layer
inputs are offloaded to CPU memory (long context), and where that is not enough either, each layer's MLP runs in
sequence chunks (activations.py).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .activations import apply_checkpointing
from .config import AUTO, ConfigError, TrainSettings
from .data import Example
from .model import decoder_layers, layers_compiled
from .packing import collate_packed, collate_padded

log = logging.getLogger("runner.train")
GIB = 2**30
MAX_TOKENS_PER_MICRO_BATCH = 16384  # past this, bigger matrices no longer buy throughput (and steps grow large)
# What a real card holds outside torch's allocator, which a per-process memory fraction does not count: the CUDA
# context with its kernel images and cuBLAS/cuDNN handles. 0.5-0.9 GiB on 30/40-series cards with CUDA 12+ lazy
# loading (nvidia-smi's per-process use minus torch.cuda.memory_reserved; bench/RESULTS.md has the H200 figure).
CUDA_CONTEXT_GIB = 1.0
# NCCL's communication buffers (cudaMalloc'd by NCCL, outside torch's allocator) when several processes train.
NCCL_BUFFERS_GIB = 0.5
# Reserved over allocated: the caching allocator's fragmentation, which the probe's allocated peak does not show.
ALLOCATOR_SLACK = 0.05


@dataclass(frozen=True)
class Sizing:
    rows: int  # packed: max_seq_len-token rows per micro-batch; unpacked: examples per micro-batch
    checkpointing: bool
    probe: dict[str, Any]  # what the probe measured and chose, for the start event
    checkpointed_layers: int | None = None  # None: all layers when checkpointing, none otherwise
    offload: bool = False  # checkpointed layer inputs held in CPU memory
    chunked_mlp: bool = False  # each layer's MLP in sequence chunks (activations.py)
    forward_rows: int | None = None  # rows per forward pass when lower than rows (after an out-of-memory error)
    candidates: list[dict[str, float]] = field(default_factory=list, compare=False)


@dataclass(frozen=True)
class Measure:
    """Peak bytes and seconds of one probe step over `tokens` tokens; peak None when it ran out of memory."""

    tokens: int
    peak: int | None
    seconds: float


@dataclass(frozen=True)
class Model:
    """Linear models of a micro-batch of T tokens (every layer checkpointed), and what un-checkpointing adds."""

    mem_fixed: float  # bytes at T = 0, checkpointed
    mem_per_token: float  # bytes per token, checkpointed
    extra_per_token: float  # bytes per token if no layer is checkpointed, over the checkpointed figure
    time_fixed: float  # seconds at T = 0, checkpointed (the line past the largest step)
    time_per_token: float
    recompute_share: float  # share of the checkpointed step's time that no checkpointing saves
    layers: int
    times: tuple[tuple[int, float], ...] = ()  # (tokens, seconds) of the checkpointed steps measured, ascending

    def peak(self, tokens: int, kept: int) -> float:
        """Predicted peak with `kept` of the layers not checkpointed."""
        extra = self.extra_per_token * tokens * kept / self.layers if kept else 0.0  # (inf x 0 is nan)
        return self.mem_fixed + self.mem_per_token * tokens + extra

    def seconds(self, tokens: int, kept: int) -> float:
        """Up to the largest step measured, between the measured steps (a small step's launch-bound time is its
        own, not the big steps' line: through them one row without checkpointing was predicted at 11.6k tokens/s
        and trained at 9.9k, against 10.7k for eight rows checkpointed); past it, the line of the two largest."""
        if len(self.times) > 1 and tokens <= self.times[-1][0]:
            at = next(i for i, (t, _) in enumerate(self.times) if t >= tokens)
            (t0, s0), (t1, s1) = self.times[max(at - 1, 0)], self.times[at]
            step = s1 if tokens <= t0 else s0 + (s1 - s0) * (tokens - t0) / (t1 - t0)
        else:
            step = self.time_fixed + self.time_per_token * tokens
        return step * (1 - self.recompute_share * kept / self.layers)


def memory_budget(available: float, world_size: int, fraction_limited: bool) -> float:
    """Bytes the training step may peak at: what torch may allocate, less what a real card also holds."""
    budget = available * (1 - ALLOCATOR_SLACK)
    if fraction_limited:  # a per-process fraction: the context is not in the figure (a card's free memory has it)
        budget -= CUDA_CONTEXT_GIB * GIB
    if world_size > 1:
        budget -= NCCL_BUFFERS_GIB * GIB
    return budget


def fit_model(checkpointed: list[Measure], plain: list[Measure], layers: int) -> Model:
    """The linear models from probe steps: `checkpointed` at one or two sizes, `plain` (no checkpointing) at the
    sizes that fitted (its memory and time relative to checkpointed steps of the same size)."""
    done = sorted({m.tokens: m for m in checkpointed if m.peak is not None}.values(), key=lambda m: m.tokens)
    first, last = done[0], done[-1]
    if len(done) > 1:
        # Memory per token over the widest span (the probe's smallest to its largest step); time per token from
        # its two largest steps: a step of a few hundred tokens is launch-bound, and a slope through it predicted
        # 15.3k tokens/s for an 8B QLoRA shape that trained at 9.9k (bench/RESULTS.md, 2026-12-03)
        per_token = max((last.peak - first.peak) / (last.tokens - first.tokens), 1.0)
        before = done[-2]
        time_per_token = max((last.seconds - before.seconds) / (last.tokens - before.tokens), 1e-9)
    else:  # one size: the probe's peak over tokens (an upper bound), time proportional to tokens
        per_token, time_per_token = last.peak / last.tokens, last.seconds / last.tokens
    extra, share = float("inf"), 0.0
    pairs = [(p, c) for p in plain if p.peak is not None for c in done if c.tokens == p.tokens]
    if pairs:
        extra = max(max((p.peak - c.peak) / p.tokens, 0.0) for p, c in pairs)
        share = sum(min(max(1 - p.seconds / c.seconds, 0.0), 0.9) for p, c in pairs) / len(pairs)
    return Model(  # anchored at the largest step, the one nearest the shapes chosen from
        mem_fixed=last.peak - per_token * last.tokens,
        mem_per_token=per_token,
        extra_per_token=extra,
        time_fixed=max(last.seconds - time_per_token * last.tokens, 0.0),
        time_per_token=time_per_token,
        recompute_share=share,
        layers=layers,
        times=tuple((m.tokens, m.seconds) for m in done),
    )


def best_candidate(
    model: Model, row_tokens: int, rows_choices: list[int], kept_choices: list[int], budget: float
) -> tuple[int, int, float, float] | None:
    """(rows, layers kept un-checkpointed, predicted peak, predicted tokens/s) of the fastest shape in budget."""
    best = None
    for rows in rows_choices:
        tokens = rows * row_tokens
        for kept in kept_choices:
            if kept and model.extra_per_token == float("inf"):
                continue
            peak = model.peak(tokens, kept)
            if not peak <= budget:
                continue
            speed = tokens / model.seconds(tokens, kept)
            if best is None or speed > best[3] * 1.01:  # 1 %: measurement noise, prefer the earlier (smaller)
                best = (rows, kept, peak, speed)
    return best


def choose_sizing(
    loss_model: nn.Module,
    settings: TrainSettings,
    packing: bool,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    can_probe: bool = True,
    world_size: int = 1,
) -> Sizing:
    """Rows per micro-batch and checkpointing; probes on CUDA, takes the safe small choice elsewhere."""
    fixed_rows = settings.batch_size if settings.batch_size != AUTO else None
    checkpointing = settings.gradient_checkpointing
    if device.type != "cuda" or not can_probe:
        rows = fixed_rows or 1
        gc_on = checkpointing if checkpointing != AUTO else not can_probe and device.type == "cuda"
        layers = len(decoder_layers(loss_model.model))
        if gc_on:
            apply_checkpointing(loss_model.model, None, offload=False)
        return Sizing(rows, bool(gc_on), {"layers": layers, "checkpointed_layers": layers if gc_on else 0})
    probe = _Probe(loss_model, settings.max_seq_len, packing, device, autocast)
    layers = len(decoder_layers(loss_model.model))
    budget = memory_budget(probe.available(), world_size, probe.fraction_limited()) - probe.optimizer_bytes()
    length = settings.max_seq_len
    cap = max(1, MAX_TOKENS_PER_MICRO_BATCH // length)
    rows_choices = [fixed_rows] if fixed_rows else list(range(1, cap + 1))
    kept_choices = {True: [0], False: [layers]}.get(checkpointing, list(range(layers + 1)))  # type: ignore[arg-type]

    apply_checkpointing(loss_model.model, None, offload=False)
    # Warm-up: kernels load and tune here, not in a timed step. Compiled layers compile at their first shape and
    # again, shape-general, at the next: two warm-up shapes (tokens and examples both change) take both compiles.
    warm = min(length, 2048)
    if layers_compiled(loss_model.model):
        probe.run(1, max(warm // 2, 1))
        probe.run(2, warm)
    else:
        probe.run(1, warm)
    checkpointed = [probe.run(rows_choices[0], length)]
    if _fits(checkpointed[0], budget) and len(rows_choices) > 1:
        checkpointed.append(probe.run(2, length))
    plain: list[Measure] = []
    if kept_choices != [0]:
        plain, twin = _plain_measures(loss_model.model, probe, checkpointed, length, budget)
        if not any(_fits(m, budget) and m.tokens >= length for m in plain) and kept_choices == [layers]:
            raise ConfigError(
                f"one micro-batch of {rows_choices[0]} x {length} tokens does not fit in GPU memory without "
                "checkpointing; set train.gradient_checkpointing to auto or true, or lower train.max_seq_len"
            )
        if twin is not None:
            checkpointed.insert(0, twin)
    offload = chunked = False
    full = next(m for m in checkpointed if m.tokens == rows_choices[0] * length)
    if not _fits(full, budget) and kept_choices != [layers]:
        # Even one row checkpointed is over: hold the checkpointed layer inputs in CPU memory, and if that is not
        # enough, run each layer's MLP in sequence chunks too (one more MLP forward a layer)
        for chunked in (False, True):
            apply_checkpointing(loss_model.model, None, offload=True, chunked_mlp=chunked)
            full = probe.run(rows_choices[0], length)
            if _fits(full, budget):
                break
        checkpointed, plain, offload = [full], [], True
        rows_choices, kept_choices = rows_choices[:1], [0]
        if not _fits(full, budget):
            raise ConfigError(
                f"one micro-batch of {rows_choices[0]} x {length} tokens does not fit in GPU memory even with "
                "checkpointing offloaded to CPU and the MLP in chunks; lower train.max_seq_len or train.batch_size"
            )
    model = fit_model(checkpointed, plain, layers)
    if not offload and kept_choices != [layers]:
        rows_choices = _probe_at_scale(probe, model, checkpointed, rows_choices, length, budget)
        model = fit_model(checkpointed, plain, layers)
    best = best_candidate(model, length, rows_choices, kept_choices, budget)
    if best is None:  # nothing predicted in budget: the smallest checkpointed shape (it ran)
        best = (rows_choices[0], 0, float(full.peak or 0), full.tokens / max(full.seconds, 1e-9))
    rows, kept, peak, speed = best
    checkpointed_layers = layers - kept
    apply_checkpointing(loss_model.model, checkpointed_layers, offload, chunked)
    log.info(
        "sizing: %d row(s) of %d tokens per micro-batch, %d of %d layers checkpointed%s%s "
        "(predicted %.0f tokens/s, peak %.1f GiB of a %.1f GiB budget)",
        rows,
        length,
        checkpointed_layers,
        layers,
        ", inputs offloaded to CPU" if offload else "",
        ", MLP in sequence chunks" if chunked else "",
        speed,
        (peak + probe.optimizer_bytes()) / GIB,
        (budget + probe.optimizer_bytes()) / GIB,
    )
    info = {
        "layers": layers,
        "checkpointed_layers": checkpointed_layers,
        "offload_checkpoints": offload,
        "chunked_mlp": chunked,
        "memory_budget_gib": round((budget + probe.optimizer_bytes()) / GIB, 2),
        "predicted_peak_gib": round((peak + probe.optimizer_bytes()) / GIB, 2),
        "predicted_tokens_per_s": round(speed),
        "probe_steps": [
            {"tokens": m.tokens, "peak_gib": m.peak and round(m.peak / GIB, 2), "s": round(m.seconds, 3), "plain": p}
            for p, group in ((False, checkpointed), (True, plain))
            for m in group
        ],
    }
    return Sizing(rows, checkpointed_layers > 0, info, checkpointed_layers, offload, chunked)


def _probe_at_scale(
    probe: _Probe, model: Model, checkpointed: list[Measure], rows_choices: list[int], length: int, budget: float
) -> list[int]:
    """One more checkpointed step, at the most rows predicted to fit, where that is bigger than the probe's steps:
    steps of a few thousand tokens are partly launch-bound, and a time a token taken from them over-predicted big
    steps (8B QLoRA on a 24 GiB cap: 13.1k tokens/s predicted, 10.7k trained at 16,384 tokens; bench/RESULTS.md).
    Added to `checkpointed`; the rows choices, less those at and past it when it did not fit."""
    fitting = [r for r in rows_choices if model.peak(r * length, 0) <= budget]
    largest = max((m.tokens for m in checkpointed if m.peak is not None), default=0)
    if not fitting or max(fitting) * length <= largest:
        return rows_choices
    rows = max(fitting)
    big = probe.run(rows, length)
    if _fits(big, budget):
        # timed again: the first step to reach a new high of memory also maps it (8B LoRA, 24 GiB cap: 1.06 s for
        # 10,240 tokens against 0.95 s a step in training), and that slope made one row look faster than five
        again = probe.run(rows, length)
        peaks = [m.peak for m in (big, again) if m.peak is not None]
        checkpointed.append(Measure(big.tokens, max(peaks), again.seconds if again.peak is not None else big.seconds))
        return rows_choices
    return [r for r in rows_choices if r < rows] or rows_choices[:1]


def _fits(measure: Measure, budget: float) -> bool:
    return measure.peak is not None and measure.peak <= budget


def _plain_measures(
    model: nn.Module, probe: _Probe, checkpointed: list[Measure], length: int, budget: float
) -> tuple[list[Measure], Measure | None]:
    """Steps without checkpointing: first a quarter row (and the same checkpointed, returned as the twin), which
    gives what keeping activations costs a token; then the checkpointed sizes, each only where its predicted peak
    is in budget, so the probe itself keeps to the budget. Leaves every layer checkpointed."""
    measures: list[Measure] = []
    twin = None
    extra = None  # bytes a token that keeping every layer's activations adds
    if length >= 1024:
        apply_checkpointing(model, 0, offload=False)
        quarter = probe.run(1, length // 4)
        measures.append(quarter)
        apply_checkpointing(model, None, offload=False)
        if quarter.peak is None:
            return measures, None
        twin = probe.run(1, length // 4)
        extra = max(quarter.peak - (twin.peak or quarter.peak), 0) / quarter.tokens
    apply_checkpointing(model, 0, offload=False)
    for size in checkpointed:
        if size.peak is None or (extra is not None and size.peak + extra * size.tokens > budget):
            break
        measure = probe.run(size.tokens // length, length)
        measures.append(measure)
        if measure.peak is None:
            break
        extra = max(measure.peak - size.peak, 0) / measure.tokens
    apply_checkpointing(model, None, offload=False)
    return measures, twin


class _Probe:
    def __init__(
        self,
        loss_model: nn.Module,
        max_seq_len: int,
        packing: bool,
        device: torch.device,
        autocast: Callable[[], AbstractContextManager],
    ) -> None:
        self.model, self.max_seq_len, self.packing, self.device, self.autocast = (
            loss_model,
            max_seq_len,
            packing,
            device,
            autocast,
        )
        self.vocab = loss_model.model.get_input_embeddings().num_embeddings
        if device.index is None:  # the memory queries need an indexed device
            self.device = torch.device(device.type, torch.cuda.current_device())

    def run(self, rows: int, length: int) -> Measure:
        """One timed forward+backward over `rows` random examples of `length` tokens."""
        gen = torch.Generator().manual_seed(0)
        examples = [Example(ids, ids) for ids in torch.randint(0, self.vocab, (rows, length), generator=gen).tolist()]
        # packed: the training batches' fixed bound on example length (compiled code does not specialise on it)
        batch = collate_packed(examples, self.max_seq_len) if self.packing else collate_padded(examples, 0)
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        start = time.perf_counter()
        peak: int | None = None
        try:
            with self.autocast():
                loss = self.model(**batch)
            loss.backward()
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        except torch.OutOfMemoryError:
            pass  # leave the except block first: its traceback holds the step's tensors
        seconds = time.perf_counter() - start
        loss = None
        for p in self.model.parameters():
            p.grad = None
        gc.collect()
        torch.cuda.empty_cache()
        left = torch.cuda.memory_allocated(self.device) - before
        log.info("sizing probe: %d x %d tokens, peak %s, %.3f s", rows, length,
                 f"{peak / GIB:.2f} GiB" if peak is not None else "out of memory", seconds)
        if left > 64 * 2**20:  # the next steps' peaks would include it
            log.warning("sizing probe: the %d-token step left %.2f GiB allocated after it", rows * length, left / GIB)
        return Measure(rows * length, peak, seconds)

    def available(self) -> float:
        free, total = torch.cuda.mem_get_info(self.device)
        return min(total * self._fraction(), free + torch.cuda.memory_reserved(self.device))

    def fraction_limited(self) -> bool:
        free, total = torch.cuda.mem_get_info(self.device)
        return total * self._fraction() < free + torch.cuda.memory_reserved(self.device)

    def _fraction(self) -> float:
        return getattr(torch.cuda, "get_per_process_memory_fraction", lambda _: 1.0)(self.device)

    def optimizer_bytes(self) -> int:
        """AdamW moments and DDP's gradient buckets, which the probe does not allocate."""
        return 3 * sum(p.numel() * 4 for p in self.model.parameters() if p.requires_grad)
