"""A full disk in-process (the fast tier's check; test_full_disk.py's trainer process and test_supervisor_full_disk.py's
session are the slow tier's): the partial checkpoint goes and one error names the folder and the free space."""

import os
import re

import pytest
from test_full_disk import small_disk  # noqa: F401 - the 64 KiB tmpfs fixture

from runner.train.config import load_config
from runner.train.disk import NoSpace
from runner.train.session import run_session

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs as the full disk needs root")


def test_a_full_disk_raises_one_error_and_leaves_no_partial_checkpoint(write_config, metrics, small_disk):  # noqa: F811
    output = small_disk / "output"
    cfg = load_config(write_config({"max_steps": 6, "save_steps": 2}, output_dir=str(output)))
    with pytest.raises(NoSpace, match=f"^no space left on device writing checkpoint 2 in {re.escape(str(output))}: "):
        run_session(cfg)
    assert sorted(p.name for p in output.iterdir()) == []  # no .tmp-checkpoint-2 left behind
    assert [r["step"] for r in metrics() if "step" in r and "event" not in r] == [1, 2]
