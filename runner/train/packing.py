"""Group examples into micro-batches and steps; turn micro-batches into tensors.

Packed micro-batches are padding-free: the examples of one micro-batch are laid end to end in a single
row, positions restart at 0 for each example, and the attention path keeps each example to itself
(cu_seq_lens for varlen kernels, position ids for transformers' block-diagonal masks).
"""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache

import torch

from .data import IGNORE, Example


def pack_best_fit(lengths: list[int], order: list[int], capacity: int) -> list[list[int]]:
    """Bins of example indices, each summing to at most capacity tokens (online best fit in `order`)."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (tokens left, bin index), sorted
    for index in order:
        length = lengths[index]
        if length > capacity:
            raise ValueError(f"example of {length} tokens exceeds the bin capacity {capacity}")
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            left, bin_index = free.pop(slot)
        else:
            left, bin_index = capacity, len(bins)
            bins.append([])
        bins[bin_index].append(index)
        if left - length > 0:
            bisect.insort(free, (left - length, bin_index))
    return bins


@dataclass(frozen=True)
class StepWork:
    micro_batches: list[list[int]]  # this rank's micro-batches (example indices; [] is an empty filler)
    trained_tokens: int  # over all ranks and micro-batches of the step: the loss divisor


class BatchPlan:
    """Deterministic micro-batches per epoch and their split over ranks and accumulation steps."""

    def __init__(
        self,
        examples: list[Example],
        *,
        packing: bool,
        rows: int,
        max_seq_len: int,
        grad_accum: int,
        world_size: int,
        seed: int,
    ) -> None:
        self.examples = examples
        self.packing = packing
        self.rows = rows  # packed: sequences of max_seq_len per micro-batch; else examples per micro-batch
        self.capacity = rows * max_seq_len
        self.max_seq_len = max_seq_len
        self.per_step = grad_accum * world_size
        self.grad_accum, self.world_size, self.seed = grad_accum, world_size, seed
        self.lengths = [len(e.input_ids) for e in examples]
        self.trained = [e.trained_tokens for e in examples]
        self.steps_per_epoch = -(-len(self.epoch_batches(0)) // self.per_step)

    @lru_cache(maxsize=2)  # noqa: B019 - one plan per run; the cache holds the current and next epoch
    def epoch_batches(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.examples)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        if self.packing:
            return pack_best_fit(self.lengths, order, self.capacity)
        return [order[i : i + self.rows] for i in range(0, len(order), self.rows)]

    def step_work(self, step: int, rank: int) -> StepWork:
        epoch, index = divmod(step, self.steps_per_epoch)
        batches = self.epoch_batches(epoch)[index * self.per_step : (index + 1) * self.per_step]
        batches += [[]] * (self.per_step - len(batches))  # the last step of an epoch may be short
        mine = [batches[a * self.world_size + rank] for a in range(self.grad_accum)]
        return StepWork(mine, sum(self.trained[i] for batch in batches for i in batch))

    def shard(self, rank: int, epoch: int = 0) -> dict[str, object]:
        """Which examples `rank` trains in an epoch, in brief: ranks of one run get disjoint shards."""
        mine = sorted(
            i
            for step in range(self.steps_per_epoch)
            for batch in self.step_work(epoch * self.steps_per_epoch + step, rank).micro_batches
            for i in batch
        )
        digest = hashlib.sha256(",".join(map(str, mine)).encode()).hexdigest()[:16]
        return {"shard_examples": len(mine), "shard_digest": digest, "shard_sample": mine[:16]}

    def step_input_tokens(self, step: int) -> int:
        """Non-pad tokens over all ranks in a step (for tokens/s)."""
        epoch, index = divmod(step, self.steps_per_epoch)
        batches = self.epoch_batches(epoch)[index * self.per_step : (index + 1) * self.per_step]
        return sum(self.lengths[i] for batch in batches for i in batch)


def shifted_targets(example: Example) -> list[int]:
    """The next token's label at each position; IGNORE last, so packed examples never predict each other."""
    return [*example.labels[1:], IGNORE]


def collate_packed(examples: list[Example], max_length: int | None = None) -> dict[str, torch.Tensor | int]:
    """One padding-free row: ids, restarting positions, next-token targets, cu_seq_lens.

    max_length bounds the example lengths for varlen kernels; a fixed bound (max_seq_len) instead of the
    batch's own maximum keeps compiled code from specialising on it.
    """
    if not examples:
        return _filler()
    ids = [t for e in examples for t in e.input_ids]
    positions = [p for e in examples for p in range(len(e.input_ids))]
    targets = [t for e in examples for t in shifted_targets(e)]
    lengths = [len(e.input_ids) for e in examples]
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return {
        "input_ids": torch.tensor([ids]),
        "position_ids": torch.tensor([positions]),
        "targets": torch.tensor([targets]),
        "cu_seq_lens": cu,
        "max_length": max_length or max(lengths),
    }


def collate_padded(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor | int]:
    """Right-padded rows with an attention mask."""
    if not examples:
        return _filler()
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        targets[row, :n] = torch.tensor(shifted_targets(e))
    return {"input_ids": ids, "attention_mask": mask, "targets": targets}


def _filler() -> dict[str, torch.Tensor | int]:
    """A one-token micro-batch with nothing to learn, so every rank runs the same collectives."""
    return {
        "input_ids": torch.zeros((1, 1), dtype=torch.long),
        "position_ids": torch.zeros((1, 1), dtype=torch.long),
        "targets": torch.full((1, 1), IGNORE),
        "cu_seq_lens": torch.tensor([0, 1], dtype=torch.int32),
        "max_length": 1,
    }
