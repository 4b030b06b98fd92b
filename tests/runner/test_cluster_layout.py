"""A multi-node job's layout, worked out once on the controller (runner.cluster.lay_out) from the inventory and
the hosts' GPU facts: ranks, addresses, processes per machine; and the renamed inventory variables."""

import pytest

from runner import inventory as inventory_module
from runner.cluster import lay_out
from runner.inventory import load_inventory
from runner.templates import accelerate_config


def gpus(*memory_mib: int) -> dict:
    """A host's probe answer with GPUs of these sizes."""
    return {"gpus": [{"index": i, "uuid": f"GPU-{i}", "memory_total_mib": mib, "compute_capability": [8, 9]}
                     for i, mib in enumerate(memory_mib)]}


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(inventory_module, "_warned", set())


def inventory_file(tmp_path, text: str):
    path = tmp_path / "hosts.ini"
    path.write_text(text)
    return load_inventory(str(path))


def test_the_layout_every_host_gets(tmp_path, fresh_warnings):
    inventory = inventory_file(tmp_path, "[gpu_hosts]\n"
                               "a ansible_host=192.0.2.10 train_session_cluster_address=10.0.0.10 "
                               "train_session_cluster_interface=enp5s0\n"
                               "b ansible_host=192.0.2.11\n"
                               "c\n")
    machines = lay_out(inventory, ["b", "a", "c"], {"a": gpus(24564, 16384), "b": gpus(8192), "c": gpus(1, 2, 3)},
                       29611)
    assert machines.main_address == "192.0.2.11" and machines.per_machine == 1  # b's one GPU sets it
    assert machines.parts["a"] == {"num_machines": 3, "machine_rank": 1, "main_address": "192.0.2.11",
                                   "address": "10.0.0.10", "interface": "enp5s0", "port": 29611,
                                   "processes_per_machine": 1, "gpu_memory_mib": [[8192], [24564], [1]]}
    assert [machines.parts[h]["machine_rank"] for h in ("b", "a", "c")] == [0, 1, 2]
    assert (machines.parts["b"]["address"], machines.parts["c"]["address"]) == ("192.0.2.11", "c")
    assert machines.parts["c"]["interface"] == ""
    for host in ("a", "b", "c"):  # what each host's accelerate config says is the layout, as laid out
        config = accelerate_config(gpus(24564, 16384)["gpus"], "ddp", 29611, **machines.accelerate_inputs(host))
        part = machines.parts[host]
        assert (config["num_machines"], config["machine_rank"], config["main_process_ip"], config["num_processes"],
                config["gpu_ids"]) == (3, part["machine_rank"], "192.0.2.11", 3, "0")
    without = lay_out(inventory, ["a", "b"], {"a": gpus(24564), "b": {"gpus": []}}, 29500)
    assert without.per_machine == 1  # at least one process a machine, also on a host without GPUs


def test_the_old_unprefixed_names_still_work_and_say_so_once(tmp_path, fresh_warnings, capsys):
    text = ("[gpu_hosts]\n"
            "a ansible_host=192.0.2.10 cluster_address=10.0.0.10 cluster_interface=enp5s0\n"
            "b ansible_host=192.0.2.11 cluster_address=10.0.0.11 train_session_cluster_address=10.0.0.99\n")
    inventory = inventory_file(tmp_path, text)
    said = capsys.readouterr().err.splitlines()
    assert said == [
        "warning: inventory variable cluster_address is deprecated (a, b); rename it to train_session_cluster_address",
        "warning: inventory variable cluster_interface is deprecated (a); rename it to "
        "train_session_cluster_interface"]
    machines = lay_out(inventory, ["a", "b"], {"a": gpus(24564), "b": gpus(24564)}, 29500)
    assert (machines.parts["a"]["address"], machines.parts["a"]["interface"]) == ("10.0.0.10", "enp5s0")
    assert machines.parts["b"]["address"] == "10.0.0.99"  # the new name wins where both are set
    inventory_file(tmp_path, text)
    assert capsys.readouterr().err == ""  # once a run


def test_a_templated_cluster_address_is_refused_in_one_line(tmp_path, fresh_warnings):
    """ansible-inventory --list does not render Jinja: a templated address would reach the hosts as its text."""
    from runner.errors import UsageError

    inventory = inventory_file(tmp_path, "[gpu_hosts]\n"
                               "a ansible_host=192.0.2.10 train_session_cluster_address='{{ ansible_host }}'\n"
                               "b ansible_host=192.0.2.11 train_session_cluster_interface='{{ nic }}'\n")
    with pytest.raises(UsageError, match=r"^inventory variable train_session_cluster_address of a is a template "
                                         r"\(\{\{ ansible_host \}\}\); .* write the address or interface itself$"):
        lay_out(inventory, ["a", "b"], {"a": gpus(24564), "b": gpus(24564)}, 29500)
    with pytest.raises(UsageError, match=r"^inventory variable train_session_cluster_interface of b is a template"):
        lay_out(inventory, ["b", "a"], {"a": gpus(24564), "b": gpus(24564)}, 29500)
