"""Multi-GPU training through our rendered accelerate config, as a host would launch it (issue 7).

Phases, in order, each time-boxed, each launch its own `accelerate launch --config_file CFG` of
bench/train_throughput.py (the "ours" workload):
  ddp     the 8B LoRA workload on 1 GPU, then DDP on 2 GPUs; tokens/s over all ranks, and the ratio
  fsdp    24B QLoRA, FSDP2 (the template's fsdp strategy), each process capped at --memory-gib
  auto    24B QLoRA with the strategy runner.host.strategy picks for GPUs of --memory-gib, if not fsdp
Results: one JSON line a run in OUT/results.jsonl, each launch's log in OUT/NAME.log.

Run:  python bench/multi_gpu.py --out $OUT --phases ddp,fsdp,auto --deadline 380
      python bench/multi_gpu.py --out /tmp/mg --smoke       (CPU: tiny model, 2 gloo ranks, LoRA only)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.train_throughput import SHAPES  # noqa: E402
from runner.host.strategy import choose_strategy  # noqa: E402
from runner.templates import render  # noqa: E402

# NVLink multicast can take the shared host's GPUs out of service: off in every process we start
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


class Driver:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="multi-gpu-"))
        self.end = time.monotonic() + args.deadline
        self.port = 29500
        self.gpus = gpu_facts(args.smoke)

    def config(self, count: int, strategy: str) -> Path:
        """Our template rendered for the first `count` GPUs, as the accelerate_config role renders it."""
        self.port += 1  # a fresh port per launch: the last run's sockets may linger
        text = render(
            "accelerate/default_config.yaml.j2",
            accelerate_config_gpus=[{k: g[k] for k in ("index", "compute_capability")} for g in self.gpus[:count]],
            accelerate_config_strategy=strategy,
            accelerate_config_port=self.port,
        )
        path = self.work / f"accelerate-{count}-{strategy}.yaml"
        path.write_text(text)
        return path

    def launch(self, name: str, config: Path, bench_args: list[str], limit_s: float) -> dict | None:
        """accelerate launch the bench; returns rank 0's JSON line, or None (the log says why)."""
        limit_s = min(limit_s, self.end - time.monotonic())
        if limit_s < 20:
            self.emit({"run": name, "skipped": "no time left"})
            return None
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--config_file",
            str(config),
            str(REPO / "bench/train_throughput.py"),
        ]
        cmd += ["--one", "ours", *bench_args]
        env = {**os.environ, **SAFE_ENV, "PYTHONUNBUFFERED": "1"}
        started = time.monotonic()
        log = self.out / f"{name}.log"
        with log.open("w") as sink:
            sink.write(f"$ {' '.join(cmd)}\n--- {config.name}\n{config.read_text()}---\n")
            sink.flush()
            proc = subprocess.Popen(
                cmd, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
            try:
                rc = proc.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its ranks: their own process group
                rc = proc.wait()
        wall = round(time.monotonic() - started, 1)
        lines = [line for line in log.read_text().splitlines() if line.startswith('{"run"')]
        if rc or not lines:
            tail = log.read_text()[-1500:]
            self.emit({"run": name, "rc": rc, "wall_s": wall, "limit_s": round(limit_s), "error_tail": tail})
            return None
        result = {"run": name, "wall_s": wall, "accelerate_config": config.read_text(), **json.loads(lines[-1])}
        result.pop("run", None)
        self.emit({"run": name, **result})
        return result

    def emit(self, record: dict) -> None:
        line = json.dumps(record)
        with (self.out / "results.jsonl").open("a") as f:
            f.write(line + "\n")
        short = {k: v for k, v in record.items() if k not in ("accelerate_config", "settings", "versions", "ranks")}
        print(json.dumps(short)[:700], flush=True)

    def ddp(self) -> None:
        a = self.args
        common = ["--model", a.model, "--steps", a.ddp_steps, *a.bench_args]
        one = self.launch(f"ddp-{a.model}-1gpu", self.config(1, "ddp"), common, a.ddp_limit_s)
        two = self.launch(f"ddp-{a.model}-2gpu", self.config(2, "ddp"), common, a.ddp_limit_s)
        if one and two:
            ratio = two["tokens_per_s"] / one["tokens_per_s"]
            self.emit({"ratio": round(ratio, 3), "what": "2-GPU DDP over 1-GPU tokens/s", "model": a.model})

    def big(self, strategy: str, name: str) -> None:
        a = self.args
        bench = ["--model", a.big_model, "--steps", a.big_steps, "--set", "max_seq_len=2048", *a.bench_args]
        if not a.smoke:
            bench += ["--qlora", "--memory-gib", str(a.memory_gib)]
        self.launch(name, self.config(2, strategy), bench, a.big_limit_s)

    def auto_strategy(self) -> str:
        """What runner.host.strategy picks for the big model on GPUs of the capped size."""
        folder = self.work / f"model-{self.args.big_model}"
        folder.mkdir(exist_ok=True)
        shape = dict(SHAPES[self.args.big_model])
        (folder / "config.json").write_text(json.dumps({**shape, "torch_dtype": "bfloat16"}))
        method = "lora" if self.args.smoke else "qlora"
        memory = [min(self.args.memory_gib, g["memory_gib"]) for g in self.gpus[:2]]
        choice = choose_strategy(folder, method, memory)
        self.emit(
            {
                "run": "strategy",
                "model": self.args.big_model,
                "method": method,
                "gpu_memory_gib": memory,
                "strategy": choice.name,
                "fits": choice.fits,
                "reason": choice.reason,
            }
        )
        # the same question for a 16 GiB pair, where a full 4-bit copy does not fit (no run)
        other = choose_strategy(folder, method, [16.0, 16.0])
        self.emit(
            {
                "run": "strategy",
                "model": self.args.big_model,
                "method": method,
                "gpu_memory_gib": [16.0, 16.0],
                "strategy": other.name,
                "fits": other.fits,
                "reason": other.reason,
                "note": "decision only",
            }
        )
        return choice.name


def gpu_facts(smoke: bool) -> list[dict]:
    """index, compute capability and memory of each GPU in PCI bus order (two stand-ins for --smoke)."""
    if smoke:
        return [{"index": i, "compute_capability": [9, 0], "memory_gib": 24.0} for i in range(2)]
    import torch

    facts = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        facts.append(
            {
                "index": i,
                "compute_capability": [props.major, props.minor],
                "memory_gib": props.total_memory / 2**30,
                "name": props.name,
            }
        )
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--phases", default="ddp,fsdp,auto")
    parser.add_argument("--deadline", type=float, default=380, help="seconds for all phases together")
    parser.add_argument("--smoke", action="store_true", help="CPU: tiny model, LoRA, two gloo ranks")
    parser.add_argument("--memory-gib", type=float, default=24, help="per-process cap for the big model")
    parser.add_argument("--ddp-steps", default="4,8")
    parser.add_argument("--big-steps", default="2,4")
    parser.add_argument("--ddp-limit-s", type=float, default=130)
    parser.add_argument("--big-limit-s", type=float, default=130)
    args = parser.parse_args()
    args.model, args.big_model = ("tiny", "tiny") if args.smoke else ("8b", "24b")
    args.bench_args = ["--set", "max_seq_len=256"] if args.smoke else []
    os.environ.update(SAFE_ENV)
    driver = Driver(args)
    driver.emit({"run": "gpus", "gpus": driver.gpus})
    phases = args.phases.split(",")
    chosen = driver.auto_strategy() if "auto" in phases else None
    if "ddp" in phases:
        driver.ddp()
    if "fsdp" in phases:
        driver.big("fsdp", f"fsdp-{args.big_model}")
    if chosen and (chosen != "fsdp" or "fsdp" not in phases):
        driver.big(chosen, f"auto-{chosen}-{args.big_model}")


if __name__ == "__main__":
    main()
