"""The results a session sends back to the controller, packed in a tarball of the session folder's files."""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

from runner.host import session_files as files

# What comes back to the controller; 'all' adds checkpoints and the rest of output/
RESULT_FILES = (files.STATUS, files.METRICS, files.TELEMETRY, files.TRAIN_LOG, files.SUPERVISOR_LOG, files.JOB,
                "output/samples.md", "output/samples.jsonl")  # the trainer writes only output/; they land beside


def pack(session_dir: Path, what: str) -> Path:
    """A tarball of its own for each caller: a stopping `runner stop` and the still-attached `runner train` may
    fetch at the same moment, and one shared name had the second pack rewrite the file the first was fetching."""
    fd, name = tempfile.mkstemp(prefix="results-", suffix=".tar.gz", dir=session_dir)
    path = Path(name)
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name in RESULT_FILES:
            if (session_dir / name).exists():
                tar.add(session_dir / name, arcname=Path(name).name)
        if what == "adapter" and (session_dir / "output" / "adapter").exists():
            tar.add(session_dir / "output" / "adapter", arcname="adapter")
        elif what == "all" and (session_dir / "output").exists():
            tar.add(session_dir / "output", arcname="output")
    return path
