"""A full disk while writing a checkpoint or the adapter: the partial folder goes, one clear error stays."""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from pathlib import Path

# A write that failed with less free than this failed for want of space (torch.save's own error on a
# full disk names no cause)
FULL_BELOW_B = 2**20


class NoSpace(Exception):
    """The disk filled up while writing a checkpoint or the adapter; the partial folder is already gone."""


@contextlib.contextmanager
def space_for(what: str, tmp: Path) -> Iterator[None]:
    """Writing `what` into the folder `tmp`: on a full disk remove `tmp` and raise NoSpace naming the free space."""
    try:
        yield
    except Exception as err:
        free_b = shutil.disk_usage(tmp.parent).free
        full = getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err) or free_b < FULL_BELOW_B
        if not full:
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        freed_b = shutil.disk_usage(tmp.parent).free
        raise NoSpace(f"no space left on device writing {what} in {tmp.parent}: free space {free_b / 2**20:.1f} MiB "
                      f"({freed_b / 2**20:.1f} MiB after removing the partial {tmp.name}); free some space and "
                      "resume (runner train --resume ID)") from None
