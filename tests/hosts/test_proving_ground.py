"""The proving ground is real: booted hosts, SSH and Ansible, simulated GPUs behind NVML, vLLM under systemd.

Run: pytest -m hosts tests/hosts (as root; a first run builds the golden image).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from hosts.plugin import Host, Hosts, run_testhosts

pytestmark = pytest.mark.hosts

# A venv with only nvidia-ml-py. Not the vLLM venv: its path contains "vllm", and the simulator counts
# every process whose command line contains "vllm" as a GPU process.
NVML_PYTHON = "/opt/nvml-venv/bin/python"
NVML_SNAPSHOT = """
import json, pynvml
pynvml.nvmlInit()
gpus = []
for i in range(pynvml.nvmlDeviceGetCount()):
    h = pynvml.nvmlDeviceGetHandleByIndex(i)
    gpus.append({"uuid": pynvml.nvmlDeviceGetUUID(h), "name": pynvml.nvmlDeviceGetName(h),
                 "limit_mw": pynvml.nvmlDeviceGetPowerManagementLimit(h),
                 "default_mw": pynvml.nvmlDeviceGetPowerManagementDefaultLimit(h),
                 "pids": [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(h)]})
print(json.dumps(gpus))
"""


def nvml_gpus(host: Host) -> list[dict]:
    """What NVML reports on the host, one dict per GPU in NVML index order."""
    return json.loads(host.ssh(f"{NVML_PYTHON} -c {shlex.quote(NVML_SNAPSHOT)}").stdout)


def http_json(url: str, body: dict | None = None) -> dict:
    """GET (or POST BODY to) URL on a test host and return the JSON answer."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def vllm_main_pid(host: Host) -> int:
    return int(host.ssh("systemctl show -p MainPID --value vllm").stdout)


def test_hosts_boot_with_systemd_as_pid_1(hosts: Hosts) -> None:
    assert set(hosts) == {"th1", "th2"}
    for host in hosts.values():
        assert host.ssh("cat /proc/1/comm").stdout.strip() == "systemd"
        assert host.ssh("systemctl is-system-running", check=False).stdout.strip() == "running"
        assert (host.root / "etc/hostname").read_text().strip() == host.name


def test_golden_image_is_built_once_and_shared(hosts: Hosts) -> None:
    start = time.monotonic()
    golden = run_testhosts("golden").stdout.strip()
    assert time.monotonic() - start < 10  # cached: no build
    mounts = Path("/proc/mounts").read_text()
    for host in hosts.values():
        assert f"lowerdir={golden}," in mounts and str(host.root) in mounts


def test_hosts_have_no_route_out(hosts: Hosts) -> None:
    for host in hosts.values():
        assert "default" not in host.ssh("ip -4 route").stdout
        assert host.ssh("cat /etc/resolv.conf").stdout.strip() == ""


def test_ansible_reaches_hosts_with_their_vars(hosts: Hosts) -> None:
    bindir = Path(sys.executable).parent
    if not (bindir / "ansible").exists():
        pytest.skip(f"ansible is not installed beside {sys.executable}")
    ping = subprocess.run([bindir / "ansible", "testhosts", "-i", hosts.inventory_path, "-o",
                           "-m", "ansible.builtin.ping"], capture_output=True, text=True, timeout=120)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "th1 | SUCCESS" in ping.stdout and "th2 | SUCCESS" in ping.stdout
    listed = subprocess.run([bindir / "ansible-inventory", "-i", hosts.inventory_path, "--list"],
                            capture_output=True, text=True, check=True, timeout=60)
    hostvars = json.loads(listed.stdout)["_meta"]["hostvars"]
    assert (hostvars["th1"]["gpu_profile"], hostvars["th1"]["psu_w"]) == ("a", 1500)
    assert (hostvars["th2"]["gpu_profile"], hostvars["th2"]["psu_w"]) == ("b", 850)


