"""runner power plan's arithmetic and setup's profile checks (the gpu_power role's filters), without hosts."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from runner.commands.power import plan_text

REPO = Path(__file__).resolve().parents[2]
A = [{"uuid": "GPU-a", "name": "NVIDIA GeForce RTX 3090 Ti", "power_min_w": 100.0, "power_max_w": 480.0,
      "power_default_w": 450.0, "power_limit_w": 450.0, "enforced_limit_w": 450.0},
     {"uuid": "GPU-b", "name": "NVIDIA GeForce RTX 4090", "power_min_w": 150.0, "power_max_w": 600.0,
      "power_default_w": 450.0, "power_limit_w": 450.0, "enforced_limit_w": 450.0}]


def filters():
    spec = importlib.util.spec_from_file_location(
        "gpu_power_filters", REPO / "roles" / "gpu_power" / "filter_plugins" / "gpu_power.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seed_box_unlimited_does_not_fit_and_the_plan_says_so():
    text, fits = plan_text("zorac", {"gpus": A, "power": {"psu_w": 1500, "system_w": 200, "margin": 0.9}})
    assert not fits
    assert "worst case 1450 W vs PSU 1500 W x 0.9 margin = 1350 W: DOES NOT FIT" in text
    assert ("highest safe limits: GPU-a (NVIDIA GeForce RTX 3090 Ti): 369 W, "
            "GPU-b (NVIDIA GeForce RTX 4090): 462 W") in text


def test_capped_profile_fits():
    power = {"psu_w": 1500, "standing_w": {"GPU-a": 300, "GPU-b": 350}, "session_w": {"GPU-a": 350, "GPU-b": 350}}
    text, fits = plan_text("zorac", {"gpus": A, "power": power})
    assert fits
    assert "worst case 1100 W" in text and "worst case 1172 W" in text


def test_profile_problems_name_host_gpu_value_and_range():
    problems = filters().gpu_power_problems({"GPU-b": 700, "GPU-x": 300}, A, "zorac", "session")
    assert problems == [
        "zorac: session limit 700 W for GPU GPU-b (NVIDIA GeForce RTX 4090) is outside its allowed range 150-600 W",
        "zorac: session limit for GPU GPU-x: no such GPU on this host (it has GPU-a, GPU-b)"]


def test_budget_and_differing_limits():
    f = filters()
    budget = f.gpu_power_budget(A, {"GPU-a": 300}, 1500)
    assert budget["limits_w"] == {"GPU-a": 300.0, "GPU-b": 450.0}
    assert budget["highest_safe_w"] == {"GPU-a": 369, "GPU-b": 462}
    assert f.gpu_power_differing({"GPU-a": 450.4, "GPU-b": 300}, A) == ["GPU-b"]


def test_setup_plan_hosts_and_preflight_count_a_gpu_the_profile_leaves_out_alike():
    """One rule (runner.psu.profile_limit): a GPU the profile leaves out counts at the higher of its driver default
    and the limit it has now. Here GPU-b was raised to 520 W by hand and the profile names only GPU-a."""
    from runner.commands.hosts import headroom
    from runner.host import nvml, power, preflight
    from runner.host.preflight import Refusal

    gpus = [A[0], {**A[1], "power_limit_w": 520.0, "enforced_limit_w": 520.0}]
    profile, psu_w = {"GPU-a": 300.0}, 1200
    expected = 300 * 650 / 450 + 520 * 600 / 450 + 200  # the transient peaks at 300 W and 520 W, and the system
    by_setup = filters().gpu_power_budget(gpus, profile, psu_w)["total_w"]
    by_hosts = headroom({"gpus": gpus, "power": {"psu_w": psu_w}}, profile).total_w
    text, _ = plan_text("zorac", {"gpus": gpus, "power": {"psu_w": psu_w, "standing_w": profile, "session_w": profile}})
    assert round(by_hosts) == by_setup == round(expected) and f"worst case {round(expected)} W" in text
    objects = [nvml.Gpu(index=i, pci_bus_id=f"0000:0{i}:00.0", compute_capability=(8, 9), memory_total_mib=24576,
                        persistence_mode=True, **g) for i, g in enumerate(gpus)]
    config = power.PowerConfig(psu_w=psu_w, system_w=200, margin=0.9)
    fits = expected <= psu_w * 0.9
    try:
        preflight.check_power_plan(profile, objects, config)
        refused = False
    except Refusal as why:
        refused = f"worst case {round(expected)} W" in str(why)
    assert refused == (not fits) and not fits  # 1,205 W > 1,080 W: the preflight refuses on the same sum
