"""Start the trainer as a user would (`python -m runner.train`, `accelerate launch`) and steer it."""

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def launch(config: Path, processes: int = 1, accelerate_args: tuple[str, ...] = ()) -> subprocess.Popen:
    """One process via python -m, several via accelerate launch (default: DDP, no mixed precision)."""
    if processes == 1 and not accelerate_args:
        cmd = [sys.executable, "-m", "runner.train", str(config)]
    else:  # --cpu --num_processes 2 would silently run one process; --multi_gpu really runs two (gloo on CPU)
        accelerate_args = accelerate_args or ("--multi_gpu", "--mixed_precision", "no")
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            *accelerate_args,
            "--num_processes",
            str(processes),
            "--num_machines",
            "1",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            "0",
            "-m",
            "runner.train",
            str(config),
        ]
    # A private HF_HOME: accelerate launch reads the machine's default_config.yaml (a localhost session renders
    # one, e.g. gpu_ids '0'), which must not change what a test launches
    env = {**os.environ, "HF_HOME": str(config.parent / "hf_home")}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def stop_after_first_step(proc: subprocess.Popen, metrics: Callable[[], list[dict]], how: Callable[[], None]) -> None:
    """Ask for a stop as soon as step 1 is logged (the run has many more steps to go)."""
    deadline = time.monotonic() + 300
    while not any(r.get("step") for r in metrics()):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before its first step"
        time.sleep(0.005)
    how()
