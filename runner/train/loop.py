"""The training loop: steps, gradient accumulation, logging, checkpoints, graceful stop and resume."""

from __future__ import annotations

import gc
import logging
import math
import shutil
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .activations import apply_checkpointing
from .checkpoint import load_checkpoint, save_adapter, save_checkpoint
from .config import TrainSettings
from .evaluation import BEST_DIR, Evaluation, promote_best
from .metrics import Metrics, Pace
from .packing import BatchPlan, collate_packed, collate_padded, pack_best_fit

log = logging.getLogger("runner.train")


@dataclass
class Outcome:
    status: str  # "done" or "stopped"
    step: int
    path: str | None  # the adapter, or the stop checkpoint


class StopRequest:
    """Set by SIGTERM/SIGINT or by the stop file; ranks agree on it through the per-step all-reduce."""

    def __init__(self, stop_file: str | None) -> None:
        self.stop_file = Path(stop_file) if stop_file else None
        self.signalled = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.warning("signal %d: stopping after this step", signum)
        self.signalled = True

    def requested(self) -> bool:
        return self.signalled or bool(self.stop_file and self.stop_file.exists())


def make_schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float) -> Any:
    """Linear warm-up, then cosine decay to 10 % of the peak rate."""
    warmup = max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_optimizer(model: nn.Module, settings: TrainSettings, device: torch.device) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    fused = device.type == "cuda" and all(p.is_cuda and p.dtype == torch.float32 for p in params)
    return torch.optim.AdamW(
        params,
        lr=settings.learning_rate,
        weight_decay=settings.weight_decay,
        betas=(0.9, 0.999),
        fused=fused or None,
    )


def total_steps(plan: BatchPlan, settings: TrainSettings) -> int:
    if settings.max_steps:
        return settings.max_steps
    return max(1, math.ceil(plan.steps_per_epoch * settings.epochs))


