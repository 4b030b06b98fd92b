"""Multi-node jobs on the control side: who hosts the rendezvous, and stopping the others when one host ends.

The hosts train as one job (accelerate across machines): the first of --hosts is machine 0 and hosts
the rendezvous on its cluster address (inventory var cluster_address, else ansible_host). The playbook
keeps everyone out until every host is ready; once training, a host whose session ends without success
makes the controller stop the others (their trainers would otherwise wait on a dead peer until the
collective timeout).
"""

from __future__ import annotations

import threading

from runner import playbook
from runner.errors import UsageError
from runner.inventory import Inventory


def cluster_hosts(hosts: list[str], multi_node: bool) -> list[str]:
    """The job's hosts in rank order, or [] for one session per host."""
    if not multi_node:
        return []
    if len(hosts) < 2:
        raise UsageError(f"--multi-node needs at least two hosts (got {', '.join(hosts) or 'none'}); "
                         "name them with --hosts a,b (the first hosts the rendezvous).")
    return list(hosts)


def address(inventory: Inventory, host: str) -> str:
    """A host's address on the cluster network, as the playbook picks it."""
    variables = inventory.variables.get(host, {})
    return str(variables.get("cluster_address") or variables.get("ansible_host") or host)


class MultiNode:
    """The machines of a multi-node job as the playbook renders them, for the dry run's plan."""

    def __init__(self, inventory: Inventory, hosts: list[str], facts: dict[str, dict]):
        self.hosts = hosts
        self.main_address = address(inventory, hosts[0])
        # accelerate starts the same number of processes on every host: the smallest GPU count, at least one
        self.per_machine = max(min(len(facts.get(h, {}).get("gpus", [])) for h in hosts), 1)

    def accelerate_inputs(self, host: str) -> dict:
        return {"machines": len(self.hosts), "machine_rank": self.hosts.index(host),
                "main_address": self.main_address, "processes_per_machine": self.per_machine}


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
