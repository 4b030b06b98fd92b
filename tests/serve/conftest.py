"""Serve tests' fixtures: a tiny LoRA adapter in a finished session's folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from adapters import make_adapter

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model, tmp_path_factory) -> Path:
    return make_adapter(tiny_model, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture
def session_dir(tmp_path, tiny_model, tiny_adapter) -> Path:
    """<root>/sessions/S1 as a finished session leaves it: job.json and output/adapter."""
    folder = tmp_path / "training" / "sessions" / "S1"
    (folder / "output").mkdir(parents=True)
    shutil.copytree(tiny_adapter, folder / "output" / "adapter")
    (folder / "job.json").write_text(json.dumps({"spec": {"method": "lora"}, "paths": {"model": str(tiny_model)}}))
    return folder
