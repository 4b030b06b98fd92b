"""Evaluation: the loss on held-out examples every eval.every_steps steps and at the end, the best one so far,
and patience (evaluations without a lower loss before training stops early)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError, EvalSettings, TrainConfig
from .data import Example, Record, hold_out, read_records, tokenize_records
from .packing import pack_best_fit

BEST_DIR = "best"  # output_dir/best/adapter: the adapter at the lowest eval loss, the final one at the end


def split_data(cfg: TrainConfig, records: list[Record]) -> tuple[list[Record], list[Record] | None]:
    """(training records, evaluation records): held out of the dataset by the seed, or read from eval.dataset;
    None without an eval section."""
    if cfg.eval is None:
        return records, None
    if cfg.eval.split is not None:
        return hold_out(records, cfg.eval.split, cfg.train.seed)
    try:
        return records, read_records(cfg.eval.dataset)
    except ConfigError as err:
        raise ConfigError(f"eval.dataset: {err}") from None


def eval_examples(records: list[Record], cfg: TrainConfig, tokenizer: Any) -> list[Example]:
    """The evaluation records tokenized as training data is: the loss counts the responses (assistant turns) only."""
    try:
        examples, _ = tokenize_records(records, cfg.format, tokenizer, cfg.train.max_seq_len)
    except ConfigError as err:
        raise ConfigError(f"eval: {err}") from None
    return examples


class Evaluation:
    """The evaluation examples and what the evaluations so far found; its state goes into every checkpoint."""

    def __init__(self, examples: list[Example], settings: EvalSettings) -> None:
        self.examples, self.settings = examples, settings
        self.tokens = sum(e.trained_tokens for e in examples)
        self.last_loss: float | None = None
        self.best_loss: float | None = None
        self.best_step: int | None = None
        self.since_best = 0  # evaluations since the best one

    def due(self, step: int) -> bool:
        every = self.settings.every_steps
        return bool(every) and step % every == 0

    def record(self, step: int, loss: float) -> bool:
        """Note one evaluation's loss; True when it is the lowest so far."""
        self.last_loss = loss
        best = self.best_loss is None or loss < self.best_loss
        if best:
            self.best_loss, self.best_step, self.since_best = loss, step, 0
        else:
            self.since_best += 1
        return best

    def out_of_patience(self) -> bool:
        return self.settings.patience is not None and self.since_best >= self.settings.patience

    def state(self) -> dict[str, Any]:
        return {"last_loss": self.last_loss, "best_loss": self.best_loss, "best_step": self.best_step,
                "since_best": self.since_best}

    def load(self, state: dict[str, Any] | None) -> None:
        for key, value in (state or {}).items():
            setattr(self, key, value)

    def loss(self, trainer: Any) -> float:
        """The mean loss per response token over all evaluation examples: under no_grad, in eval mode (no dropout),
        each rank a share of the batches; every rank runs as many forward passes (a filler where it has none)."""
        acc = trainer.accelerator
        batches = self._batches(trainer.plan, trainer.forward_rows)
        per_rank = math.ceil(len(batches) / acc.num_processes)
        mine = batches[acc.process_index :: acc.num_processes]
        mine += [[]] * (per_rank - len(mine))
        total = torch.zeros((), device=acc.device)
        trainer.wrapped.eval()
        try:
            with torch.no_grad():
                for indices in mine:
                    examples = [self.examples[i] for i in indices]
                    total += trainer.wrapped(**trainer.device_batch(examples)).float()
        finally:
            trainer.wrapped.train()
        return float(acc.reduce(total, reduction="sum")) / self.tokens

    def _batches(self, plan: Any, rows: int) -> list[list[int]]:
        """Forward passes as training makes them: packed rows of max_seq_len, or `rows` padded examples."""
        order = list(range(len(self.examples)))
        if plan.packing:
            return pack_best_fit([len(e.input_ids) for e in self.examples], order, rows * plan.max_seq_len)
        return [order[i : i + rows] for i in range(0, len(order), rows)]


def promote_best(accelerator: Any, output_dir: str | Path) -> Path:
    """The best adapter becomes output_dir/adapter (rank 0 renames it); all ranks call this."""
    final = Path(output_dir) / "adapter"
    if accelerator.is_main_process:
        best = Path(output_dir) / BEST_DIR
        old = final.with_name(".old-adapter")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
        (best / "adapter").rename(final)
        shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(best, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
