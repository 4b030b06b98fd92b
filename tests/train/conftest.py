"""Fixtures for trainer tests: configs for the tiny model (tests/conftest.py builds it) and CPU settings."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO_DATA = REPO / "examples" / "data" / "demo.jsonl"

os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models train several times faster on one thread
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def restored_signal_handlers():
    """Training in-process (run_session) installs the trainer's SIGTERM/SIGINT handlers: pytest's come back after,
    so Ctrl-C still ends the test run."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def write_config(tmp_path: Path, tiny_model: Path):
    """Write a trainer config for the tiny model; keyword overrides go into "train" unless top-level."""

    def write(train: dict | None = None, **top: object) -> Path:
        cfg = {
            "model": str(tiny_model),
            "dataset": str(DEMO_DATA),
            "lora": {"rank": 8, "alpha": 16, "dropout": 0.0},
            "train": {
                "max_steps": 6,
                "learning_rate": 0.005,
                "batch_size": 2,
                "grad_accum": 2,
                "max_seq_len": 128,
                "save_steps": 2,
                **(train or {}),
            },
            "output_dir": str(tmp_path / "output"),
            "metrics_path": str(tmp_path / "metrics.jsonl"),
            "stop_file": str(tmp_path / "STOP"),
            **top,
        }
        path = tmp_path / "config.json"
        path.write_text(json.dumps(cfg))
        return path

    return write


@pytest.fixture
def metrics(tmp_path: Path):
    """The metrics.jsonl records written so far, as dicts."""

    def read() -> list[dict]:
        path = tmp_path / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return read
