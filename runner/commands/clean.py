"""`runner clean [ID | --older-than D]`: free host space from finished sessions; never from a running one.

On each host a session loses its staged inputs (its link to the shared model copy, its dataset) and its
checkpoints; its results stay there (status, logs, metrics, adapter), as they do in ./runs/. A shared model
copy goes once no session on the host links to it.
"""

from __future__ import annotations

import re

from rich.console import Console

from runner import ledger
from runner.errors import EXIT_OK, Refused, RunnerError, UsageError
from runner.host import answers
from runner.inventory import Inventory, load_inventory
from runner.playbook import host_answers

out = Console(soft_wrap=True)
UNITS_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


def parse_age(text: str) -> float:
    """'7d', '12h', '30m', '90s' or a number of days, in seconds."""
    found = AGE.match(text.strip())
    if not found:
        raise UsageError(f"--older-than {text}: give an age such as 7d, 12h or 30m (a bare number is days).")
    return float(found.group(1)) * UNITS_S[found.group(2) or "d"]


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} B" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return ""


def target(session_id: str | None, older_than: str | None, hosts: str | None,
           inventory_path: str | None) -> tuple[Inventory, list[str], dict]:
    """The inventory, hosts and host request for a session ID (its own hosts) or an age (all chosen hosts)."""
    if (session_id is None) == (older_than is None):
        raise UsageError("runner clean needs a session ID or --older-than AGE (one of them); "
                         "'runner status' lists sessions.")
    if older_than is not None:
        inventory = load_inventory(inventory_path)
        return inventory, inventory.select(hosts), {"older_than_s": parse_age(older_than)}
    entry = ledger.get(session_id)
    inventory = load_inventory(inventory_path or entry.inventory)
    chosen = entry.hosts
    if hosts:
        chosen = [h for h in inventory.select(hosts) if h in entry.hosts]
        if not chosen:
            raise UsageError(f"--hosts {hosts}: session {session_id} ran on {', '.join(entry.hosts)}.")
    return inventory, chosen, {"sessions": [session_id]}


def ask(inventory: Inventory, hosts: list[str], request: dict) -> tuple[dict[str, dict], RunnerError | None]:
    """Each host's answer, and what failed: a running session named refuses (exit 3), anything else is exit 1."""
    found, run = host_answers("clean", inventory, hosts, (answers.CLEAN,), {"train_session_clean": request},
                              raise_on_failure=False)
    refused = {h: why for h, f in run.failures.items() if (why := answers.refused(f)) is not None}
    if refused:
        host, why = next(iter(refused.items()))
        return found, Refused(f"{host}: {why}. Nothing was removed.")
    if run.failures:
        detail = "; ".join(f"{h}: {f}" for h, f in run.failures.items())
        return found, RunnerError(f"runner clean failed on {', '.join(run.failures)}: {detail} "
                                  f"(full log: {run.artifacts})")
    return found, None


def report(host: str, answer: dict) -> None:
    verb = "would free" if answer["dry_run"] else "freed"
    for missing in answer.get("missing", []):
        out.print(f"{host}: no session {missing} on this host", markup=False)
    for session in answer["sessions"]:
        out.print(f"{host}: session {session['id']}: {', '.join(session['removed'])} ({size(session['bytes'])})",
                  markup=False)
    for model in answer["models"]:
        out.print(f"{host}: shared model {model['name']} ({model['digest'][:12]}), no session uses it "
                  f"({size(model['bytes'])})", markup=False)
    out.print(f"{host}: {verb} {answer['freed_bytes']:,} bytes ({size(answer['freed_bytes'])})", markup=False)


def clean(session_id: str | None, older_than: str | None, hosts: str | None, inventory_path: str | None,
          dry_run: bool) -> int:
    inventory, chosen, request = target(session_id, older_than, hosts, inventory_path)
    if len(chosen) > 1 and session_id and not dry_run:
        _, failed = ask(inventory, chosen, {**request, "dry_run": True})
        if failed:
            raise failed  # refused on one host: nothing removed on any
    answered, failed = ask(inventory, chosen, {**request, "dry_run": dry_run})
    for host in chosen:
        if host in answered:
            report(host, answered[host])  # what the hosts that answered freed, also when another failed
    if failed:
        raise failed
    return EXIT_OK
