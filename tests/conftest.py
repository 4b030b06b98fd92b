"""Shared fixtures: the tiny model, an isolated home for sessions, and the test hosts plugin."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "examples" / "models" / "tiny-chat"

# The proving ground (nspawn hosts, simulated GPUs, real vLLM) registers its fixtures here.
# Optional: the GPU machines run `pytest -m gpu` without Ansible installed.
HOST_PLUGINS = importlib.util.find_spec("hosts.plugin") and importlib.util.find_spec("ansible_runner")
pytest_plugins = ["hosts.plugin", "provisioning"] if HOST_PLUGINS else []


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The demo's tiny chat model (make demo builds it; built here if missing)."""
    if not (TINY / "config.json").exists():
        subprocess.run([sys.executable, str(REPO / "examples" / "make_tiny_model.py"), str(TINY)], check=True)
    return TINY


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A throw-away HOME (so ~/training is private to the test) and data dir; cwd is that HOME."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("RUNNER_DATA_DIR", str(home / "data"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.chdir(home)
    return home
