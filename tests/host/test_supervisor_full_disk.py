"""A full disk mid-session reaches the session's outcome as the trainer's own line, not a generic failure."""

import os
import subprocess

import pytest
from simhost import spec

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="power limits and mounting a small tmpfs need root")


@pytest.mark.slow  # a whole session; tests/train/test_no_space.py fills the disk in-process
def test_a_full_disk_is_the_sessions_one_line_error(host):
    session = host.session_dir(spec(train={"max_steps": 12, "save_steps": 2}))
    output = session / "output"
    output.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(output)], check=True)
    try:
        rc, status = host.run(session)
    finally:
        subprocess.run(["umount", str(output)], check=True)
    assert rc == 1 and status["outcome"] == "failed", status
    assert f"no space left on device writing checkpoint 2 in {output}: free space " in status["error"]
    assert status["restore"]["ok"]
