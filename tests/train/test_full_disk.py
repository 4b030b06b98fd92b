"""A disk that fills up mid-run: the partial checkpoint goes and the trainer ends with one clear line.

The output folder is a real 64 KiB tmpfs (mounting needs root), far too small for a checkpoint of the
tiny model; the model, data and metrics stay on the normal disk.
"""

import os
import subprocess

import pytest
from launching import launch

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs as the full disk needs root")


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.slow  # a trainer process; test_supervisor_full_disk covers a full disk in the fast tier
def test_a_full_disk_ends_with_one_line_and_no_partial_checkpoint(write_config, metrics, small_disk):
    output = small_disk / "output"
    proc = launch(write_config({"max_steps": 6, "save_steps": 2}, output_dir=str(output)))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out[-4000:]
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"Error: no space left on device writing checkpoint 2 in {output}: free space "), last
    assert "MiB" in last and "Traceback" not in out
    assert sorted(p.name for p in output.iterdir()) == []  # no .tmp-checkpoint-2 left behind
    assert [r["step"] for r in metrics() if "step" in r and "event" not in r] == [1, 2]
    assert not any(r.get("event") == "checkpoint" for r in metrics())
