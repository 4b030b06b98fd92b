"""Size micro-batches from free GPU memory, and turn on activation checkpointing only when memory needs it.

Two probe steps (one and two rows of max_seq_len tokens) give the memory per token and the fixed cost;
the largest row count that fits 90 % of what is free (less optimizer state) is used.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from .config import AUTO, ConfigError, TrainSettings
from .data import Example
from .model import enable_checkpointing
from .packing import collate_packed, collate_padded

log = logging.getLogger("runner.train")
MAX_TOKENS_PER_MICRO_BATCH = 16384  # past this, bigger matrices no longer buy throughput
HEADROOM = 0.9


@dataclass(frozen=True)
class Sizing:
    rows: int  # packed: max_seq_len-token rows per micro-batch; unpacked: examples per micro-batch
    checkpointing: bool
    probe: dict[str, float]  # what the probe measured (GiB), for the start event


def choose_sizing(
    loss_model: nn.Module,
    settings: TrainSettings,
    packing: bool,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
    can_probe: bool = True,
) -> Sizing:
    """Rows per micro-batch and checkpointing; probes on CUDA, takes the safe small choice elsewhere."""
    fixed_rows = settings.batch_size if settings.batch_size != AUTO else None
    checkpointing = settings.gradient_checkpointing
    if device.type != "cuda" or not can_probe:
        rows = fixed_rows or 1
        gc = checkpointing if checkpointing != AUTO else not can_probe and device.type == "cuda"
        if gc:
            enable_checkpointing(loss_model.model)
        return Sizing(rows, bool(gc), {})
    probe = _Probe(loss_model, settings.max_seq_len, packing, device, autocast)
    if checkpointing is True:
        enable_checkpointing(loss_model.model)
    first = probe.peak(fixed_rows or 1)
    if first is None and checkpointing == AUTO:
        enable_checkpointing(loss_model.model)
        checkpointing = True
        first = probe.peak(fixed_rows or 1)
    if first is None:
        raise ConfigError(
            f"one micro-batch of {fixed_rows or 1} x {settings.max_seq_len} tokens does not fit in "
            "GPU memory even with checkpointing; lower train.max_seq_len or train.batch_size"
        )
    checkpointing = checkpointing is True
    if fixed_rows:
        return Sizing(fixed_rows, checkpointing, {"peak_gib": first / 2**30})
    second = probe.peak(2)
    cap = max(1, MAX_TOKENS_PER_MICRO_BATCH // settings.max_seq_len)
    if second is None:
        rows = 1
    else:
        per_row = max(second - first, 1)
        rows = int((probe.available() * HEADROOM - (first - per_row) - probe.optimizer_bytes()) // per_row)
        rows = max(1, min(rows, cap))
    log.info(
        "sizing: %d row(s) of %d tokens per micro-batch, checkpointing %s",
        rows,
        settings.max_seq_len,
        checkpointing,
    )
    return Sizing(
        rows,
        checkpointing,
        {"peak_1_row_gib": round(first / 2**30, 2), "peak_2_rows_gib": round((second or 0) / 2**30, 2)},
    )


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

    def peak(self, rows: int) -> int | None:
        """Peak bytes of one forward+backward over `rows` full-length examples; None when out of memory."""
        gen = torch.Generator().manual_seed(0)
        examples = [
            Example(ids, ids) for ids in torch.randint(0, self.vocab, (rows, self.max_seq_len), generator=gen).tolist()
        ]
        batch = collate_packed(examples) if self.packing else collate_padded(examples, 0)
        batch = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        try:
            with self.autocast():
                loss = self.model(**batch)
            loss.backward()
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        except torch.OutOfMemoryError:
            return None
        finally:
            loss = None
            for p in self.model.parameters():
                p.grad = None
            torch.cuda.empty_cache()

    def available(self) -> float:
        free, total = torch.cuda.mem_get_info(self.device)
        fraction = getattr(torch.cuda, "get_per_process_memory_fraction", lambda _: 1.0)(self.device)
        return min(total * fraction, free + torch.cuda.memory_reserved(self.device))

    def optimizer_bytes(self) -> int:
        """AdamW moments and DDP's gradient buckets, which the probe does not allocate."""
        return 3 * sum(p.numel() * 4 for p in self.model.parameters() if p.requires_grad)