class Trainer:
    """Runs the steps of one session on every rank; rank 0 writes metrics, checkpoints and the adapter."""

    def __init__(
        self,
        *,
        accelerator: Any,
        wrapped: nn.Module,
        peft_model: nn.Module,
        optimizer: Any,
        scheduler: Any,
        plan: BatchPlan,
        steps: int,
        settings: TrainSettings,
        output_dir: str,
        metrics: Metrics,
        stop: StopRequest,
        tokenizer: Any,
        pad_id: int,
        run_info: dict[str, Any],
        forward_rows: int | None = None,
        evaluation: Evaluation | None = None,
    ) -> None:
        self.accelerator, self.wrapped, self.peft_model = accelerator, wrapped, peft_model
        self.optimizer, self.scheduler, self.plan, self.steps = optimizer, scheduler, plan, steps
        self.settings, self.output_dir, self.metrics, self.stop = settings, output_dir, metrics, stop
        self.tokenizer, self.pad_id, self.run_info = tokenizer, pad_id, run_info
        self.evaluation = evaluation  # None: no eval section, training as before
        self.step = 0
        self.last_loss: float | None = None
        # Rows per forward pass: the plan's rows unless an out-of-memory error lowered it (the micro-batch is then
        # split, its gradients summed: the optimizer steps on the same tokens, so the data position is unchanged)
        self.forward_rows = forward_rows or plan.rows
        self.last_checkpoint: Path | None = None
        self._stepping = False  # inside optimizer.step: parameters may be half updated

    def resume(self, path: Path) -> None:
        """Continue from a checkpoint (the newest complete one every rank has: checkpoint.agreed_checkpoint)."""
        state = load_checkpoint(self.accelerator, path, self.wrapped, self.peft_model, self.optimizer, self.scheduler)
        self.step = state["step"]
        if self.evaluation:
            self.evaluation.load(state.get("eval"))
        self.last_checkpoint = path
        log.info("resumed from %s at step %d", path, self.step)

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "total_steps": self.steps,
            "rows": self.plan.rows,
            "checkpointing": self.run_info.get("gradient_checkpointing"),
            "forward_rows": self.forward_rows,
            "checkpointed_layers": self.run_info.get("checkpointed_layers"),
            "offload_checkpoints": self.run_info.get("offload_checkpoints", False),
            "chunked_mlp": self.run_info.get("chunked_mlp", False),
            **({"eval": self.evaluation.state()} if self.evaluation else {}),
        }

    def run(self) -> Outcome:
        self.metrics.event("start", total_steps=self.steps, start_step=self.step, **self.run_info)
        if self.accelerator.device.type == "cuda":  # the training peak, without the sizing probe's steps
            torch.cuda.reset_peak_memory_stats(self.accelerator.device)
        if self._agreed_stop(torch.zeros((), device=self.accelerator.device))[1]:
            return self._stopped(checkpoint=None)
        last_time, tokens = time.perf_counter(), 0
        pace = Pace(self.step, self.steps)
        while self.step < self.steps:
            loss_sum = self._train_step_recovering()
            tokens += self.plan.step_input_tokens(self.step)
            self.step += 1
            total_loss, stop = self._agreed_stop(loss_sum)
            now = time.perf_counter()
            self.last_loss = total_loss / self.plan.step_work(self.step - 1, 0).trained_tokens
            self.metrics.step(
                self.step,
                self.steps,
                self.last_loss,
                self.scheduler.get_last_lr()[0],
                tokens / (now - last_time),
                self.step / self.plan.steps_per_epoch,
                pace.fields(self.step, tokens),
            )
            last_time, tokens = now, 0
            if self.evaluation and self.evaluation.due(self.step) and self.step < self.steps:
                self._evaluate(final=False)
                last_time = time.perf_counter()  # the next step's speed without the evaluation
                if self.evaluation.out_of_patience():
                    return self._finish(early_stopped=True)
            if stop:
                return self._stopped(checkpoint=self._checkpoint())
            if self.step % self.settings.save_steps == 0 and self.step < self.steps:
                self._checkpoint()
        return self._finish()

    def _finish(self, early_stopped: bool = False) -> Outcome:
        """The final adapter: the last weights, or with an eval section the best evaluated ones."""
        ev = self.evaluation
        if ev and early_stopped:
            self.metrics.event("early_stop", step=self.step, best_step=ev.best_step, best_eval_loss=ev.best_loss,
                               patience=ev.settings.patience)
        elif ev:
            self._evaluate(final=True)
        if ev and ev.best_step != self.step:
            adapter = promote_best(self.accelerator, self.output_dir)
        else:
            adapter = save_adapter(self.accelerator, self.wrapped, self.peft_model, self.tokenizer, self.output_dir)
            if ev and self.accelerator.is_main_process:
                shutil.rmtree(Path(self.output_dir) / BEST_DIR, ignore_errors=True)
        written = str(adapter) if self.accelerator.is_main_process else None  # multi-node: on rank 0's host
        found = {"eval_loss": ev.last_loss, "best_eval_loss": ev.best_loss, "best_step": ev.best_step,
                 "adapter_step": ev.best_step, "early_stopped": early_stopped} if ev else {}
        self.metrics.event("done", adapter=written, final_loss=self.last_loss, steps=self.step, **found,
                           **self._peaks())
        return Outcome("done", self.step, str(adapter))

    def _evaluate(self, final: bool) -> None:
        """One evaluation; a new best keeps its adapter (output_dir/best) unless this is the end of training."""
        ev = self.evaluation
        assert ev is not None
        best = ev.record(self.step, ev.loss(self))
        self.metrics.eval(self.step, ev.last_loss, ev.tokens, best)
        if best and not final:
            save_adapter(self.accelerator, self.wrapped, self.peft_model, self.tokenizer,
                         Path(self.output_dir) / BEST_DIR)

    def _peaks(self) -> dict[str, float]:
        """This process's GPU memory peaks since training started (allocated, and held by the allocator)."""
        device = self.accelerator.device
        if device.type != "cuda":
            return {}
        return {
            "gpu_peak_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2),
            "gpu_peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / 2**30, 2),
        }

    def _train_step(self) -> torch.Tensor:
        acc = self.accelerator
        work = self.plan.step_work(self.step, acc.process_index)
        scale = acc.num_processes / work.trained_tokens  # DDP averages over ranks: undo it, divide by all tokens
        loss_sum = torch.zeros((), device=acc.device)
        parts = [part for examples in work.micro_batches for part in self._forward_parts(examples)]
        for index, examples in enumerate(parts):
            batch = self._to_device(examples)
            last = index == len(parts) - 1
            with nullcontext() if last else acc.no_sync(self.wrapped):
                loss = self.wrapped(**batch)
                acc.backward(loss * scale)
            loss_sum += loss.detach().float()
            loss = batch = None
        if self.settings.max_grad_norm:
            acc.clip_grad_norm_([p for p in self.wrapped.parameters() if p.requires_grad], self.settings.max_grad_norm)
        self._stepping = True
        self.optimizer.step()
        self._stepping = False
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum

    def _forward_parts(self, examples: list[int]) -> list[list[int]]:
        """A micro-batch as forward passes of at most forward_rows rows (one pass unless memory ran out)."""
        if self.forward_rows >= self.plan.rows or len(examples) <= 1:
            return [examples]
        if not self.plan.packing:
            return [examples[i : i + self.forward_rows] for i in range(0, len(examples), self.forward_rows)]
        return pack_best_fit(self.plan.lengths, examples, self.forward_rows * self.plan.max_seq_len)

    def _train_step_recovering(self) -> torch.Tensor:
        """A step; out of GPU memory mid-run, fewer rows per forward pass (then checkpointing, then offloading
        it to CPU) and the step again: from where it was when the parameters are intact, else from the last
        checkpoint. One process only: a rank cannot change shape alone while its peers wait in a collective."""
        while True:
            try:
                return self._train_step()
            except torch.OutOfMemoryError as err:
                change = self._lower_memory_plan()
                if change is None or self.accelerator.num_processes > 1:
                    raise
                if self._stepping and self.last_checkpoint is None:
                    raise RuntimeError(
                        "out of GPU memory in the optimizer step with no checkpoint to go back to"
                    ) from err
                stepping, self._stepping = self._stepping, False
            # out of the except block: its traceback held the failed step's tensors
            self._recover(change, from_checkpoint=stepping)

    def _lower_memory_plan(self) -> dict[str, Any] | None:
        """The next smaller setting: half the rows per pass, then checkpointing every layer, then offloading, then
        the MLP in sequence chunks."""
        info = self.run_info
        if self.forward_rows > 1:
            return {"forward_rows": self.forward_rows // 2}
        if info.get("checkpointed_layers") != info.get("layers") or not info.get("gradient_checkpointing"):
            return {"checkpointed_layers": info.get("layers"), "gradient_checkpointing": True}
        if not info.get("offload_checkpoints"):
            return {"offload_checkpoints": True}
        if not info.get("chunked_mlp"):
            return {"chunked_mlp": True}
        return None

    def _recover(self, change: dict[str, Any], from_checkpoint: bool) -> None:
        before = {"forward_rows": self.forward_rows, **{k: self.run_info.get(k) for k in change if k != "forward_rows"}}
        self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.forward_rows = change.get("forward_rows", self.forward_rows)
        self.run_info.update({k: v for k, v in change.items() if k != "forward_rows"})
        if "forward_rows" not in change:
            apply_checkpointing(
                self.peft_model,
                self.run_info.get("checkpointed_layers"),
                bool(self.run_info.get("offload_checkpoints")),
                bool(self.run_info.get("chunked_mlp")),
            )
        if from_checkpoint:
            assert self.last_checkpoint is not None
            self.resume(self.last_checkpoint)
        where = f"from the checkpoint {self.last_checkpoint}" if from_checkpoint else "the same step again"
        log.warning(
            "out of GPU memory at step %d: %s -> %s; continuing with %s",
            self.step + 1,
            before,
            change,
            where,
        )
        self.metrics.event(
            "out_of_memory",
            step=self.step,
            before=before,
            after={"forward_rows": self.forward_rows, **{k: v for k, v in change.items() if k != "forward_rows"}},
            resumed_from=str(self.last_checkpoint) if from_checkpoint else None,
            message=f"out of GPU memory at step {self.step + 1}: continuing with {change} ({where})",
        )

    def _to_device(self, indices: list[int]) -> dict[str, Any]:
        return self.device_batch([self.plan.examples[i] for i in indices])

    def device_batch(self, examples: list[Any]) -> dict[str, Any]:
        """Examples collated as the plan collates them (packed or padded), on this rank's device."""
        batch = (
            collate_packed(examples, self.plan.max_seq_len)
            if self.plan.packing
            else collate_padded(examples, self.pad_id)
        )
        device = self.accelerator.device
        return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _agreed_stop(self, loss_sum: torch.Tensor) -> tuple[float, bool]:
        """One all-reduce per step: the summed loss over ranks, and whether any rank wants to stop."""
        flag = torch.tensor(float(self.stop.requested()), device=loss_sum.device)
        both = self.accelerator.reduce(torch.stack([loss_sum.float(), flag]), reduction="sum")
        return float(both[0]), bool(both[1] > 0)

    def _checkpoint(self) -> str:
        path = save_checkpoint(
            self.accelerator,
            self.wrapped,
            self.peft_model,
            self.optimizer,
            self.scheduler,
            self.state(),
            self.output_dir,
        )
        self.last_checkpoint = Path(path)
        self.metrics.event("checkpoint", step=self.step, path=str(path))
        return str(path)

    def _stopped(self, checkpoint: str | None) -> Outcome:
        self.metrics.event("stopped", step=self.step, checkpoint=checkpoint)
        return Outcome("stopped", self.step, checkpoint)