def test_nvml_lists_the_simulated_gpus(hosts: Hosts) -> None:
    for host, count in ((hosts["th1"], 2), (hosts["th2"], 1)):
        gpus = nvml_gpus(host)
        assert [g["uuid"] for g in gpus] == [g["uuid"] for g in host.gpu_state()["gpus"]]
        assert len(gpus) == count
        assert gpus[-1]["name"] == "NVIDIA GeForce RTX 4090"
    assert "RTX 4090" in hosts["th2"].ssh("nvidia-smi -L").stdout


def test_nvidia_smi_power_limit_reads_back_through_nvml(hosts: Hosts) -> None:
    host = hosts["th2"]
    default_mw = nvml_gpus(host)[0]["default_mw"]
    try:
        host.ssh("nvidia-smi -i 0 -pl 300")
        assert nvml_gpus(host)[0]["limit_mw"] == 300_000
        assert host.gpu_state()["gpus"][0]["power_limit_w"] == 300
    finally:
        host.ssh(f"nvidia-smi -i 0 -pl {default_mw // 1000}")
    assert nvml_gpus(host)[0]["limit_mw"] == default_mw


def test_out_of_range_power_limit_fails_like_the_driver(hosts: Hosts) -> None:
    host = hosts["th2"]
    before = nvml_gpus(host)[0]["limit_mw"]
    result = host.ssh("nvidia-smi -i 0 -pl 50", check=False)
    assert result.returncode != 0
    assert "not a valid power limit" in result.stdout + result.stderr
    assert nvml_gpus(host)[0]["limit_mw"] == before


def test_vllm_serves_the_tiny_model_under_systemd(vllm_host: Host) -> None:
    assert vllm_host.ssh("systemctl is-enabled vllm").stdout.strip() == "enabled"
    pid = vllm_main_pid(vllm_host)
    assert vllm_host.ssh(f"ps -o user= -p {pid}").stdout.strip() == "serve"
    models = http_json(vllm_host.url("/v1/models"))
    assert [m["id"] for m in models["data"]] == ["tiny-chat"]
    done = http_json(vllm_host.url("/v1/completions"),
                     {"model": "tiny-chat", "prompt": "hello", "max_tokens": 4, "temperature": 0})
    assert done["choices"][0]["text"]
    chat = http_json(vllm_host.url("/v1/chat/completions"),
                     {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    assert chat["choices"][0]["message"]["role"] == "assistant"
    # It runs on vLLM's CPU platform: the simulated NVML did not pass for a CUDA GPU.
    assert "device_config=cpu" in vllm_host.ssh("journalctl -b -u vllm --no-pager").stdout


def test_vllm_is_a_compute_process_until_stopped(vllm_host: Host) -> None:
    pid = vllm_main_pid(vllm_host)
    on_gpus = {g["name"]: g["pids"] for g in nvml_gpus(vllm_host)}
    assert pid in on_gpus["NVIDIA GeForce RTX 4090"]  # profile A serves from its 4090
    vllm_host.ssh("systemctl stop vllm")
    assert all(g["pids"] == [] for g in nvml_gpus(vllm_host))
    assert vllm_host.ssh("pgrep -u serve", check=False).returncode == 1  # no process left behind
    assert not vllm_host.vllm_healthy()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(vllm_host.url("/health"), timeout=5)


def test_reboot_brings_host_back_with_default_limits(hosts: Hosts) -> None:
    """Last: th1 comes back as the user's box is, serving (vLLM starts again at boot)."""
    host = hosts["th1"]
    host.ssh("nvidia-smi -i 0 -pl 300")
    assert nvml_gpus(host)[0]["limit_mw"] == 300_000
    host.reboot()
    assert host.ssh("systemctl is-system-running", check=False).stdout.strip() == "running"
    assert all(g["limit_mw"] == g["default_mw"] for g in nvml_gpus(host))
    assert host.ssh("systemctl is-active vllm", check=False).stdout.strip() in {"active", "activating"}
