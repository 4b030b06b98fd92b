"""TensorBoard event files in the run folder: TensorBoard's own reader finds every metric and GPU reading."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing import event_accumulator

from runner.commands.train import summarize
from runner.tensorboard import crc32c, write_events

REPO = Path(__file__).resolve().parents[2]
GPU_SIM = REPO / "tests" / "gpu_sim"
DEMO_DATA = REPO / "examples" / "data" / "demo.jsonl"
# The host's telemetry thread, as the supervisor runs it, on the simulated NVML (profile a: two GPUs)
TELEMETRY = """
import json, sys, time
from pathlib import Path
from runner.host import nvml, telemetry

path = Path(sys.argv[1])
with nvml.nvml():
    uuids = [g.uuid for g in nvml.list_gpus()]
t = telemetry.Telemetry(uuids, path, telemetry.WatchdogLimits(), print, print, interval_s=1.0)
t.start()
while len(path.read_text().splitlines() if path.exists() else []) < 4:
    time.sleep(0.05)
t.stop()
"""


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def board(folder: Path) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return acc


def scalars(acc: event_accumulator.EventAccumulator, tag: str) -> list[tuple[int, float, float]]:
    return [(e.step, e.value, e.wall_time) for e in acc.Scalars(tag)]


@pytest.fixture(scope="module")
def host_dir(tmp_path_factory, tiny_model) -> Path:
    """A host's results as they come back: metrics.jsonl from the trainer, telemetry.jsonl from the host."""
    folder = tmp_path_factory.mktemp("run") / "localhost"
    folder.mkdir()
    config = folder.parent / "train.json"
    config.write_text(json.dumps({
        "model": str(tiny_model), "dataset": str(DEMO_DATA), "output_dir": str(folder.parent / "output"),
        "metrics_path": str(folder / "metrics.jsonl"), "lora": {"rank": 8, "alpha": 16},
        "train": {"max_steps": 5, "batch_size": 2, "max_seq_len": 128, "save_steps": 100}}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(folder.parent / "hf")}
    subprocess.run([sys.executable, "-m", "runner.train", str(config)], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=600)
    subprocess.run(["make", "-s", "-C", str(GPU_SIM)], check=True)
    state = folder.parent / "gpu-state.json"
    shutil.copy(GPU_SIM / "profiles" / "a.json", state)
    env = {**os.environ, "LD_LIBRARY_PATH": str(GPU_SIM / "build"), "GPU_SIM_STATE": str(state)}
    subprocess.run([sys.executable, "-c", TELEMETRY, str(folder / "telemetry.jsonl")], cwd=REPO, env=env,
                   check=True, timeout=120)
    return folder


def test_crc32c_is_castagnoli():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(b"") == 0


def test_tensorboard_reads_every_step_and_every_gpu_reading(host_dir):
    path = write_events(host_dir, "localhost")
    assert path.parent == host_dir / "tensorboard" and path.name.startswith("events.out.tfevents.")
    acc = board(path.parent)
    steps = [r for r in jsonl(host_dir / "metrics.jsonl") if "loss" in r and "event" not in r]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5]
    for key, tag in (("loss", "train/loss"), ("lr", "train/lr"), ("tokens_per_s", "train/tokens_per_s")):
        assert scalars(acc, tag) == [(s["step"], pytest.approx(s[key], rel=1e-6), pytest.approx(s["time"]))
                                     for s in steps], tag
    samples = jsonl(host_dir / "telemetry.jsonl")
    start = samples[0]["time"]
    for index in (0, 1):
        readings = [(round(s["time"] - start), s["gpus"][index], s["time"]) for s in samples]
        for tag, read in (("power_w", lambda g: g["instant_power_w"] or g["power_w"]),
                          ("power_avg_w", lambda g: g["power_w"]), ("temperature_c", lambda g: g["temperature_c"]),
                          ("memory_used_mib", lambda g: g["memory_used_mib"]), ("limit_w", lambda g: g["limit_w"])):
            assert scalars(acc, f"gpu{index}/{tag}") == [
                (second, pytest.approx(read(g), rel=1e-6), pytest.approx(wall)) for second, g, wall in readings]
    assert len(samples) == 4 and {s["gpus"][0]["uuid"] for s in samples} != {s["gpus"][1]["uuid"] for s in samples}


