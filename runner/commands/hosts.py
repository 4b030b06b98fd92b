"""runner hosts: one table per host: GPUs by UUID, limits now/standing/session, temperature, compute
processes, vLLM health, the training venv's runner version, PSU headroom."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from runner import psu
from runner.host import answers
from runner.inventory import load_inventory
from runner.playbook import host_answers


def gather(inventory_path: str | None, hosts: str | None) -> dict[str, dict]:
    """Each host's report from playbooks/hosts.yml (read-only): gpus, power, inference, health, venv."""
    inventory = load_inventory(inventory_path)
    return host_answers("hosts", inventory, inventory.select(hosts), (answers.REPORT,))[0]


def headroom(report: dict, profile: dict) -> psu.Budget | None:
    """The PSU budget of PROFILE (UUID -> W; GPUs it leaves out by runner.psu's one rule), None without a PSU
    size."""
    power, gpus = report.get("power", {}), report.get("gpus", [])
    if not power.get("psu_w") or not gpus:
        return None
    return psu.profile_budget(gpus, profile, power["psu_w"], power.get("system_w", psu.DEFAULT_SYSTEM_W),
                              power.get("margin", psu.DEFAULT_MARGIN))


def _watts(value) -> str:
    return "-" if value is None else f"{float(value):.0f}"


def host_table(name: str, report: dict) -> Table:
    power = report.get("power", {})
    standing, session = power.get("standing_w", {}), power.get("session_w", {})
    inference = report.get("inference", {})
    health = report.get("health")
    vllm = f"{inference.get('unit')}: {'healthy' if health == 200 else f'not healthy ({health})'}" \
        if inference.get("unit") else "none"
    venv = report.get("venv", {}).get("runner_version", "not installed")
    budget = headroom(report, standing)
    head = f"PSU headroom (standing) {budget.allowed_w - budget.total_w:+.0f} W" if budget else "PSU size unknown"
    table = Table(title=f"{name}: vLLM {vllm}; runner {venv}; {head}", title_justify="left")
    for column in ("GPU", "model", "limit now W", "standing W", "session W", "range W", "temp C", "processes"):
        table.add_column(column)
    for g in report.get("gpus", []):
        procs = ", ".join(f"{p['pid']} ({p['used_mib']} MiB)" for p in g.get("processes", [])) or "-"
        table.add_row(g["uuid"], g["name"].removeprefix("NVIDIA GeForce "), _watts(g["enforced_limit_w"]),
                      _watts(standing.get(g["uuid"])), _watts(session.get(g["uuid"])),
                      f"{g['power_min_w']:.0f}-{g['power_max_w']:.0f}", str(g.get("temperature_c") or "-"), procs)
    if not report.get("gpus"):
        table.add_row("-", report.get("nvml", "no GPUs"), *["-"] * 6)
    return table


def show_hosts(inventory_path: str | None, hosts: str | None) -> int:
    console = Console(width=200)
    for name, report in sorted(gather(inventory_path, hosts).items()):
        console.print(host_table(name, report))
    return 0
