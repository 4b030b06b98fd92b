"""testhosts checks its own tools first and names how to get them (a fresh machine said 'mmdebstrap: command
not found' halfway through building the golden image)."""

import os
import subprocess
from pathlib import Path

import pytest

TESTHOSTS = Path(__file__).resolve().parent / "testhosts"


@pytest.mark.skipif(os.geteuid() != 0, reason="testhosts runs as root")
def test_missing_tools_are_named_with_the_fix(tmp_path):
    bin_dir = tmp_path / "bin"  # this machine's PATH, less mmdebstrap
    bin_dir.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        for tool in Path(folder).glob("*") if Path(folder).is_dir() else []:
            if tool.name != "mmdebstrap" and not (bin_dir / tool.name).exists():
                (bin_dir / tool.name).symlink_to(tool)
    for command in ("golden", "up"):
        done = subprocess.run(["bash", str(TESTHOSTS), command, "1"], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PATH": str(bin_dir), "TH_STATE": str(tmp_path / "state")})
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [
            "testhosts: missing mmdebstrap (Debian packages: mmdebstrap): run 'make deps' (or: bash "
            "tests/hosts/deps.sh) as root"], done.stderr
    assert not (tmp_path / "state").exists()
