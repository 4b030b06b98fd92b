"""train.log: the trainer's own words when it fails, for the one line the user sees."""

from __future__ import annotations

import re
from pathlib import Path

# 'Error: ...' (the trainer's one-line errors) or an exception line: 'ValueError: ...', 'torch.OutOfMemoryError: ...'
ERROR_LINE = re.compile(r"^(Error: .+|[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)(: .*)?)$")
# The launchers' own lines after a child failed say only that it failed
LAUNCHER_NOISE = ("CalledProcessError", "ChildFailedError", "returned non-zero exit status")
TAIL_BYTES = 64 * 1024
MAX_CHARS = 300


def trainer_error_line(log: Path) -> str | None:
    """The last error line the trainer wrote (not the launcher's), shortened; None when there is none."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    lines = [line.strip() for line in text.splitlines()]
    found = [line for line in lines if ERROR_LINE.match(line) and not any(n in line for n in LAUNCHER_NOISE)
             and not line.endswith("Traceback (most recent call last):")]  # a wrapped child's traceback follows
    if not found:
        return None
    line = found[-1].removeprefix("Error: ")
    return line if len(line) <= MAX_CHARS else line[: MAX_CHARS - 3] + "..."
