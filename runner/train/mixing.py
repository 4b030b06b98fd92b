"""Several datasets in one job: each source's share of the examples is its weight over the sum of the weights.

The mix has as many records as its sources together (after any eval hold-out). A source's share is rounded to
whole records (largest remainder); a source with fewer records than its share is repeated whole and the rest
drawn from it, one with more has its share drawn, without repeats. The draws and the order of the mix come
from train.seed: the same seed gives the same mix on every rank and every run, another seed another one.
"""

from __future__ import annotations

import math
import random
from typing import Any

from .config import ConfigError, DataSource
from .data import Record

MIX_SALT = 0x6D6978  # the mix's draws differ from the eval hold-out's, which uses the bare seed


def mix(records: list[Record], dataset: str | tuple[DataSource, ...], seed: int) -> list[Record]:
    """The training records as the weights share them; one source (a plain path) is left as it is."""
    if isinstance(dataset, str) or len(dataset) < 2:
        return records
    groups: dict[DataSource, list[Record]] = {source: [] for source in dataset}
    for record in records:
        groups[record.source].append(record)
    rng = random.Random(seed ^ MIX_SALT)
    mixed: list[Record] = []
    for (source, group), share in zip(groups.items(), shares([s.weight for s in dataset], len(records)), strict=True):
        if not group:
            raise ConfigError(f"dataset {source.path} has no records to train on (empty, or all held out by "
                              "eval.split); fill it, lower eval.split or leave the source out")
        whole, rest = divmod(share, len(group))
        mixed += group * whole + rng.sample(group, rest)
    rng.shuffle(mixed)
    return mixed


def shares(weights: list[float], total: int) -> list[int]:
    """`total` split by weight into whole counts that add up to it (largest remainder, ties to the first)."""
    exact = [total * w / sum(weights) for w in weights]
    counts = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: counts[i] - exact[i])
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def mix_line(rows: list[dict[str, Any]]) -> str:
    """'chat.jsonl weight 3: 100 records -> 300 examples (75 %); alpaca.jsonl weight 1: ...' from the counts of
    a tokenized mix (DataCounts.mix, the trainer's start event's data_mix)."""
    total = sum(row["examples"] for row in rows) or 1
    return "; ".join(f"{row['dataset']} weight {row['weight']:g}: {row['records']} records -> {row['examples']} "
                     f"examples ({100 * row['examples'] / total:.0f} %)" for row in rows)
