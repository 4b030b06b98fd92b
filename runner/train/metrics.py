"""metrics.jsonl (one JSON object a line, appended and flushed) and the stdout log, written by rank 0."""

from __future__ import annotations

import json
import logging
import sys
import time
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


class Metrics:
    def __init__(self, path: str | None, enabled: bool) -> None:
        self.path = Path(path) if path and enabled else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def event(self, name: str, **fields: Any) -> None:
        self._write({"event": name, **fields})
        log.info("%s %s", name, " ".join(f"{k}={v}" for k, v in fields.items()))

    def step(self, step: int, total_steps: int, loss: float, lr: float, tokens_per_s: float, epoch: float) -> None:
        self._write(
            {
                "step": step,
                "total_steps": total_steps,
                "loss": round(loss, 6),
                "lr": lr,
                "tokens_per_s": round(tokens_per_s, 1),
                "epoch": round(epoch, 4),
            }
        )
        log.info(
            "step %d/%d loss %.4f lr %.3g %.0f tokens/s epoch %.2f",
            step,
            total_steps,
            loss,
            lr,
            tokens_per_s,
            epoch,
        )

    def eval(self, step: int, eval_loss: float, eval_tokens: int, best: bool) -> None:
        """One evaluation: the mean loss per response token of the evaluation examples; best: the lowest so far."""
        self._write({"event": "eval", "step": step, "eval_loss": round(eval_loss, 6), "eval_tokens": eval_tokens,
                     "best": best})
        log.info("eval at step %d: loss %.4f over %d tokens%s", step, eval_loss, eval_tokens, " (best)" if best else "")

    def _write(self, record: dict[str, Any]) -> None:
        if self.path:
            with self.path.open("a") as out:
                out.write(json.dumps({**record, "time": round(time.time(), 3)}) + "\n")
