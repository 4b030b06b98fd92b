"""Two 'machines' on this host, each with its own folder, as `runner train --multi-node` launches them:
`accelerate launch` with num_machines 2, a machine rank each, static rendezvous on one address (gloo)."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launching import REPO


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_config(tmp_path: Path, write_config, rank: int, **train) -> Path:
    node = tmp_path / f"node{rank}"
    node.mkdir(exist_ok=True)
    config = write_config({"max_steps": 16, "save_steps": 4, **train}, collective_timeout_s=120,
                          output_dir=str(node / "output"), metrics_path=str(node / "metrics.jsonl"),
                          stop_file=str(node / "STOP"))
    return config.replace(node / "config.json")


def launch_nodes(configs: list[Path]) -> list[subprocess.Popen]:
    port = str(free_port())
    return [subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--mixed_precision", "no",
         "--dynamo_backend", "no", "--num_processes", "2", "--num_machines", "2", "--machine_rank", str(rank),
         "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--rdzv_backend", "static",
         "-m", "runner.train", str(config)],
        cwd=REPO, env={**os.environ, "HF_HOME": str(config.parent / "hf_home")},  # not the machine's accelerate config
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank, config in enumerate(configs)]


def finish_all(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out[-4000:]


def records(node: Path) -> list[dict]:
    return [json.loads(line) for line in (node / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # two accelerate launches of two machines
def test_two_machines_shard_stop_together_resume_and_leave_one_adapter(tmp_path, write_config):
    configs = [node_config(tmp_path, write_config, rank) for rank in (0, 1)]
    nodes = [c.parent for c in configs]
    procs = launch_nodes(configs)
    deadline = time.monotonic() + 300
    while not ((nodes[1] / "metrics.jsonl").exists() and any(r.get("step", 0) >= 5 for r in records(nodes[1]))):
        assert all(p.poll() is None for p in procs), "a machine ended before step 5"
        assert time.monotonic() < deadline, "no machine reached step 5 in 300 s"
        time.sleep(0.05)
    (nodes[1] / "STOP").touch()  # a stop on one machine stops both, each after a checkpoint
    finish_all(procs)
    for node in nodes:
        stopped = [r for r in records(node) if r.get("event") == "stopped"]
        assert len(stopped) == 1, records(node)
        assert {p.name for p in Path(stopped[0]["checkpoint"]).iterdir()} >= {
            "trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt"}
    assert records(nodes[0])[-1]["step"] == records(nodes[1])[-1]["step"]

    (nodes[1] / "STOP").unlink()
    finish_all(launch_nodes(configs))  # each machine resumes from its own copy of the same checkpoint
    starts = [[r for r in records(node) if r.get("event") == "start"] for node in nodes]
    first = [s[0] for s in starts]
    assert [f["process_index"] for f in first] == [0, 1] and all(f["world_size"] == 2 for f in first)
    assert first[0]["shard_digest"] != first[1]["shard_digest"]
    assert not set(first[0]["shard_sample"]) & set(first[1]["shard_sample"])
    assert starts[0][1]["start_step"] == starts[1][1]["start_step"] > 0
    done = [records(node)[-1] for node in nodes]
    assert [d["event"] for d in done] == ["done", "done"] and done[0]["steps"] == 16
    assert done[0]["final_loss"] == done[1]["final_loss"]  # the same global loss on both machines
    assert done[0]["adapter"] and done[1]["adapter"] is None
    assert (nodes[0] / "output" / "adapter" / "adapter_model.safetensors").exists()
    assert not (nodes[1] / "output" / "adapter").exists()  # one adapter: rank 0's
    losses = [r["loss"] for r in records(nodes[0]) if "loss" in r]
    assert losses[-1] < losses[0]
