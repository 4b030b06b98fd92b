"""runner setup: run playbooks/setup.yml (the same play as `ansible-playbook setup.yml`) with progress."""

from __future__ import annotations

import time

from rich.console import Console

from runner.errors import Refused, UsageError
from runner.inventory import load_inventory
from runner.playbook import PlaybookFailed, run_playbook

err_console = Console(stderr=True, highlight=False)
# Setup's preflight tasks: a failure there means nothing on the host changed
PREFLIGHT_PREFIX = "Refuse "
# The parts of setup.yml a user can pick (playbooks/setup.yml tags them; GPU facts and paths always run)
TAGS = ("power", "venv", "accelerate", "units", "inference")


def parse_tags(text: str | None) -> tuple[str, ...]:
    """'power,units' -> ('power', 'units'); an unknown part is a usage error naming the known ones."""
    chosen = tuple(t.strip() for t in (text or "").split(",") if t.strip())
    unknown = [t for t in chosen if t not in TAGS]
    if unknown:
        raise UsageError(f"--tags: unknown part '{unknown[0]}'; setup has: {', '.join(TAGS)}.")
    return chosen


def setup(inventory_path: str | None, hosts: str | None, check: bool = False, tags: str | None = None) -> int:
    parts = parse_tags(tags)
    inventory = load_inventory(inventory_path)
    chosen = inventory.select(hosts)
    start = time.monotonic()
    failed_tasks: set[str] = set()

    def on_event(event: dict) -> None:
        data = event.get("event_data", {})
        kind = event.get("event")
        if kind == "playbook_on_task_start" and not data.get("is_conditional"):
            err_console.print(f"[{time.monotonic() - start:5.0f} s] {data.get('task', '')}", markup=False)
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            failed_tasks.add(data.get("task", ""))

    try:
        run = run_playbook("setup", inventory, chosen, on_event=on_event, check=check, tags=parts)
    except PlaybookFailed as err:
        if failed_tasks and all(task.startswith(PREFLIGHT_PREFIX) for task in failed_tasks):
            raise Refused("; ".join(err.failures.values()) + " Nothing was changed.") from None
        raise
    for host in chosen:
        verb = "would change" if check else "changed"
        print(f"{host}: ok, {verb} {run.changed(host)}")
    err_console.print(f"setup {'checked' if check else 'done'} in {time.monotonic() - start:.0f} s", markup=False)
    return 0
