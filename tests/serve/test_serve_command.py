"""`runner serve` refuses bad usage in one line with exit 2, before any host is touched."""

from __future__ import annotations

import pytest
from helpers import run_runner

USAGE = [
    ((), "needs one of: a session ID, --list or --revert"),
    (("--list", "--revert"), "needs one of"),
    (("S1", "--adapter", "--merge"), "exclude each other"),
    (("--list", "--merge"), "go with a session ID"),
    (("no-such-session",), "no session 'no-such-session' in the ledger"),
]


@pytest.mark.parametrize(("args", "message"), USAGE, ids=[m for _, m in USAGE])
def test_bad_usage_is_one_line_and_exit_2(home, args, message):
    result = run_runner("serve", *args, cwd=home)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr
