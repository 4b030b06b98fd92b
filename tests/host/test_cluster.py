"""Multi-node on one host: the cluster interface, and the supervisor waiting for every host to be ready."""

import json
import os
import subprocess
import sys
import time

import pytest
from helpers import REPO
from simhost import A_3090TI, A_4090, phase, spec

from runner.cluster import lay_out
from runner.host import cluster
from runner.inventory import Inventory


def own_address() -> tuple[str, str]:
    """An address of this machine on a real interface (not loopback), and that interface."""
    for name, addresses in cluster.interfaces().items():
        if name != "lo" and addresses:
            return addresses[0], name
    pytest.skip("this machine has no network interface with an address")


def test_the_interface_holding_the_address_carries_the_collectives():
    address, name = own_address()
    assert cluster.interface_for(address) == name
    assert cluster.launch_env(name) == {"NCCL_SOCKET_IFNAME": name, "GLOO_SOCKET_IFNAME": name}


@pytest.mark.parametrize(("address", "wanted", "message"), [
    ("127.0.0.1", None, "no interface of this host holds its cluster address 127.0.0.1"),
    ("192.0.2.254", None, "no interface of this host holds"),
    ("no-such-host.invalid", None, "does not resolve on this host"),
    (None, "nosuchif0", "cluster_interface nosuchif0 is not on this host"),
])
def test_a_wrong_cluster_address_or_interface_is_named(address, wanted, message):
    with pytest.raises(cluster.ClusterError, match=message):
        cluster.interface_for(address or own_address()[0], wanted)


def cluster_part(rank: int = 1) -> dict:
    """This host's part of a two-machine job as the controller lays it out (runner.cluster.lay_out): the peer,
    at 10.0.0.1, has one 1.6 GiB card, so each machine runs one process and the job needs FSDP."""
    gpus = json.loads((REPO / "tests" / "gpu_sim" / "profiles" / "a.json").read_text())["gpus"]
    facts = {"peer": {"gpus": [{**gpus[0], "memory_total_mib": 1600}]}, "this": {"gpus": gpus}}
    hosts = ["peer", "this"] if rank == 1 else ["this", "peer"]
    inventory = Inventory(None, hosts, {"peer": {"ansible_host": "10.0.0.1"},
                                        "this": {"train_session_cluster_address": own_address()[0]}})
    return lay_out(inventory, hosts, facts, 29500).parts["this"]


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="setting power limits needs root, like the driver")


def start(session) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "runner.host", "session", str(session)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_phase(session, name: str, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        path = session / "status.json"
        status = json.loads(path.read_text()) if path.exists() else {}
        if status.get("phase") == name:
            return status
        time.sleep(0.2)
    raise AssertionError(f"the session never reached phase {name}")


@needs_root
def test_a_host_waits_capped_until_told_and_a_stop_restores_it_untrained(host):
    session = host.session_dir(spec(), cluster=cluster_part())
    proc = start(session)
    try:
        status = wait_phase(session, "ready")
        assert host.limits_w() == {A_3090TI: 300, A_4090: 300}  # capped, GPUs free: waiting for the others
        checked = phase(status, "preflight")["detail"]
        assert "machine 1 of 2" in checked
        assert "fsdp: 16-bit weights" in checked  # the job's strategy, sized over the peer's card too
        (session / "STOP").write_text("refused: th1 (refused: GPU busy) was not ready\n")
        assert proc.wait(timeout=60) == 3
    finally:
        proc.kill()
    status = json.loads((session / "status.json").read_text())
    assert status["outcome"] == "refused" and status["error"].startswith("th1 (refused: GPU busy) was not ready")
    assert phase(status, "ready")["outcome"] == "refused"
    assert not (session / "train.json").exists()  # nobody trained
    assert status["restore"]["ok"] and host.limits_w() == {A_3090TI: 450, A_4090: 450}


@needs_root
@pytest.mark.slow  # a session to its ready phase; the stop while waiting above stays fast
def test_runner_stop_while_waiting_is_a_stop(host):
    session = host.session_dir(spec(), cluster=cluster_part())
    proc = start(session)
    try:
        wait_phase(session, "ready")
        (session / "STOP").touch()
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
    status = json.loads((session / "status.json").read_text())
    assert status["outcome"] == "interrupted" and phase(status, "ready")["outcome"] == "stopped"
    assert status["restore"]["ok"] and host.limits_w() == {A_3090TI: 450, A_4090: 450}


@needs_root
def test_a_host_that_never_hears_go_gives_up_and_restores(host):
    session = host.session_dir(spec(cluster={"ready_timeout_s": 2}), cluster=cluster_part())
    rc, status = host.run(session)
    assert rc == 1 and "not all ready within 2 s" in status["error"]
    assert not (session / "train.json").exists()
    assert status["restore"]["ok"] and host.limits_w() == {A_3090TI: 450, A_4090: 450}


@needs_root
def test_a_cluster_address_the_host_does_not_hold_is_refused_before_any_change(host):
    part = {**cluster_part(), "address": "192.0.2.254"}
    rc, status = host.run(host.session_dir(spec(), cluster=part))
    assert rc == 3 and "no interface of this host holds its cluster address" in status["error"]
    assert host.limits_w() == {A_3090TI: 450, A_4090: 450}


@needs_root
def test_a_host_whose_gpus_changed_since_the_layout_is_refused_before_any_change(host):
    part = {**cluster_part(), "gpu_memory_mib": [[1600], [8192]]}  # laid out when this host had an 8 GiB card
    rc, status = host.run(host.session_dir(spec(), cluster=part))
    assert rc == 3 and "GPUs changed since the controller laid out the multi-node job" in status["error"]
    assert host.limits_w() == {A_3090TI: 450, A_4090: 450}


@needs_root
@pytest.mark.slow  # a trainer process
def test_a_stop_while_the_trainer_waits_for_a_peer_that_never_comes_ends_it_at_once(host, tmp_path):
    from runner.templates import render

    session = host.session_dir(spec(), cluster={**cluster_part(), "main_address": "127.0.0.1"})
    (session / "accelerate.yaml").write_text(render(
        "accelerate/default_config.yaml.j2", accelerate_config_gpus=[], accelerate_config_port=29613,
        accelerate_config_machines=2, accelerate_config_machine_rank=1, accelerate_config_main_address="127.0.0.1",
        accelerate_config_processes_per_machine=1))
    proc = start(session)
    try:
        wait_phase(session, "ready")
        (session / "GO").touch()
        wait_phase(session, "train")
        time.sleep(3)  # the launcher is up, waiting for machine 0 at 127.0.0.1:29613, which never comes
        assert proc.poll() is None
        stopped = time.monotonic()
        (session / "STOP").touch()  # what 'runner stop' (or the controller, when a peer failed) does
        assert proc.wait(timeout=60) == 130
        took = time.monotonic() - stopped
    finally:
        proc.kill()
    status = json.loads((session / "status.json").read_text())
    assert status["outcome"] == "interrupted" and status["error"] == "stop requested ('runner stop')"
    assert took < 30  # no checkpoint grace for a trainer that never started training
    assert status["restore"]["ok"] and host.limits_w() == {A_3090TI: 450, A_4090: 450}
