"""The run-folder checks of bench/gpu_e2e.sh: PASS/FAIL lines, a summary, and the small files copied to OUT.

Run: python bench/gpu_e2e_check.py --runs RUNS --lora ID --stopped-at STEP --steps N [--qlora ID] --start T --out OUT
Exit code: the number of failed checks.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

FAILS: list[str] = []


def check(name: str, ok: bool, detail: str = "") -> bool:
    print(f"{'PASS' if ok else 'FAIL'} {name}" + (f" ({detail})" if detail else ""))
    if not ok:
        FAILS.append(name)
    return ok


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def segments(samples: list[dict], gap_s: float = 5.0) -> list[list[dict]]:
    """Telemetry of each try of a session (a resumed session appends to the same file after a gap)."""
    parts: list[list[dict]] = []
    for sample in samples:
        if not parts or sample["time"] - parts[-1][-1]["time"] > gap_s:
            parts.append([])
        parts[-1].append(sample)
    return parts


def check_telemetry(label: str, host_dir: Path) -> dict:
    samples = jsonl(host_dir / "telemetry.jsonl")
    if not check(f"{label}: telemetry.jsonl has samples", len(samples) >= 5, f"{len(samples)} samples"):
        return {}
    rates = [(len(s) - 1) / (s[-1]["time"] - s[0]["time"]) for s in segments(samples) if len(s) >= 5]
    check(f"{label}: telemetry at >= 1 Hz", bool(rates) and min(rates) >= 0.99,
          ", ".join(f"{r:.3f} Hz" for r in rates))
    gpus = [g for s in samples for g in s["gpus"]]
    fields = ("power_w", "instant_power_w", "temperature_c", "memory_used_mib", "limit_w")
    missing = {f: sum(g.get(f) is None for g in gpus) for f in fields}
    check(f"{label}: every sample has power (averaged and instant), temperature, memory, limit",
          not any(missing.values()), ", ".join(f"{f} missing {n}x" for f, n in missing.items() if n))
    peak = {f: max((g.get(f) or 0) for g in gpus) for f in fields}
    check(f"{label}: readings are real (power > 50 W, temperature > 20 C, memory > 1 GiB at peak)",
          peak["power_w"] > 50 and peak["instant_power_w"] > 50 and peak["temperature_c"] > 20
          and peak["memory_used_mib"] > 1024, json.dumps(peak))
    return {"samples": len(samples), "rates_hz": [round(r, 3) for r in rates], "peak": peak,
            "excerpt": samples[len(samples) // 2: len(samples) // 2 + 3]}


def check_run(label: str, host_dir: Path, steps: int) -> dict:
    status = json.loads((host_dir / "status.json").read_text()) if (host_dir / "status.json").exists() else {}
    check(f"{label}: outcome succeeded, restore ok", status.get("outcome") == "succeeded"
          and status.get("restore", {}).get("ok") is True, f"{status.get('outcome')}, {status.get('error')}")
    check(f"{label}: reached the total steps", status.get("step") == status.get("total_steps") == steps,
          f"step {status.get('step')}/{status.get('total_steps')}")
    phases = {p["name"]: p for p in status.get("phases", [])}
    power = phases.get("power", {}).get("detail", "")
    check(f"{label}: power read back only", "read-back only" in power, power)
    adapter = host_dir / "adapter"
    check(f"{label}: adapter fetched", (adapter / "adapter_config.json").exists()
          and (adapter / "adapter_model.safetensors").stat().st_size > 0 if adapter.exists() else False)
    metrics = jsonl(host_dir / "metrics.jsonl")
    losses = [m["loss"] for m in metrics if "loss" in m]
    check(f"{label}: metrics.jsonl with falling loss", len(losses) > 1 and losses[-1] < losses[0],
          f"{losses[0]:.3f} -> {losses[-1]:.3f} over {len(losses)} steps" if losses else "no steps")
    telemetry = check_telemetry(label, host_dir)
    png = host_dir / "session.png"
    check(f"{label}: session.png drawn", png.exists() and png.stat().st_size > 10_000,
          f"{png.stat().st_size} bytes" if png.exists() else "missing")
    starts = [m for m in metrics if m.get("event") == "start"]
    return {"status": status, "metrics": metrics, "starts": starts, "telemetry": telemetry}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--lora", default="")
    parser.add_argument("--stopped-at", type=int, default=0)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--qlora", default="")
    parser.add_argument("--start", type=float, required=True, help="when the first runner train began (epoch s)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    summary: dict = {}
    if args.lora:
        lora_dir = args.runs / args.lora / "localhost"
        lora = check_run("LoRA (stopped, resumed)", lora_dir, args.steps)
        starts = lora["starts"]
        check("LoRA: the resumed try started from the stop's checkpoint", len(starts) == 2
              and starts[0]["start_step"] == 0 and 0 < starts[1]["start_step"] <= args.stopped_at
              and args.stopped_at < args.steps, f"tries started at {[s['start_step'] for s in starts]}, "
              f"stopped at {args.stopped_at} of {args.steps}")
        first_step = next((m for m in lora["metrics"] if "step" in m and "loss" in m), None)
        if first_step:
            summary["first_step_s"] = round(first_step["time"] - args.start, 1)
        summary["lora"] = {"start": starts[0] if starts else None, "telemetry": lora["telemetry"],
                           "summary": lora["status"].get("summary"),
                           "phases": lora["status"].get("phases")}
        if (lora_dir / "session.png").exists():
            shutil.copy(lora_dir / "session.png", args.out / "lora-session.png")
        steps = [m for m in lora["metrics"] if "tokens_per_s" in m and "loss" in m]
        if steps:
            summary["lora_tokens_per_s_median"] = statistics.median(m["tokens_per_s"] for m in steps)
    if args.qlora:
        qlora_dir = args.runs / args.qlora / "localhost"
        qlora = check_run("QLoRA", qlora_dir, args.steps)
        start = qlora["starts"][0] if qlora["starts"] else {}
        device = str(start.get("device", "cpu"))
        check("QLoRA: trained on the GPU", start.get("method") == "qlora" and "cpu" not in device.lower(),
              f"{start.get('method')} on {device}")
        summary["qlora"] = {"start": start, "telemetry": qlora["telemetry"], "summary": qlora["status"].get("summary")}
        if (qlora_dir / "session.png").exists():
            shutil.copy(qlora_dir / "session.png", args.out / "qlora-session.png")
    summary["failed"] = FAILS
    name = "summary-lora.json" if args.lora else "summary-qlora.json"
    (args.out / name).write_text(json.dumps(summary, indent=1, default=str))
    if args.lora:
        print(f"time from 'runner train' to the first step: {summary.get('first_step_s')} s")
    return len(FAILS)


if __name__ == "__main__":
    raise SystemExit(main())
