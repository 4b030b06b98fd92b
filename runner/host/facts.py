"""What a host is, for the controller's probe: its GPUs (NVML), the session lock's holder, systemd and the
session unit, and the training root as an absolute path."""

from __future__ import annotations

from pathlib import Path

from runner.host import inference, lock, nvml
from runner.host import session_files as files

SESSION_UNIT = "/etc/systemd/system/gpu-runner-session@.service"  # installed by setup


def probe(training_root: Path) -> dict:
    facts: dict = {"gpus": [], "nvml": "ok", "systemd": inference.has_systemd(),
                   "training_root": str(training_root),  # absolute, for Ansible modules that do not expand ~
                   "session_unit": Path(SESSION_UNIT).exists(),
                   "lock_holder": lock.current_holder(training_root / files.LOCK)}
    try:
        with nvml.nvml():
            facts["gpus"] = [g.as_dict() for g in nvml.list_gpus()]
    except nvml.NvmlUnavailable as why:
        facts["nvml"] = str(why)
    return facts
