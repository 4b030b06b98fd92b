"""A file's SHA-256, read in chunks: the adapter card's data digest, the controller's model-folder digests and the
host's served copies all hash files this one way (the trainer's layer, so each of them can import it)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
