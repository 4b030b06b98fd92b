"""metrics.jsonl (one JSON object a line, appended and flushed) and the stdout log, written by rank 0."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("runner.train")


def setup_logging(is_main: bool) -> None:
    """Rank 0 logs progress to stdout (the supervisor keeps it as train.log); other ranks only warnings."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO if is_main else logging.WARNING)
    log.propagate = False


def read_jsonl(path: Path | None) -> Iterator[dict[str, Any]]:
    """The records of a metrics.jsonl (or telemetry.jsonl) as written: none for a missing file; a line cut short
    by a process that ended mid-write is skipped."""
    if path is None or not path.exists():
        return
    for line in path.read_text().splitlines():
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(item, dict):
            yield item


class Pace:
    """The run's pace, for a user planning by it: tokens/s averaged over this run of the trainer (from its first
    step's start, so warm-up, evaluations and checkpoints count, as they do for the user) instead of the last
    step's, which swings; the time so far and the time left at that pace."""

    def __init__(self, start_step: int, total_steps: int) -> None:
        self.started, self.start_step, self.total_steps, self.tokens = time.perf_counter(), start_step, total_steps, 0

    def fields(self, step: int, tokens: int) -> dict[str, float]:
        """After STEP, which took TOKENS input tokens: avg_tokens_per_s, elapsed_s, eta_s."""
        self.tokens += tokens
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        per_step = elapsed / max(step - self.start_step, 1)
        return {"avg_tokens_per_s": round(self.tokens / elapsed, 1), "elapsed_s": round(elapsed, 1),
                "eta_s": round(per_step * (self.total_steps - step), 1)}


class Metrics:
    def __init__(self, path: str | None, enabled: bool) -> None:
        self.path = Path(path) if path and enabled else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def event(self, name: str, **fields: Any) -> None:
        self._write({"event": name, **fields})
        log.info("%s %s", name, " ".join(f"{k}={v}" for k, v in fields.items()))

    def step(self, step: int, total_steps: int, loss: float, lr: float, tokens_per_s: float, epoch: float,
             pace: dict[str, float] | None = None) -> None:
        """One optimizer step; PACE (Pace.fields) adds the run's average speed, the time so far and the time left."""
        self._write(
            {
                "step": step,
                "total_steps": total_steps,
                "loss": round(loss, 6),
                "lr": lr,
                "tokens_per_s": round(tokens_per_s, 1),
                "epoch": round(epoch, 4),
                **(pace or {}),
            }
        )
        eta = f" avg {pace['avg_tokens_per_s']:.0f} tokens/s, {pace['eta_s']:.0f} s left" if pace else ""
        log.info("step %d/%d loss %.4f lr %.3g %.0f tokens/s epoch %.2f%s", step, total_steps, loss, lr, tokens_per_s,
                 epoch, eta)

    def eval(self, step: int, eval_loss: float, eval_tokens: int, best: bool) -> None:
        """One evaluation: the mean loss per response token of the evaluation examples; best: the lowest so far."""
        self._write({"event": "eval", "step": step, "eval_loss": round(eval_loss, 6), "eval_tokens": eval_tokens,
                     "best": best})
        log.info("eval at step %d: loss %.4f over %d tokens%s", step, eval_loss, eval_tokens, " (best)" if best else "")

    def _write(self, record: dict[str, Any]) -> None:
        if self.path:
            with self.path.open("a") as out:
                out.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")
