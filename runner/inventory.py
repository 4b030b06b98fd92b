"""Inventories: the user's (-i), or the embedded default (localhost), and --hosts selection."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UsageError

# The embedded default: this machine, through the interpreter that runs runner (it has runner[train]).
LOCALHOST_INVENTORY = (
    "localhost ansible_connection=local ansible_python_interpreter={python} train_session_python={python}\n"
)

# Inventory variables renamed to carry their role's prefix (old name -> new name): the old name still works, and
# says so once a run. The roles' defaults fall back to the old names of the last four too (ansible-playbook alone).
RENAMED = {
    "cluster_address": "train_session_cluster_address",
    "cluster_interface": "train_session_cluster_interface",
    "psu_w": "gpu_power_psu_w",
    "system_w": "gpu_power_system_w",
    "gpu_uuids": "train_session_gpu_uuids",
    "hf_token": "train_session_hf_token",
}
_warned: set[str] = set()


@dataclass
class Inventory:
    path: Path | None  # None: the embedded localhost default
    hosts: list[str]
    variables: dict[str, dict]

    @property
    def source(self) -> str:
        """What ansible-runner takes: a path, or the INI text of the embedded default."""
        return str(self.path) if self.path else LOCALHOST_INVENTORY.format(python=sys.executable)

    def select(self, names: str | None) -> list[str]:
        """The hosts named by --hosts (comma-separated), all when None; unknown names are errors."""
        if not names:
            return list(self.hosts)
        chosen = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in self.hosts]
        if unknown:
            raise UsageError(f"--hosts: unknown host '{unknown[0]}'; the inventory has: {', '.join(self.hosts)}.")
        return chosen


def load_inventory(path: str | None) -> Inventory:
    if path is None:
        return Inventory(None, ["localhost"], {"localhost": {"ansible_connection": "local"}})
    source = Path(path)
    if not source.exists():
        raise UsageError(f"-i {path}: no such inventory. Start from inventory.example.")
    listed = list_inventory(source)
    hosts = ordered_hosts(listed)
    if not hosts:
        raise UsageError(f"-i {path}: the inventory lists no hosts (or does not parse). See inventory.example.")
    hostvars = listed.get("_meta", {}).get("hostvars", {})
    return Inventory(source.resolve(), hosts, adopt_renamed({h: dict(hostvars.get(h, {})) for h in hosts}))


def adopt_renamed(variables: dict[str, dict]) -> dict[str, dict]:
    """Each renamed variable under its new name where a host sets only the old one; a warning line per old name."""
    for old, new in RENAMED.items():
        users = [host for host, own in variables.items() if old in own]
        for host in users:
            variables[host].setdefault(new, variables[host][old])
        if users and old not in _warned:
            _warned.add(old)
            print(f"warning: inventory variable {old} is deprecated ({', '.join(users)}); rename it to {new}",
                  file=sys.stderr)
    return variables


def list_inventory(source: Path) -> dict:
    """`ansible-inventory --list`, in its own process: Ansible patches the interpreter it is loaded into
    (sys.intern, import hooks), which breaks torch's compiler in the same process."""
    tool = Path(sys.executable).parent / "ansible-inventory"
    result = subprocess.run([str(tool), "-i", str(source), "--list"], capture_output=True, text=True,
                            env={**os.environ, "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False"})
    try:
        return json.loads(result.stdout) if result.returncode == 0 else {}
    except json.JSONDecodeError:
        return {}


def ordered_hosts(listed: dict) -> list[str]:
    """Every host once, group by group in the inventory's order."""
    hosts: list[str] = []

    def walk(group: str) -> None:
        node = listed.get(group, {})
        hosts.extend(h for h in node.get("hosts", []) if h not in hosts)
        for child in node.get("children", []):
            walk(child)

    walk("all")
    return hosts
