"""The inference server: stop and start its systemd unit, wait for free GPUs, and the health gate.

Healthy means: /health answers 200, /v1/models lists the expected model, and a 1-token
completion succeeds. /health alone is only liveness.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from runner.host import nvml


class InferenceError(Exception):
    """The server could not be stopped, the GPUs stayed busy, or it did not come back healthy."""


def has_systemd() -> bool:
    """systemd is PID 1 here (containers and CI machines may have systemctl without it)."""
    return shutil.which("systemctl") is not None and Path("/run/systemd/system").is_dir()


def systemctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)


def is_active(service: str) -> bool:
    return systemctl("is-active", "--quiet", service).returncode == 0


def stop(service: str) -> None:
    result = systemctl("stop", service)
    if result.returncode != 0:
        raise InferenceError(f"systemctl stop {service} failed: {result.stderr.strip()}")


def start(service: str) -> None:
    result = systemctl("start", service)
    if result.returncode != 0:
        raise InferenceError(f"systemctl start {service} failed: {result.stderr.strip()}")


def wait_gpus_free(uuids: list[str], timeout_s: float, poll_s: float = 0.5) -> None:
    """Until NVML shows no compute process on these GPUs; on timeout name the PIDs that hold them."""
    deadline = time.monotonic() + timeout_s
    while True:
        busy = nvml.busy_gpus(uuids)
        if not busy:
            return
        if time.monotonic() >= deadline:
            held = "; ".join(f"{uuid}: pids {', '.join(str(p['pid']) for p in procs)}"
                             for uuid, procs in busy.items())
            raise InferenceError(f"GPUs still busy after {timeout_s:g} s ({held})")
        time.sleep(poll_s)


def _get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _post(url: str, body: dict, timeout: float = 30) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def check_health(base_url: str, model_name: str | None) -> str | None:
    """One health probe; None when healthy, else what is wrong."""
    base = base_url.rstrip("/")
    try:
        code, _ = _get(f"{base}/health")
        if code != 200:
            return f"/health answered {code}"
        code, body = _get(f"{base}/v1/models")
        if code != 200:
            return f"/v1/models answered {code}"
        served = [m["id"] for m in json.loads(body).get("data", [])]
        if model_name and model_name not in served:
            return f"/v1/models lists {served}, not {model_name}"
        code, body = _post(f"{base}/v1/completions",
                           {"model": model_name or served[0], "prompt": "hello", "max_tokens": 1})
        if code != 200:
            return f"a 1-token completion answered {code}: {body[:200]!r}"
    except (OSError, ValueError, KeyError, IndexError) as err:
        return f"{base} unreachable ({err})"
    return None


def wait_healthy(base_url: str, model_name: str | None, timeout_s: float, poll_s: float = 2) -> float:
    """Poll the health gate until it passes; returns seconds waited or raises with the last problem."""
    started = time.monotonic()
    while True:
        problem = check_health(base_url, model_name)
        if problem is None:
            return time.monotonic() - started
        if time.monotonic() - started >= timeout_s:
            raise InferenceError(f"inference not healthy after {timeout_s:g} s: {problem}")
        time.sleep(poll_s)
