"""The trainer's systemd unit: what its hardening lets the trainer write covers the caches it is pointed at."""

from pathlib import PurePosixPath

from runner.templates import render


def unit_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_the_compile_cache_outlives_the_session_where_the_trainer_may_write():
    text = render("etc/systemd/system/gpu-runner-trainer@.service.j2", session_unit_trainer_user="trainer",
                  session_unit_trainer_home="/var/lib/gpu-runner/trainer", session_unit_root="/var/lib/gpu-runner",
                  session_unit_python="/var/lib/gpu-runner/venv/bin/python")
    settings = unit_settings(text)
    env = dict(item.split("=", 1) for item in settings["Environment"])
    cache = PurePosixPath(env["TORCHINDUCTOR_CACHE_DIR"])
    writable = [PurePosixPath(p) for value in settings["BindPaths"] + settings["ReadWritePaths"] for p in value.split()]
    assert any(cache.is_relative_to(path) for path in writable), (cache, writable)
    assert settings["PrivateTmp"] == ["yes"] and not cache.is_relative_to("/tmp")  # /tmp goes with the session
