"""Bench only: where a training step's GPU time goes, through the trainer's own entry point.

Runs `runner.train`'s main on a config (as `python -m runner.train CONFIG.json` does) with one wrapper around
the loop's step: after --skip steps, one step runs under torch.profiler and the kernels' time table is printed
(top --top by CUDA time), with the step's total. Nothing in the product reads this. Run on a GPU, e.g. from
bench/consumer.py's work folder: ACCELERATE_MIXED_PRECISION=bf16 python bench/profile_step.py CONFIG.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--skip", type=int, default=3, help="steps before the profiled one")
    parser.add_argument("--top", type=int, default=45)
    args = parser.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile

    from runner.train import __main__ as entry
    from runner.train.loop import Trainer

    plain_step = Trainer._train_step
    calls = {"n": 0}

    def step(self):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] != args.skip + 1:
            return plain_step(self)
        cuda = torch.cuda.is_available()
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        sync()
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            out = plain_step(self)
            sync()
        wall = time.perf_counter() - start
        by = "cuda_time_total" if cuda else "cpu_time_total"
        table = prof.key_averages().table(sort_by=by, row_limit=args.top, max_name_column_width=70)
        print(f"PROFILED STEP {calls['n']}: {wall:.3f} s wall (profiler on)\n{table}", flush=True)
        return out

    Trainer._train_step = step  # type: ignore[method-assign]
    return entry.main([args.config])


if __name__ == "__main__":
    sys.exit(main())