def test_a_resumed_trainers_redone_steps_replace_the_first_tries_and_eval_has_its_tag(tmp_path):
    lines = [{"event": "start", "start_step": 0, "time": 100.0}]
    lines += [{"step": s, "loss": 5 - s / 10, "lr": 1e-3, "tokens_per_s": 900.0, "time": 100.0 + s} for s in (1, 2, 3)]
    lines += [{"event": "eval", "step": 2, "eval_loss": 4.5, "time": 102.5}]
    lines += [{"event": "start", "start_step": 2, "time": 200.0}]  # crashed after step 3, resumed from checkpoint 2
    lines += [{"step": s, "loss": 4 - s / 10, "lr": 1e-3, "tokens_per_s": 950.0, "time": 200.0 + s} for s in (3, 4)]
    lines += [{"event": "eval", "step": 4, "eval_loss": 3.9, "time": 204.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"step": 5, "lo')
    acc = board(write_events(tmp_path, "h1").parent)
    assert [(s, round(v, 4)) for s, v, _ in scalars(acc, "train/loss")] == [(1, 4.9), (2, 4.8), (3, 3.7), (4, 3.6)]
    assert [(s, round(v, 4)) for s, v, _ in scalars(acc, "eval/loss")] == [(2, 4.5), (4, 3.9)]
    assert not [t for t in acc.Tags()["scalars"] if t.startswith("gpu")]  # no telemetry: no GPU tags


def test_the_summary_writes_one_events_file_that_a_second_fetch_replaces(host_dir, tmp_path, capsys):
    host_dir = Path(shutil.copytree(host_dir, tmp_path / "localhost"))
    summarize("localhost", {"outcome": "succeeded"}, host_dir)
    first = list((host_dir / "tensorboard").iterdir())
    assert f"localhost: TensorBoard events in {host_dir / 'tensorboard'}" in capsys.readouterr().out
    with (host_dir / "metrics.jsonl").open("a") as out:  # `runner attach` fetched more
        out.write(json.dumps({"step": 6, "loss": 1.25, "lr": 1e-4, "tokens_per_s": 10.0, "time": 2e9}) + "\n")
    summarize("localhost", {"outcome": "succeeded"}, host_dir)
    files = list((host_dir / "tensorboard").iterdir())
    assert files == first and len(files) == 1
    assert scalars(board(host_dir / "tensorboard"), "train/loss")[-1] == (6, 1.25, 2e9)


def test_a_conversion_whose_earlier_file_another_command_removed_first_still_writes(host_dir, tmp_path, monkeypatch):
    """`runner stop` and the `runner train` it stops both fetch and convert the run: the earlier events file one
    of them lists may be gone (replaced by the other) before it removes it (a CI run: FileNotFoundError)."""
    host_dir = Path(shutil.copytree(host_dir, tmp_path / "localhost"))
    first = write_events(host_dir, "localhost")
    listed = Path.glob

    def raced(folder, pattern):
        found = list(listed(folder, pattern))
        for path in found:  # the other command's conversion replaced them meanwhile
            path.unlink()
        return found

    with (host_dir / "metrics.jsonl").open("a") as out:  # a later fetch: the run started earlier than it showed
        out.write(json.dumps({"step": 0, "loss": 7.0, "lr": 1e-4, "tokens_per_s": 10.0, "time": 1.0}) + "\n")
    monkeypatch.setattr(Path, "glob", raced)
    second = write_events(host_dir, "localhost")
    monkeypatch.undo()
    assert second != first and [p.name for p in (host_dir / "tensorboard").iterdir()] == [second.name]
    assert scalars(board(host_dir / "tensorboard"), "train/loss")[0][:2] == (0, 7.0)


def test_nothing_to_show_writes_nothing(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"event": "start", "start_step": 0, "time": 1.0}) + "\n")
    assert write_events(tmp_path, "h1") is None and not (tmp_path / "tensorboard").exists()
