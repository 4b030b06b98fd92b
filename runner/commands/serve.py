"""`runner serve`: serve a session's fine-tune with each host's vLLM (adapter or merged), list, revert."""

from __future__ import annotations

import json

from rich.console import Console

from runner import ledger
from runner.errors import EXIT_FAILED, EXIT_OK, EXIT_REFUSED, UsageError
from runner.host import answers
from runner.inventory import Inventory, load_inventory
from runner.playbook import Run, host_answers

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def run_serve(inventory: Inventory, hosts: list[str], extravars: dict) -> tuple[dict[str, dict], Run]:
    """The serve playbook on HOSTS; each host's answer to the action, and the run (its failures name the rest)."""
    kind = answers.SERVE_ACTIONS[extravars["serve_model_action"]]
    return host_answers("serve", inventory, hosts, (kind,), extravars, raise_on_failure=False)


def report_failures(run: Run, answered: dict[str, dict]) -> int:
    """One line per host that did not answer; EXIT_REFUSED when every failure was a refusal."""
    code = EXIT_OK
    for host, failure in run.failures.items():
        if host in answered:
            continue
        err.print(f"{host}: {failure}", style="red", markup=False)
        refused = answers.refused(failure) is not None
        code = EXIT_FAILED if not refused or code == EXIT_FAILED else EXIT_REFUSED
    return code


def describe(answer: dict) -> str:
    if answer.get("mode") == "none":
        return f"no inference server to list ({answer.get('problem')})"
    names = ", ".join(answer.get("names", []))
    adapters = ", ".join(f"{a['name']} ({a.get('path')})" for a in answer.get("adapters", []))
    health = {True: "healthy", False: f"NOT healthy: {answer.get('problem')}", None: "health not checked"}
    session = f" from session {answer['session']}" if answer.get("session") else ""
    return (f"{answer.get('mode', 'base')}{session}: {answer.get('model')} as {names}"
            + (f"; adapters {adapters} (--max-lora-rank {answer.get('max_lora_rank')})" if adapters else "")
            + f"; {answer.get('unit')} {'active' if answer.get('active') else 'inactive'}, "
            + health[answer.get("healthy")])


def list_served(inventory: Inventory, hosts: list[str], as_json: bool) -> int:
    answered, run = run_serve(inventory, hosts, {"serve_model_action": "list"})
    if as_json:
        out.print_json(json.dumps(answered))
    else:
        for host in hosts:
            if host in answered:
                out.print(f"{host}: {describe(answered[host])}", markup=False)
    return report_failures(run, answered)


def revert(inventory: Inventory, hosts: list[str], health_timeout_s: int) -> int:
    answered, run = run_serve(inventory, hosts, {"serve_model_action": "revert",
                                                 "serve_model_health_timeout_s": health_timeout_s})
    for host, answer in answered.items():
        what = ", ".join(answer.get("names", []))
        out.print(f"{host}: serving the base model {what}" + (
            f", healthy after {answer['healthy_after_s']:.0f} s" if answer.get("changed") else " (unchanged)"),
            markup=False)
    return report_failures(run, answered)


def serve_session(session_id: str, merge: bool, hosts: str | None, inventory_path: str | None, name: str | None,
                  health_timeout_s: int) -> int:
    entry = ledger.get(session_id)
    inventory = load_inventory(inventory_path or entry.inventory)
    chosen = entry.hosts if not hosts else [h.strip() for h in hosts.split(",") if h.strip()]
    strangers = [h for h in chosen if h not in entry.hosts]
    if strangers:
        raise UsageError(f"--hosts: session {session_id} did not run on {strangers[0]}; it ran on "
                         f"{', '.join(entry.hosts)}.")
    mode = "merge" if merge else "adapter"
    err.print(f"serving session {session_id} ({'merged' if merge else 'adapter'}) on {', '.join(chosen)}; "
              "vLLM restarts and must pass its health gate", markup=False)
    answered, run = run_serve(inventory, chosen, {
        "serve_model_action": "apply", "serve_model_session": session_id, "serve_model_mode": mode,
        "serve_model_name": name or "", "serve_model_health_timeout_s": health_timeout_s})
    for host, answer in answered.items():
        rank = (f", rank {answer['rank']} -> --max-lora-rank {answer['max_lora_rank']}"
                if answer.get("max_lora_rank") else "")
        out.print(f"{host}: serving {answer['name']} ({answer['mode']} of session {session_id}{rank}) from "
                  f"{answer['path']}; {answer['unit']} healthy after {answer['healthy_after_s']:.0f} s",
                  markup=False)
    return report_failures(run, answered)


def serve(session_id: str | None, adapter: bool, merge: bool, hosts: str | None, inventory_path: str | None,
          name: str | None, list_: bool, revert_: bool, as_json: bool, health_timeout_s: int) -> int:
    chosen_actions = [a for a, on in (("ID", session_id), ("--list", list_), ("--revert", revert_)) if on]
    if len(chosen_actions) != 1:
        raise UsageError("runner serve needs one of: a session ID, --list or --revert.")
    if adapter and merge:
        raise UsageError("--adapter and --merge exclude each other: pick one (default --adapter).")
    if session_id:
        return serve_session(session_id, merge, hosts, inventory_path, name, health_timeout_s)
    if name or merge or adapter:
        raise UsageError("--name, --adapter and --merge go with a session ID.")
    inventory = load_inventory(inventory_path)
    chosen = inventory.select(hosts)
    if list_:
        return list_served(inventory, chosen, as_json)
    return revert(inventory, chosen, health_timeout_s)
