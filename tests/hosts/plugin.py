"""pytest plumbing for the proving ground: Debian test hosts booted by tests/hosts/testhosts.

Register it from tests/conftest.py with `pytest_plugins = ["hosts.plugin"]` (tests/ on pythonpath).
Tests that use these fixtures carry `@pytest.mark.hosts`. Set TH_KEEP_HOSTS=1 to leave the hosts up
after the session (for a look around with `tests/hosts/testhosts ssh th1 ...`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

TESTHOSTS = Path(__file__).with_name("testhosts")
STATE_DIR = Path(os.environ.get("TH_STATE", "/tmp/gpu-runner-testhosts"))
HOST_COUNT = 2  # th1: GPU profile A (2 GPUs, 1500 W PSU), th2: profile B (1 GPU, 850 W)
GPU_STATE_FILE = "/var/lib/gpu-sim/state.json"
VLLM_PORT = 8000
VLLM_MODEL = "tiny-chat"
BOOT_TIMEOUT_S = 1800  # a first run builds the golden image (minutes)
SESSION_WAIT_S = 3600  # another pytest session on this machine may hold the hosts that long


class TestHostError(RuntimeError):
    """A test-host command failed; the message carries its output."""


def run_testhosts(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run tests/hosts/testhosts with ARGS and return its result (raises on failure when check)."""
    result = subprocess.run([str(TESTHOSTS), *args], text=True, capture_output=True, timeout=timeout)
    if check and result.returncode != 0:
        raise TestHostError(f"testhosts {' '.join(args)} exited {result.returncode}:\n"
                            f"{result.stdout[-2000:]}{result.stderr[-4000:]}")
    return result


@dataclass(frozen=True)
class Host:
    """One booted test host, reached over SSH as root."""

    name: str
    address: str
    profile: str  # "a" or "b": which simulated GPUs it has
    root: Path    # its root directory (overlay) on this machine

    def ssh(self, cmd: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run CMD (a shell command line) on the host as root."""
        result = run_testhosts("ssh", self.name, cmd, check=False, timeout=timeout)
        if check and result.returncode != 0:
            raise TestHostError(f"{self.name}: `{cmd}` exited {result.returncode}:\n"
                                f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
        return result

    def reboot(self) -> None:
        """Reboot and return once it is back with systemd done booting (running or degraded)."""
        run_testhosts("reboot", self.name, timeout=180)

    def gpu_state(self) -> dict:
        """The simulated GPUs' state file as the driver sees it now, read through the host."""
        # A query first, so a reboot's pending reset of limits is applied before we read the file.
        out = self.ssh(f"nvidia-smi -L >/dev/null && cat {GPU_STATE_FILE}").stdout
        return json.loads(out)

    def url(self, path: str = "") -> str:
        """The address of PATH on the host's vLLM server, as the controller reaches it."""
        return f"http://{self.address}:{VLLM_PORT}{path}"

    def vllm_healthy(self) -> bool:
        """Whether vLLM's /health answers 200 now."""
        try:
            with urllib.request.urlopen(self.url("/health"), timeout=5) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_vllm(self, timeout_s: float = 120) -> float:
        """Poll /health until 200 (a start takes ~50 s on 2 cores); return the seconds waited."""
        start = time.monotonic()
        while not self.vllm_healthy():
            if time.monotonic() - start > timeout_s:
                log = self.ssh("systemctl status vllm --no-pager; journalctl -u vllm -n 40 --no-pager",
                               check=False).stdout
                raise TimeoutError(f"{self.name}: vLLM not healthy after {timeout_s:.0f} s\n{log}")
            time.sleep(1)
        return time.monotonic() - start

    def serve_vllm(self, timeout_s: float = 120) -> Host:
        """Start vllm.service unless it runs, wait until healthy; reuses a server already up."""
        self.ssh("systemctl start vllm")
        self.wait_vllm(timeout_s)
        return self


class Hosts(Mapping[str, Host]):
    """The booted hosts by name, plus their Ansible inventory."""

    def __init__(self, hosts: dict[str, Host], inventory_path: Path) -> None:
        self._hosts = hosts
        self.inventory_path = inventory_path

    @property
    def inventory(self) -> str:
        """The INI inventory text (group `testhosts`; per host: gpu_profile, psu_w)."""
        return self.inventory_path.read_text()

    def __getitem__(self, name: str) -> Host:
        return self._hosts[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._hosts)

    def __len__(self) -> int:
        return len(self._hosts)


def parse_inventory(text: str) -> dict[str, dict[str, str]]:
    """Host name -> its vars, from the host lines of testhosts' INI inventory."""
    hosts = {}
    for line in text.splitlines():
        if line.startswith("th"):
            name, *pairs = line.split()
            hosts[name] = dict(pair.split("=", 1) for pair in pairs)
    return hosts


def host_root(name: str) -> Path:
    return Path(run_testhosts("root", name).stdout.strip())


def boot_hosts(count: int) -> Hosts:
    """Boot th1..thCOUNT (building the golden image first if its recipe changed)."""
    run_testhosts("up", str(count), timeout=BOOT_TIMEOUT_S)
    inventory_path = STATE_DIR / "inventory.ini"
    found = parse_inventory(inventory_path.read_text())
    hosts = {name: Host(name, hv["ansible_host"], hv["gpu_profile"], host_root(name)) for name, hv in found.items()}
    return Hosts(hosts, inventory_path)


def why_no_hosts() -> str | None:
    """Why test hosts cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "test hosts need root (mounts, network namespaces, systemd-nspawn)"
    for tool in ("systemd-nspawn", "mmdebstrap"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: run tests/hosts/deps.sh"
    return None


@contextmanager
def hosts_to_ourselves(wait_s: float = SESSION_WAIT_S) -> Iterator[None]:
    """Hold the hosts for this pytest session: another session here waits instead of pulling them down."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "session.lock", "w") as lock:  # released when this process ends, however
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TestHostError(f"another pytest session held the test hosts for {wait_s:.0f} s") from None
                time.sleep(2)
        yield


@pytest.fixture(scope="session")
def hosts() -> Iterator[Hosts]:
    """th1 (profile A, vLLM enabled at boot) and th2 (profile B), booted once per session."""
    reason = why_no_hosts()
    if reason:
        pytest.skip(reason)
    with hosts_to_ourselves():
        run_testhosts("down", check=False)  # leftovers of a killed run
        try:
            yield boot_hosts(HOST_COUNT)
        finally:
            if not os.environ.get("TH_KEEP_HOSTS"):
                run_testhosts("down", check=False)


@pytest.fixture
def vllm_host(hosts: Hosts) -> Host:
    """th1 with vLLM healthy; reuses the server started at boot or by an earlier test."""
    return hosts["th1"].serve_vllm()
