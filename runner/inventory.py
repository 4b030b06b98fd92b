"""Inventories: the user's (-i), or the embedded default (localhost), and --hosts selection."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from runner.errors import UsageError

# The embedded default: this machine, through the interpreter that runs runner (it has runner[train]).
LOCALHOST_INVENTORY = (
    "localhost ansible_connection=local ansible_python_interpreter={python} train_session_python={python}\n"
)


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
    from ansible.inventory.manager import InventoryManager  # slow import: only when an inventory is given
    from ansible.parsing.dataloader import DataLoader

    try:
        manager = InventoryManager(loader=DataLoader(), sources=[str(source)])
    except Exception as err:  # ansible raises many types for a broken file
        raise UsageError(f"-i {path}: cannot be parsed ({err}). Fix the inventory.") from None
    hosts = [h.name for h in manager.get_hosts()]
    if not hosts:
        raise UsageError(f"-i {path}: the inventory lists no hosts (or does not parse). "
                         "See inventory.example.")
    return Inventory(source.resolve(), hosts, {h.name: dict(h.get_vars()) for h in manager.get_hosts()})
