"""Multi-node jobs on the control side: the job's layout, and stopping the others when one host ends.

The hosts train as one job (accelerate across machines): the first of --hosts is machine 0 and hosts the
rendezvous on its cluster address (inventory var train_session_cluster_address, else ansible_host). lay_out()
is the one place the layout is worked out (machine ranks, addresses, processes per machine, the GPUs the
strategy is sized over), from the inventory and each host's GPU facts; the dry run prints it and the session
playbook hands each host its part, which its preflight, job.json and accelerate config take as given. The
playbook keeps everyone out until every host is ready; once training, a host whose session ends without success
makes the controller stop the others (their trainers would otherwise wait on a dead peer until the collective
timeout).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from runner import playbook
from runner.errors import UsageError
from runner.inventory import Inventory

ADDRESS = "train_session_cluster_address"  # inventory vars; runner.inventory maps their old unprefixed names
INTERFACE = "train_session_cluster_interface"


def cluster_hosts(hosts: list[str], multi_node: bool) -> list[str]:
    """The job's hosts in rank order, or [] for one session per host."""
    if not multi_node:
        return []
    if len(hosts) < 2:
        raise UsageError(f"--multi-node needs at least two hosts (got {', '.join(hosts) or 'none'}); "
                         "name them with --hosts a,b (the first hosts the rendezvous).")
    return list(hosts)


def address(inventory: Inventory, host: str) -> str:
    """A host's address on the cluster network: train_session_cluster_address, else ansible_host, else its name."""
    variables = inventory.variables.get(host, {})
    name = next((n for n in (ADDRESS, "ansible_host") if variables.get(n)), None)
    return _literal(host, name, variables[name]) if name else host


def interface(inventory: Inventory, host: str) -> str:
    """The interface the inventory names for the cluster network (train_session_cluster_interface), or ''."""
    value = inventory.variables.get(host, {}).get(INTERFACE)
    return _literal(host, INTERFACE, value) if value else ""


def _literal(host: str, name: str, value: object) -> str:
    """The controller lays the job out from the inventory as written (ansible-inventory renders no Jinja)."""
    if "{{" in str(value) or "{%" in str(value):
        raise UsageError(f"inventory variable {name} of {host} is a template ({value}); a multi-node job is laid "
                         "out before Ansible renders templates: write the address or interface itself")
    return str(value)


@dataclass(frozen=True)
class MultiNode:
    """The machines of a multi-node job, laid out once (lay_out) for the dry run and for every host."""

    hosts: list[str]
    main_address: str
    per_machine: int  # accelerate starts the same number of processes on every machine
    parts: dict[str, dict]  # host -> its part: what the host's job.json carries as "cluster"

    def accelerate_inputs(self, host: str) -> dict:
        """The accelerate template's multi-node inputs for this host (accelerate_config_<key>)."""
        part = self.parts[host]
        return {"machines": part["num_machines"], "machine_rank": part["machine_rank"],
                "main_address": part["main_address"], "processes_per_machine": part["processes_per_machine"]}


def lay_out(inventory: Inventory, hosts: list[str], facts: dict[str, dict], port: int) -> MultiNode:
    """Each host's part in the job from the inventory and the hosts' GPU facts (the probe's): machine rank, the
    rendezvous address and port, its own address and interface, the processes each machine starts (the smallest
    GPU count, at least one; each host trains on its first GPUs) and the memory of every GPU the job trains on,
    machine by machine, which the hosts size the strategy over (runner.host.preflight.pick_strategy)."""
    gpus = {h: facts.get(h, {}).get("gpus", []) for h in hosts}
    per_machine = max(min(len(found) for found in gpus.values()), 1)
    memory = [[int(g["memory_total_mib"]) for g in gpus[h][:per_machine]] for h in hosts]  # by machine rank
    main = address(inventory, hosts[0])
    parts = {h: {"num_machines": len(hosts), "machine_rank": rank, "main_address": main,
                 "address": address(inventory, h), "interface": interface(inventory, h), "port": port,
                 "processes_per_machine": per_machine, "gpu_memory_mib": memory}
             for rank, h in enumerate(hosts)}
    return MultiNode(list(hosts), main, per_machine, parts)


class PeerWatch:
    """Stops every other host once one host's session ends without success (outcome failed/interrupted/refused)."""

    def __init__(self, inventory: Inventory, hosts: list[str], session_id: str):
        self.inventory, self.hosts, self.session_id = inventory, hosts, session_id
        self.ended: dict[str, str] = {}
        self.thread: threading.Thread | None = None

    def update(self, host: str, status: dict) -> None:
        outcome = status.get("outcome")
        if outcome in (None, "running"):
            return
        self.ended[host] = outcome
        if outcome != "succeeded" and self.thread is None:
            others = [h for h in self.hosts if h not in self.ended]
            if others:
                self.thread = threading.Thread(target=self._stop, args=(others,), daemon=True)
                self.thread.start()

    def _stop(self, others: list[str]) -> None:
        playbook.run_playbook("session", self.inventory, others,
                              {"train_session_id": self.session_id, "train_session_action": "stop"},
                              raise_on_failure=False)

    def join(self) -> None:
        if self.thread:
            self.thread.join(timeout=300)
