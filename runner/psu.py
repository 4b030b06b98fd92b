"""PSU budget: will the GPUs' transient peaks at these limits, plus the rest of the system, fit the PSU?

The seed's arithmetic, generalised: a limit caps the 1 s average, not the spikes, so each GPU
is counted at its transient peak for the chosen limit. One home for the rule, used by setup (the gpu_power
filter), `runner power plan`, `runner hosts` and the session preflight: it imports nothing from runner, so the
control side, Ansible's filter and the host can all use it.
"""

from __future__ import annotations

from dataclasses import dataclass

# Transient peak as a multiple of the power limit, by GPU model (matched as a substring of the
# NVML name, most specific first). The seed: a 4090 spikes to ~600 W at its 450 W limit, a
# 3090 Ti to ~650 W at 450 W. Unknown models get the conservative 1.6.
PEAK_FACTORS: tuple[tuple[str, float], ...] = (
    ("RTX 3090 Ti", 650 / 450),
    ("RTX 3090", 1.55),
    ("RTX 4090", 600 / 450),
    ("RTX 4080", 1.35),
    ("RTX 5090", 1.35),
    ("A100", 1.2),
    ("H100", 1.2),
    ("H200", 1.2),
)
DEFAULT_PEAK_FACTOR = 1.6
DEFAULT_SYSTEM_W = 200
DEFAULT_MARGIN = 0.9


def peak_factor(gpu_name: str) -> float:
    for model, factor in PEAK_FACTORS:
        if model in gpu_name:
            return factor
    return DEFAULT_PEAK_FACTOR


@dataclass(frozen=True)
class Budget:
    lines: list[tuple[str, float, float]]  # (gpu name, limit W, transient peak W)
    system_w: float
    psu_w: float
    margin: float

    @property
    def total_w(self) -> float:
        return sum(peak for _, _, peak in self.lines) + self.system_w

    @property
    def allowed_w(self) -> float:
        return self.psu_w * self.margin

    @property
    def fits(self) -> bool:
        return self.total_w <= self.allowed_w

    def table(self) -> str:
        """The arithmetic as the seed writes it."""
        rows = [f"{name} at {limit:.0f} W: transient peak ~{peak:.0f} W" for name, limit, peak in self.lines]
        rows.append(f"CPU + system: {self.system_w:.0f} W")
        rows.append(f"worst case {self.total_w:.0f} W vs PSU {self.psu_w:.0f} W x {self.margin:g} margin "
                    f"= {self.allowed_w:.0f} W: {'fits' if self.fits else 'DOES NOT FIT'}")
        return "\n".join(rows)


def _field(gpu, name: str):
    return gpu[name] if isinstance(gpu, dict) else getattr(gpu, name)


def profile_limit(gpu, profile: dict) -> float:
    """The limit GPU runs at under PROFILE (UUID -> W). One the profile leaves out counts at the higher of its
    driver default (what it comes back at after a reboot) and the limit it has now: the worst case either way."""
    if _field(gpu, "uuid") in profile:
        return float(profile[_field(gpu, "uuid")])
    return float(max(_field(gpu, "power_default_w") or 0, _field(gpu, "power_limit_w") or 0))


def profile_budget(gpus: list, profile: dict, psu_w: float, system_w: float = DEFAULT_SYSTEM_W,
                   margin: float = DEFAULT_MARGIN) -> Budget:
    """The budget of PROFILE on these GPUs (NVML facts as dicts or objects with name, uuid and limits)."""
    limits = [(_field(g, "name"), profile_limit(g, profile or {})) for g in gpus]
    return budget(limits, psu_w, system_w, margin)


def budget(gpus: list[tuple[str, float]], psu_w: float, system_w: float = DEFAULT_SYSTEM_W,
           margin: float = DEFAULT_MARGIN) -> Budget:
    """Budget for (gpu name, limit W) pairs."""
    lines = [(name, limit, limit * peak_factor(name)) for name, limit in gpus]
    return Budget(lines, system_w, psu_w, margin)


def highest_safe_limits(gpus: list[tuple[str, float, float]], psu_w: float,
                        system_w: float = DEFAULT_SYSTEM_W, margin: float = DEFAULT_MARGIN) -> list[float] | None:
    """The highest limits (one fraction of each GPU's max, within its min) that fit, or None.

    `gpus` holds (name, min W, max W); the answer keeps every GPU at the same share of its range top.
    """
    available = psu_w * margin - system_w
    peak_at_max = sum(mx * peak_factor(name) for name, _, mx in gpus)
    if peak_at_max <= 0:
        return None
    share = min(1.0, available / peak_at_max)
    limits = [max(mn, int(mx * share)) for _, mn, mx in gpus]
    fits = budget([(n, lim) for (n, _, _), lim in zip(gpus, limits, strict=True)], psu_w, system_w, margin).fits
    return limits if fits else None
