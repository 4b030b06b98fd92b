"""The simulated host every gpu_sim test drives: its state file, boot id, and helpers (nvml snippets, nvidia-smi)."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
BUILD = HERE / "build"
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
UUID_3090TI = "GPU-3090ti00-0000-4000-8000-000000000001"
UUID_4090 = "GPU-40900000-0000-4000-8000-000000000002"

# Every snippet starts with an initialised pynvml as `n`, handles in `h`, and sets `out`.
PRELUDE = """
import json, pynvml as n
n.nvmlInit()
h = [n.nvmlDeviceGetHandleByIndex(i) for i in range(n.nvmlDeviceGetCount())]
def error(call, *args):
    try:
        call(*args)
    except n.NVMLError as err:
        return type(err).__name__
    return None
"""


@pytest.fixture(scope="module", autouse=True)
def built() -> None:
    subprocess.run(["make", "-s", "-C", str(HERE)], check=True)


class Sim:
    """One simulated host: a private state file and boot id, and helpers to drive it."""

    def __init__(self, root: Path, profile: str) -> None:
        self.state = root / "state.json"
        self.boot_id = root / "boot_id"
        self.boot_id.write_text("boot-1\n")
        self.children: list[subprocess.Popen] = []
        # Patterns unique to this test, so no other process on the machine counts as a GPU process.
        self.token = f"gpusim-{uuid.uuid4().hex[:8]}"
        state = json.loads((HERE / "profiles" / f"{profile}.json").read_text())
        for proc in state["processes"]:
            proc["pattern"] = f"{self.token}-{proc['pattern']}"
        self.write(state)

    def env(self) -> dict[str, str]:
        return {**os.environ, "LD_LIBRARY_PATH": str(BUILD), "GPU_SIM_STATE": str(self.state),
                "GPU_SIM_BOOT_ID_FILE": str(self.boot_id)}

    def read(self) -> dict:
        return json.loads(self.state.read_text())

    def write(self, state: dict) -> None:
        tmp = self.state.with_suffix(".edit")
        tmp.write_text(json.dumps(state))
        tmp.chmod(0o644)
        tmp.replace(self.state)  # atomic, as the README asks of editors

    def force(self, index: int, **values: float) -> None:
        state = self.read()
        state["gpus"][index]["force"].update(values)
        self.write(state)

    def nvml(self, code: str, as_nobody: bool = False):
        """Runs a snippet against the library in a new Python; returns its `out`."""
        script = PRELUDE + textwrap.dedent(code) + "\nprint(json.dumps(out))\n"
        cmd = [*NOBODY] * as_nobody + [sys.executable, "-c", script]
        done = subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=20)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    def smi(self, *args: str, as_nobody: bool = False) -> subprocess.CompletedProcess:
        cmd = [*NOBODY] * as_nobody + [str(BUILD / "nvidia-smi"), *args]
        return subprocess.run(cmd, env=self.env(), capture_output=True, text=True, timeout=20)

    def spawn(self, pattern: str) -> subprocess.Popen:
        """Starts a process whose command line matches the profile's pattern (e.g. "vllm")."""
        sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
        child = subprocess.Popen([*sleeper, f"{self.token}-{pattern}"])
        self.children.append(child)
        return child

    def stop(self, child: subprocess.Popen) -> None:
        child.kill()
        child.wait()


@pytest.fixture
def sim() -> Iterator[Sim]:
    root = Path(tempfile.mkdtemp(prefix="gpu-sim-"))
    root.chmod(0o755)  # readable by the unprivileged user in the permission tests
    host = Sim(root, "a")
    yield host
    for child in host.children:
        host.stop(child)
    shutil.rmtree(root)
