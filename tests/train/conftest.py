"""Fixtures for trainer tests: configs for the tiny model (tests/conftest.py builds it) and CPU settings."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
from launching import finish, launch

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


def trainer_config(folder: Path, tiny_model: Path, train: dict | None = None, **top: object) -> Path:
    """Write FOLDER/config.json for the tiny model (output, metrics and STOP file in FOLDER); keyword overrides go
    into "train" unless top-level."""
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
        "output_dir": str(folder / "output"),
        "metrics_path": str(folder / "metrics.jsonl"),
        "stop_file": str(folder / "STOP"),
        **top,
    }
    path = folder / "config.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture
def write_config(tmp_path: Path, tiny_model: Path):
    """Write a trainer config for the tiny model; keyword overrides go into "train" unless top-level."""

    def write(train: dict | None = None, **top: object) -> Path:
        return trainer_config(tmp_path, tiny_model, train, **top)

    return write


# Runs several tests only read, each started once per test session
@pytest.fixture(scope="session")
def two_step_run(tmp_path_factory, tiny_model: Path) -> Path:
    """The folder of one finished 2-step run (samples off): its config.json, metrics.jsonl and output/."""
    folder = tmp_path_factory.mktemp("two-step-run")
    finish(launch(trainer_config(folder, tiny_model, {"max_steps": 2}, samples={"count": 0})))
    return folder


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory, tiny_model: Path) -> Path:
    """The folder of one finished DDP run of two processes: 3 steps, 21 records held out and evaluated at the end, two
    samples, the base named acme/tiny-chat-base."""
    folder = tmp_path_factory.mktemp("two-process-run")
    config = trainer_config(folder, tiny_model, {"max_steps": 3, "save_steps": 100}, eval={"split": 21},
                            base_model_name="acme/tiny-chat-base", samples={"count": 2, "max_new_tokens": 8})
    finish(launch(config, processes=2))
    return folder


@pytest.fixture
def metrics(tmp_path: Path):
    """The metrics.jsonl records written so far, as dicts."""

    def read() -> list[dict]:
        path = tmp_path / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    return read
