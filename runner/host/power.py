"""Apply a power profile (watts per GPU UUID), read the enforced limits back, and restore.

Profiles live in the host's power config (written by provisioning): the standing ("inference")
profile and the session ("training") profile. In read-back-only mode nothing is ever set: the
plan is checked against the constraints and the current limits are read, which is what the
shared GPU machines we benchmark on allow.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from runner.host import nvml

DEFAULT_CONFIG = Path("/etc/gpu-runner/power.json")
TOLERANCE_W = 1.0  # NVML rounds limits to whole watts on some boards


class PowerError(Exception):
    """A limit could not be applied or did not take effect."""


@dataclass
class PowerConfig:
    standing_w: dict[str, float] = field(default_factory=dict)
    session_w: dict[str, float] = field(default_factory=dict)
    psu_w: float | None = None
    system_w: float = 200
    margin: float = 0.9
    readonly: bool = False

    @classmethod
    def load(cls, path: Path | None = None) -> PowerConfig:
        path = path or Path(os.environ.get("RUNNER_POWER_CONFIG", DEFAULT_CONFIG))
        data = json.loads(path.read_text()) if path.exists() else {}
        cfg = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        cfg.readonly = cfg.readonly or os.environ.get("RUNNER_POWER_READONLY") == "1"
        return cfg


def check_profile(profile: dict[str, float], gpus: list[nvml.Gpu]) -> None:
    """Every UUID is on this host and every value within its GPU's NVML constraints."""
    by_uuid = {g.uuid: g for g in gpus}
    for uuid, watts in profile.items():
        gpu = by_uuid.get(uuid)
        if gpu is None:
            raise PowerError(f"GPU {uuid} is not on this host (it has {', '.join(by_uuid) or 'no GPUs'})")
        if not gpu.power_min_w <= watts <= gpu.power_max_w:
            raise PowerError(f"{watts:g} W for GPU {uuid} ({gpu.name}) is outside its allowed range "
                             f"{gpu.power_min_w:g}-{gpu.power_max_w:g} W")


def apply_profile(profile: dict[str, float], readonly: bool = False) -> dict[str, float]:
    """Set each limit that differs, then read every enforced limit back; returns what is enforced."""
    enforced = {}
    for uuid, watts in profile.items():
        now = nvml.enforced_limit_w(uuid)
        if not readonly and abs(now - watts) > TOLERANCE_W:
            try:
                nvml.set_power_limit(uuid, watts)
            except nvml.pynvml.NVMLError as err:
                raise PowerError(f"setting {watts:g} W on GPU {uuid} failed: {err}") from None
            now = nvml.enforced_limit_w(uuid)
        enforced[uuid] = now
    if not readonly:
        wrong = {u: w for u, w in enforced.items() if abs(w - profile[u]) > TOLERANCE_W}
        if wrong:
            raise PowerError("enforced limits differ from the plan: " + ", ".join(
                f"{u} is at {w:g} W, wanted {profile[u]:g} W" for u, w in wrong.items()))
    return enforced


def apply_named_profile(name: str) -> dict[str, float]:
    """Enforce the standing or session profile of /etc/gpu-runner/power.json on this host's GPUs, read back."""
    config = PowerConfig.load()
    profile = {"standing": config.standing_w, "session": config.session_w}[name]
    with nvml.nvml():
        check_profile(profile, nvml.list_gpus())
        return apply_profile(profile, readonly=config.readonly)
