"""Secrets on the controller: the HF token reaches the playbooks as a 0600 file, not the environment.

ansible-runner records its whole environment in its artifact folder; a token left in the environment
would be written there. So it is taken out for the run and handed over as a file deleted afterwards.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from runner.paths import data_dir

TOKEN_ENV = "HF_TOKEN"


@contextlib.contextmanager
def hf_token_file() -> Iterator[str]:
    """The path of a 0600 file holding $HF_TOKEN for the run ('' when none is set)."""
    token = os.environ.pop(TOKEN_ENV, "")
    if not token:
        yield ""
        return
    folder = data_dir() / "secrets"
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=folder)  # mkstemp creates it 0600
    try:
        os.write(fd, token.encode())
        os.close(fd)
        yield path
    finally:
        Path(path).unlink(missing_ok=True)  # runner.guard removes it as ansible-playbook ends, even after a kill -9
        os.environ[TOKEN_ENV] = token
