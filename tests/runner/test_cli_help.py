"""The command's own surface: bare `runner`, --version, and help a user can read."""

import subprocess
import sys
from importlib.metadata import version


def runner(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from runner.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120)


def test_bare_runner_prints_help_and_succeeds():
    for args in ((), ("power",)):
        done = runner(*args)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Usage: runner") and "Commands:" in done.stdout


def test_version():
    done = runner("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"runner (gpu-runner) {version('gpu-runner')}"


def test_help_shows_value_names_not_python_types():
    text = runner("train", "--help").stdout
    assert "<bool>" not in text and "list[str]" not in text
    assert "--set KEY=VALUE" in text and "--resume ID" in text and "--dry-run " in text
