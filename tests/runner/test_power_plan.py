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
