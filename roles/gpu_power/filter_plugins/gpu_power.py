"""Filters for the gpu_power role: check a power profile against NVML's constraints and the PSU budget.

The PSU arithmetic is runner.psu's (imported from this repository), so `runner power plan`, the
session preflight and provisioning agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from runner import psu  # noqa: E402  (after the path above)

TOLERANCE_W = 1.0  # as runner.host.power: NVML rounds limits to whole watts on some boards


def effective_limits(gpus: list[dict], profile: dict) -> dict[str, float]:
    """The limit each GPU runs at under PROFILE (runner.psu.profile_limit: the one rule for GPUs it leaves out)."""
    return {g["uuid"]: psu.profile_limit(g, profile) for g in gpus}


def gpu_power_problems(profile: dict, gpus: list[dict], host: str, name: str) -> list[str]:
    """One line per profile entry that names an absent GPU or a value outside NVML's constraints."""
    by_uuid = {g["uuid"]: g for g in gpus}
    problems = []
    for uuid, watts in (profile or {}).items():
        gpu = by_uuid.get(uuid)
        if gpu is None:
            problems.append(f"{host}: {name} limit for GPU {uuid}: no such GPU on this host "
                            f"(it has {', '.join(by_uuid) or 'no GPUs'})")
        elif not gpu["power_min_w"] <= float(watts) <= gpu["power_max_w"]:
            problems.append(f"{host}: {name} limit {float(watts):g} W for GPU {uuid} ({gpu['name']}) is outside "
                            f"its allowed range {gpu['power_min_w']:g}-{gpu['power_max_w']:g} W")
    return problems


def gpu_power_budget(gpus: list[dict], profile: dict, psu_w: float, system_w: float = psu.DEFAULT_SYSTEM_W,
                     margin: float = psu.DEFAULT_MARGIN) -> dict:
    """The seed's arithmetic for PROFILE, and the highest limits that would fit."""
    limits = effective_limits(gpus, profile or {})
    plan = psu.profile_budget(gpus, profile or {}, float(psu_w), float(system_w), float(margin))
    safe = psu.highest_safe_limits([(g["name"], g["power_min_w"], g["power_max_w"]) for g in gpus],
                                   float(psu_w), float(system_w), float(margin))
    return {"fits": plan.fits, "total_w": round(plan.total_w), "allowed_w": round(plan.allowed_w),
            "table": plan.table(), "limits_w": limits,
            "highest_safe_w": None if safe is None else {g["uuid"]: w for g, w in zip(gpus, safe, strict=True)}}


def gpu_power_differing(profile: dict, gpus: list[dict]) -> list[str]:
    """The UUIDs whose enforced limit is not PROFILE's (within the tolerance NVML's rounding needs)."""
    by_uuid = {g["uuid"]: g for g in gpus}
    return [uuid for uuid, watts in (profile or {}).items()
            if uuid in by_uuid and abs(by_uuid[uuid]["enforced_limit_w"] - float(watts)) > TOLERANCE_W]


class FilterModule:
    def filters(self):
        return {"gpu_power_problems": gpu_power_problems, "gpu_power_budget": gpu_power_budget,
                "gpu_power_differing": gpu_power_differing}
