"""One job across two test hosts (`runner train --multi-node`): accelerate across machines, gloo on CPU.

th1 (two simulated GPUs, serving vLLM) is machine 0 and hosts the rendezvous; th2 (one GPU) is machine 1.
Every host uses the same number of processes (the smallest GPU count: one), so the job has two ranks.
"""

from __future__ import annotations

import pytest
import yaml
from sessionkit import SESSIONS, Background, assert_restored, host_status, job_file, session_of, train, wait_for_step

from runner.cluster import address, lay_out
from runner.commands.train import probe_hosts

pytestmark = [pytest.mark.hosts, pytest.mark.slow]


def phase(status: dict, name: str) -> dict:
    return next(p for p in status["phases"] if p["name"] == name)


def test_one_job_on_two_hosts_trains_one_adapter_and_restores_both(provisioned, inventory, hosts, home):
    th1, th2 = hosts["th1"].serve_vllm(), hosts["th2"]
    result = train(job_file(home, vllm=True, max_steps=24, cluster={"port": 29611}), inventory, "th1,th2",
                   "--multi-node", cwd=home)
    assert result.returncode == 0, result.stderr
    session = session_of(result)
    status = {name: host_status(hosts[name], session) for name in ("th1", "th2")}
    for name, st in status.items():
        assert st["outcome"] == "succeeded" and st["restore"]["ok"], (name, st)
        assert phase(st, "ready")["outcome"] == "ok"
    # nobody trained before every host was capped with free GPUs
    assert min(phase(st, "train")["started"] for st in status.values()) >= \
        max(phase(st, "ready")["started"] for st in status.values())
    starts = {name: st["trainer"] for name, st in status.items()}
    assert {s["world_size"] for s in starts.values()} == {2}
    assert [starts["th1"]["process_index"], starts["th2"]["process_index"]] == [0, 1]
    assert starts["th1"]["shard_digest"] != starts["th2"]["shard_digest"]  # different shards of the data
    assert not set(starts["th1"]["shard_sample"]) & set(starts["th2"]["shard_sample"])
    losses = [loss for _, loss in status["th1"]["losses"]]
    assert len(losses) == 24 and losses[-1] < losses[0]
    assert status["th2"]["losses"] == status["th1"]["losses"]  # one job: the same global loss on both
    run = home / "runs" / session
    assert (run / "th1" / "adapter" / "adapter_model.safetensors").exists()
    assert not (run / "th2" / "adapter").exists()  # one adapter: rank 0's
    assert (run / "th1" / "telemetry.jsonl").exists() and (run / "th2" / "telemetry.jsonl").exists()
    # what each host's accelerate config says is the layout the controller works out, and the strategy each
    # host's check picked, which the trainer reads back
    machines = lay_out(inventory, ["th1", "th2"], probe_hosts(inventory, ["th1", "th2"]), 29611)
    for name, host in (("th1", th1), ("th2", th2)):
        config = yaml.safe_load(host.ssh(f"cat {SESSIONS}/{session}/accelerate.yaml").stdout)
        part = machines.parts[name]
        assert (config["num_machines"], config["machine_rank"], config["main_process_ip"],
                config["num_processes"], config["main_process_port"]) == (
            part["num_machines"], part["machine_rank"], part["main_address"],
            part["processes_per_machine"] * part["num_machines"], part["port"])
        assert config["distributed_type"] == "MULTI_GPU" and starts[name]["strategy"] == "ddp"
    assert (machines.parts["th2"]["machine_rank"], machines.per_machine) == (1, 1)
    assert machines.main_address == address(inventory, "th1")
    assert "collectives over eth0" in phase(status["th2"], "ready")["detail"]
    assert status["th1"]["rendezvous"] == "rendezvous port 29611 reachable over eth0 only"
    assert th1.ssh("nft list table inet gpu_runner_rendezvous", check=False).returncode != 0
    for host in (th1, th2):
        assert host.ssh("ss -Htln 'sport = :29611'").stdout.strip() == ""  # the rendezvous port is closed again
    assert_restored(th1, vllm=True)
    assert_restored(th2, vllm=False)


def test_a_host_that_is_not_ready_keeps_everyone_from_training(provisioned, inventory, hosts, home):
    th1, th2 = hosts["th1"].serve_vllm(), hosts["th2"]
    th2.ssh("systemd-run --unit=rogue-gpu-user python3 -c 'import time; time.sleep(600)' vllm-rogue")
    try:
        result = train(job_file(home, vllm=True, inference={"free_timeout_s": 3}), inventory, "th1,th2",
                       "--multi-node", cwd=home)
    finally:
        th2.ssh("systemctl stop rogue-gpu-user", check=False)
    assert result.returncode == 3, result.stderr
    session = session_of(result)
    st1, st2 = host_status(th1, session), host_status(th2, session)
    assert st2["outcome"] == "refused" and "still busy" in st2["error"]
    assert st1["outcome"] == "refused" and st1["error"].startswith("th2 (refused:")
    assert st1["error"].endswith(") was not ready, so no host of the multi-node job trained")
    assert phase(st1, "ready")["outcome"] == "refused"
    assert th1.ssh(f"test -e {SESSIONS}/{session}/train.json", check=False).returncode != 0  # never trained
    assert st1["restore"]["ok"] and st2["restore"]["ok"]
    assert_restored(th1, vllm=True)
    assert_restored(th2, vllm=False)


def test_a_trainer_killed_on_one_host_ends_the_job_on_both(provisioned, inventory, hosts, home):
    th1, th2 = hosts["th1"].serve_vllm(), hosts["th2"]
    controller = Background(job_file(home, vllm=True, max_steps=100000), inventory, "th1,th2", home,
                            "--multi-node")
    wait_for_step(th1, controller.session, 3)
    pid = th2.ssh("pgrep -f 'runner[.]train .*train.json' | tail -1").stdout.strip()
    env = th2.ssh(f"tr '\\0' '\\n' < /proc/{pid}/environ").stdout.splitlines()
    assert "NCCL_SOCKET_IFNAME=eth0" in env and "GLOO_SOCKET_IFNAME=eth0" in env  # the cluster interface
    rule = th1.ssh("nft list table inet gpu_runner_rendezvous").stdout  # the port: cluster interface only
    assert 'tcp dport 29500 iifname != { "lo", "eth0" } drop' in rule, rule
    th2.ssh("pkill -KILL -f 'runner[.]train'")
    assert controller.wait() != 0
    for host in (th1, th2):
        status = host_status(host, controller.session)
        assert status["outcome"] in ("failed", "interrupted") and status["restore"]["ok"], (host.name, status)
        assert_restored(host, vllm=host is th1)
    log = controller.log.read_text()
    assert "th1: " in log and "th2: " in log, log



def test_dry_run_shows_the_machines_and_changes_nothing(provisioned, inventory, hosts, home):
    before = hosts["th2"].ssh(f"ls -R {SESSIONS}").stdout
    result = train(job_file(home, vllm=False), inventory, "th1,th2", "--multi-node", "--dry-run", cwd=home)
    assert result.returncode == 0, result.stderr
    assert (f"multi-node: one job on 2 machines, 1 process(es) each; rendezvous on th1 at "
            f"{address(inventory, 'th1')}:29500") in result.stdout
    assert result.stdout.count("processes: 2 in all, 1 on each of 2 machines; ddp, or fsdp where the host") == 2
    assert hosts["th2"].ssh(f"ls -R {SESSIONS}").stdout == before
