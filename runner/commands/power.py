"""runner power plan: the PSU arithmetic per host (the seed's tables) for the standing and session
profiles, and the highest limits that would fit."""

from __future__ import annotations

import sys

from runner import psu
from runner.commands.hosts import gather, headroom
from runner.errors import Refused
from runner.inventory import load_inventory


def plan_text(name: str, report: dict) -> tuple[str, bool]:
    """The arithmetic for one host and whether its standing profile fits."""
    power, gpus = report.get("power", {}), report.get("gpus", [])
    if not gpus:
        return f"{name}: no GPUs ({report.get('nvml', 'NVML unavailable')})", True
    if not power.get("psu_w"):
        return f"{name}: PSU size unknown: set gpu_power_psu_w in the inventory and run 'runner setup'", True
    lines, fits = [f"{name}: PSU {float(power['psu_w']):.0f} W"], True
    for profile in ("standing", "session"):
        budget = headroom(report, power.get(f"{profile}_w") or {})
        fits = fits and (budget.fits or profile == "session")
        lines += [f"  {profile} profile:"] + [f"    {row}" for row in budget.table().splitlines()]
    safe = psu.highest_safe_limits([(g["name"], g["power_min_w"], g["power_max_w"]) for g in gpus],
                                   power["psu_w"], power.get("system_w", psu.DEFAULT_SYSTEM_W),
                                   power.get("margin", psu.DEFAULT_MARGIN))
    suggestion = ", ".join(f"{g['uuid']} ({g['name']}): {w} W" for g, w in zip(gpus, safe, strict=True)) \
        if safe else "none: even the minimum limits do not fit"
    lines.append(f"  highest safe limits: {suggestion}")
    return "\n".join(lines), fits


# Inventory variables that override what the host was provisioned with (a plan before `runner setup`); their
# old names (psu_w, system_w) arrive under these by runner.inventory.RENAMED
INVENTORY_KEYS = {"gpu_power_psu_w": "psu_w", "gpu_power_system_w": "system_w", "gpu_power_margin": "margin",
                  "gpu_power_standing_w": "standing_w", "gpu_power_session_w": "session_w"}


def plan(inventory_path: str | None, hosts: str | None) -> int:
    """Print each host's PSU arithmetic; Refused when a standing profile does not fit."""
    failing = []
    inventory = load_inventory(inventory_path)
    for name, report in sorted(gather(inventory_path, hosts).items()):
        planned = {key: inventory.variables.get(name, {}).get(var) for var, key in INVENTORY_KEYS.items()}
        report["power"] = {**report.get("power", {}), **{k: v for k, v in planned.items() if v is not None}}
        text, fits = plan_text(name, report)
        print(text)
        if not fits:
            failing.append(name)
    sys.stdout.flush()
    if failing:
        raise Refused(f"the standing limits of {', '.join(failing)} do not fit the PSU: set gpu_power_standing_w "
                      "to at most the highest safe limits above and run 'runner setup'.")
    return 0
