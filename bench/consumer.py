"""Consumer cards through the real path: runner.train against HF Trainer + PEFT (+ bitsandbytes) + Liger.

Everything a session does is done here: a model folder on disk (safetensors + tokenizer, random weights of the
real shape), chat JSONL data, the trainer's own entry point in its own process (`python -m runner.train
CONFIG.json`, as accelerate's single-process launcher starts it, with ACCELERATE_MIXED_PRECISION=bf16),
`from_pretrained`, NF4 through `BitsAndBytesConfig` for QLoRA. A 24 GB (or 16 GB) card is stood in for by a
per-process cap, set inside each trainer process by bench/capped/sitecustomize.py (on PYTHONPATH for those
processes only), which also reports the process's peak memory at exit. The baseline runs in its own process
under the same cap, on the same folder and data.

Data: chat conversations of single-token words, lengths ~ lognormal(5.5, 0.8) tokens clipped to
[16, max_seq_len] (mean about 340), the assistant's reply a random 20-80 % tail; the long-context rows use one
conversation of the given length. tokens/s counts the tokens of the examples trained on over the timed steps
(after warm-up steps); time to first step is from starting the process to the end of the first optimizer step.

Run (GPU; bench/gpu_call.sh wraps it):
  python bench/consumer.py build --shape 8b --dir /tmp/m8b
  python bench/consumer.py data --model /tmp/m8b --out /tmp/chat.jsonl --count 1500 --max-len 2048
  python bench/consumer.py pair --model /tmp/m8b --data /tmp/chat.jsonl --method qlora --memory-gib 24 \\
      --row 8b-qlora-24 --out $OUT
  python bench/consumer.py longest --model /tmp/m8b --method qlora --memory-gib 24 --lengths 32768 --out $OUT
CPU dry run (tiny shapes, no cap):
  python bench/consumer.py smoke --out /tmp/consumer
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CAPPED = REPO / "bench" / "capped"
sys.path.insert(0, str(REPO / "bench"))
from consumer_data import build, log, write_data  # noqa: E402 - model folders and data
from consumer_hf import LORA, hf_longest, hf_worker  # noqa: E402 - the baseline's side
from shapes import SHAPES  # noqa: E402 - the shapes shared with the tests (bench/shapes.py)


def capped_env(memory_gib: float | None, peak_file: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CAPPED), str(REPO), env.get("PYTHONPATH", "")) if p)
    env["BENCH_PEAK_FILE"] = str(peak_file)
    if memory_gib:
        env["BENCH_MEMORY_GIB"] = str(memory_gib)
    return env


def run_capped(cmd: list[str], memory_gib: float | None, work: Path, timeout_s: float, extra_env: dict | None = None):
    """Run cmd in its own process under the cap; (rc, output, peak report, start time)."""
    peak_file = work / "peak.jsonl"
    peak_file.unlink(missing_ok=True)
    env = {**capped_env(memory_gib, peak_file), **(extra_env or {})}
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
        rc, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, output = 124, (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else str(err.stdout or "")
    (work / "output.log").write_text(output)
    peaks = [json.loads(line) for line in peak_file.read_text().splitlines()] if peak_file.exists() else []
    return rc, output, (peaks[-1] if peaks else {}), start


def error_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if "Error" in ln or "error" in ln]
    return (lines[-1] if lines else output.strip().splitlines()[-1] if output.strip() else "")[:300]


def timed_rate(records: list[tuple[float, int]], warmup: int) -> float | None:
    """tokens/s over the steps after `warmup`, from (end time, tokens) per step in order."""
    if len(records) <= warmup + 1:
        return None
    timed = records[warmup:]
    seconds = timed[-1][0] - timed[0][0]
    tokens = sum(t for _, t in timed[1:])
    return tokens / seconds if seconds > 0 else None


# ---------------------------------------------------------------- ours: the trainer's own entry point


def run_ours(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    config = {
        "model": str(args.model),
        "dataset": str(args.data),
        "output_dir": str(work / "output"),
        "metrics_path": str(work / "metrics.jsonl"),
        "format": "chat",
        "method": args.method,
        "lora": LORA,
        "train": {"max_steps": args.warmup + args.steps, "max_seq_len": args.max_seq_len, "save_steps": 10_000},
        "resume": False,
    }
    config["train"].update(json.loads(args.ours_set or "{}"))
    (work / "config.json").write_text(json.dumps(config))
    cmd = [sys.executable, "-m", "runner.train", str(work / "config.json")]
    env = {"ACCELERATE_MIXED_PRECISION": "bf16"} if not args.cpu else {}
    rc, output, peak, start = run_capped(cmd, args.memory_gib, work, args.timeout, env)
    path = work / "metrics.jsonl"
    metrics = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    start_event = next((m for m in metrics if m.get("event") == "start"), {})
    done = next((m for m in metrics if m.get("event") == "done"), {})
    steps = [m for m in metrics if "step" in m and "event" not in m]
    records, prev = [], None
    for m in steps:  # a step's tokens: its rate times the time since the previous step's record
        records.append((m["time"], m["tokens_per_s"] * (m["time"] - prev) if prev is not None else 0))
        prev = m["time"]
    keep = (
        "rows_per_micro_batch",
        "gradient_checkpointing",
        "checkpointed_layers",
        "offload_checkpoints",
        "attention",
        "liger",
        "compile",
        "memory_budget_gib",
        "predicted_peak_gib",
        "predicted_tokens_per_s",
        "probe_steps",
    )
    return {
        "recipe": "ours",
        "ok": rc == 0 and bool(steps),
        "rc": rc,
        "tokens_per_s": timed_rate(records, args.warmup),
        "first_step_s": round(steps[0]["time"] - start, 1) if steps else None,
        # loading and the sizing probe (compiling the layers, where they are), before the first step
        "sized_s": round(start_event["time"] - start, 1) if "time" in start_event else None,
        "step_s": [round(b[0] - a[0], 3) for a, b in itertools.pairwise(records)],
        "final_loss": steps[-1]["loss"] if steps else None,
        "steps": len(steps),
        "oom_events": [m for m in metrics if m.get("event") == "out_of_memory"],
        **{k: start_event.get(k) for k in keep if k in start_event},
        **{f"train_{k}": done[k] for k in ("gpu_peak_gib", "gpu_peak_reserved_gib") if k in done},
        **peak,
        "error": None if rc == 0 else error_line(output),
    }


# ---------------------------------------------------------------- the baseline: HF Trainer + PEFT + Liger


def run_baseline(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "hf-worker", "--result", str(work / "hf.json")]
    cmd += ["--model", str(args.model), "--data", str(args.data), "--method", args.method]
    cmd += ["--max-seq-len", str(args.max_seq_len), "--hf-tokens", str(args.hf_tokens)]
    cmd += ["--warmup", str(args.warmup), "--steps", str(args.steps)] + (["--cpu"] if args.cpu else [])
    cmd += ["--hf-checkpointing", args.hf_checkpointing]
    rc, output, peak, start = run_capped(cmd, args.memory_gib, work, args.timeout)
    result = json.loads((work / "hf.json").read_text()) if (work / "hf.json").exists() else {}
    ends = result.pop("step_ends", [])
    return {
        "recipe": "hf",
        "ok": rc == 0 and bool(ends),
        "rc": rc,
        "tokens_per_s": timed_rate([(e, t) for e, t in ends], args.warmup),
        "first_step_s": round(ends[0][0] - start, 1) if ends else None,
        "steps": len(ends),
        **result,
        **peak,
        "error": None if rc == 0 else error_line(output),
    }


def longest(args: argparse.Namespace) -> None:
    """Ours: each length is one conversation of that many tokens, trained through the entry point (2 steps);
    the baseline: one process, ascending lengths (hf_longest)."""
    out = Path(args.out)
    rows = []
    if "ours" in args.recipes:
        for length in [int(n) for n in args.lengths.split(",")]:
            work = Path(tempfile.mkdtemp(prefix=f"ours-{length}-", dir=args.work))
            data = work / "long.jsonl"
            write_data(Path(args.model), data, 3, length, exact=length - 64)
            ns = argparse.Namespace(**{**vars(args), "data": data, "max_seq_len": length, "warmup": 0, "steps": 2})
            result = run_ours(ns, work)
            result.update(row=args.row, length=length, memory_gib=args.memory_gib)
            emit(result, out)
            keep_failure(result, work, out)
            rows.append(result)
            if not result["ok"]:
                break
    if "hf" in args.recipes:
        work = Path(tempfile.mkdtemp(prefix="hf-longest-", dir=args.work))
        cmd = [sys.executable, str(Path(__file__).resolve()), "hf-longest-worker", "--result", str(work / "r.json")]
        cmd += ["--model", str(args.model), "--method", args.method, "--lengths", args.hf_lengths]
        cmd += ["--cpu"] if args.cpu else []
        rc, output, peak, _ = run_capped(cmd, args.memory_gib, work, args.timeout)
        result = json.loads((work / "r.json").read_text()) if (work / "r.json").exists() else {}
        emit(
            {
                "row": args.row,
                "recipe": "hf",
                "rc": rc,
                **result,
                **peak,
                "memory_gib": args.memory_gib,
                "error": None if rc == 0 else error_line(output),
            },
            out,
        )


# ---------------------------------------------------------------- rows and results


def emit(record: dict[str, Any], out: Path) -> None:
    record = {"date": datetime.date.today().isoformat(), **record}
    line = json.dumps(record, default=str)
    print(line, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "consumer.jsonl").open("a") as f:
        f.write(line + "\n")


def keep_failure(result: dict[str, Any], work: Path, out: Path) -> None:
    """A run that failed: the last 300 lines of its output next to the results (the traceback says why)."""
    if not result.get("ok") and (work / "output.log").exists():
        lines = (work / "output.log").read_text(errors="replace").splitlines()[-300:]
        (out / f"{work.name}.failed.log").write_text("\n".join(lines) + "\n")


def pair(args: argparse.Namespace) -> None:
    """One row: ours, then the baseline, each in its own capped process; then the ratio."""
    out = Path(args.out)
    results: dict[str, list[dict[str, Any]]] = {}
    for recipe in args.recipes.split(","):
        # the baseline at each budget asked for: "4096" (checkpointing as --hf-checkpointing) or "2048:plain"
        budgets = str(args.hf_tokens).split(",") if recipe == "hf" else [None]
        for budget in budgets:
            tokens, _, mode = (budget or "").partition(":")
            run_args = argparse.Namespace(
                **{
                    **vars(args),
                    "hf_tokens": tokens or args.hf_tokens,
                    "hf_checkpointing": "false" if mode == "plain" else args.hf_checkpointing,
                }
            )
            work = Path(tempfile.mkdtemp(prefix=f"{args.row}-{recipe}-", dir=args.work))
            log(f"{args.row}: {recipe}" + (f" ({budget} tokens a batch)" if recipe == "hf" else ""))
            result = run_ours(run_args, work) if recipe == "ours" else run_baseline(run_args, work)
            result.update(row=args.row, method=args.method, memory_gib=args.memory_gib, max_seq_len=args.max_seq_len)
            emit(result, out)
            keep_failure(result, work, out)
            results.setdefault(recipe, []).append(result)

    def best(recipe: str) -> dict[str, Any]:  # of the runs that finished
        done = [r for r in results.get(recipe, []) if r.get("ok")]
        return max(done, key=lambda r: r.get("tokens_per_s") or 0, default={})

    ours, hf = best("ours"), best("hf")
    if ours.get("tokens_per_s") and hf.get("tokens_per_s"):
        ratio = ours["tokens_per_s"] / hf["tokens_per_s"]
        emit(
            {
                "row": args.row,
                "ratio": round(ratio, 3),
                "ours": round(ours["tokens_per_s"]),
                "hf": round(hf["tokens_per_s"]),
                "hf_best_tokens_per_batch": hf.get("hf_tokens_per_batch"),
                "hf_best_checkpointing": hf.get("checkpointing"),
                "hf_tried": {
                    f"{r.get('hf_tokens_per_batch')}{'' if r.get('checkpointing') else ':plain'}": round(
                        r.get("tokens_per_s") or 0
                    )
                    for r in results["hf"]
                },
            },
            out,
        )


def environment(out: Path) -> None:
    import torch
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    from importlib.metadata import version

    for name in ("peft", "accelerate", "bitsandbytes", "liger-kernel", "triton"):
        try:
            versions[name] = version(name)
        except Exception as err:
            versions[name] = f"missing: {type(err).__name__}"
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    capability = torch.cuda.get_device_capability(0) if torch.cuda.is_available() else None
    emit({"env": versions, "device": device, "capability": capability}, out)


def smoke(args: argparse.Namespace) -> None:
    """CPU dry run of every step on the tiny shape: build, data, a pair, the longest-example search."""
    work = Path(args.out) / "work"
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "tiny"
    if not folder.exists():
        build("tiny", folder)
    data = work / "chat.jsonl"
    write_data(folder, data, 60, 256)
    common = {
        "model": folder,
        "data": data,
        "out": args.out,
        "work": str(work),
        "memory_gib": None,
        "cpu": True,
        "timeout": 600,
        "ours_set": None,
        "hf_checkpointing": "true",
    }
    pair(
        argparse.Namespace(
            **common,
            row="tiny-lora",
            method="lora",
            max_seq_len=256,
            hf_tokens="256,512:plain",
            warmup=1,
            steps=2,
            recipes="ours,hf",
        )
    )
    longest(
        argparse.Namespace(
            **common, row="tiny-long", method="lora", lengths="512", hf_lengths="256,512", recipes="ours,hf"
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build")
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--dir", type=Path, required=True)
    p = sub.add_parser("data")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=1500)
    p.add_argument("--max-len", type=int, default=2048)
    sub.add_parser("env").add_argument("--out", required=True)
    sub.add_parser("smoke").add_argument("--out", required=True)
    for name in ("pair", "hf-worker", "longest", "hf-longest-worker"):
        p = sub.add_parser(name)
        p.add_argument("--model", required=True)
        p.add_argument("--method", choices=("lora", "qlora"), default="qlora")
        p.add_argument("--memory-gib", type=float)
        p.add_argument("--cpu", action="store_true")
        p.add_argument("--timeout", type=float, default=300)
        p.add_argument("--out", default="/tmp/consumer")
        p.add_argument("--work", default=None)
        p.add_argument("--row", default="row")
        p.add_argument("--result")
        p.add_argument("--data")
        p.add_argument("--max-seq-len", type=int, default=2048)
        p.add_argument("--warmup", type=int, default=2)
        p.add_argument("--steps", type=int, default=6)
        p.add_argument("--hf-tokens", default="4096", help="baseline: tokens a batch; pair: a list")
        p.add_argument("--hf-checkpointing", choices=("true", "false"), default="true")
        p.add_argument("--ours-set", help='JSON of extra train settings for ours, e.g. {"batch_size": 4}')
        p.add_argument("--recipes", default="ours,hf")
        p.add_argument("--lengths", default="32768", help="longest: lengths ours trains, one run each")
        p.add_argument("--hf-lengths", default="4096,8192,12288,16384,24576,32768,49152,65536")
    args = parser.parse_args(argv)
    if args.command == "build":
        build(args.shape, args.dir)
    elif args.command == "data":
        write_data(args.model, args.out, args.count, args.max_len)
    elif args.command == "env":
        environment(Path(args.out))
    elif args.command == "smoke":
        smoke(args)
    elif args.command == "pair":
        pair(args)
    elif args.command == "hf-worker":
        return hf_worker(args)
    elif args.command == "longest":
        longest(args)
    elif args.command == "hf-longest-worker":
        return hf_longest(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
