"""Multi-node sessions on one host: which interface carries the cluster address, and the wait for GO.

The controller lays the job out (runner/cluster.py) and stages it with this host's `cluster` part (its machine
rank, the first host's address and port, its own address and interface, the processes each machine starts).
The supervisor caps power, stops inference and waits for free GPUs like any session, then reports `ready` and
waits: the controller writes GO in every host's session folder once all of them are ready, or a STOP saying
"refused: <which host was not ready>" when one is not (a refusal as runner/host/answers.py reads it), so
nobody trains unless everyone can.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from runner.host import session_files as files


class ClusterError(Exception):
    """The host cannot take part as configured; says what to change."""


def resolve(address: str) -> str:
    """An IP address for `address` (an IP already, or a name this host resolves)."""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        pass
    try:
        return socket.getaddrinfo(address, None, proto=socket.IPPROTO_TCP)[0][4][0]
    except (socket.gaierror, IndexError):
        raise ClusterError(f"cluster address {address} does not resolve on this host; set "
                           "train_session_cluster_address in the inventory to its IP on the cluster network") from None


def interfaces() -> dict[str, list[str]]:
    """Interface name -> its IP addresses, from `ip -j addr`."""
    try:
        shown = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise ClusterError(f"cannot list network interfaces (ip -j addr show: {err}); install iproute2") from None
    return {link["ifname"]: [a["local"] for a in link.get("addr_info", []) if "local" in a]
            for link in json.loads(shown)}


def interface_for(address: str, wanted: str | None = None) -> str:
    """The interface that holds this host's cluster address (or the one the inventory names, checked)."""
    ip = resolve(address)
    found = interfaces()
    if wanted:
        if wanted not in found:
            raise ClusterError(f"train_session_cluster_interface {wanted} is not on this host (it has "
                               f"{', '.join(found)}); fix train_session_cluster_interface in the inventory")
        return wanted
    for name, addresses in found.items():
        if ip in addresses:
            if name == "lo":
                break
            return name
    raise ClusterError(f"no interface of this host holds its cluster address {ip}; set "
                       "train_session_cluster_address in the inventory to this host's address on the network the "
                       "hosts share (or train_session_cluster_interface)")


def hosts_rendezvous(job: dict) -> bool:
    """Whether this host is machine 0 of a multi-node job: its rendezvous port is guarded, then released."""
    part = job.get("cluster") or {}
    return bool(part) and int(part["machine_rank"]) == 0


def describe(cluster: dict, interface: str) -> str:
    return (f"machine {cluster['machine_rank']} of {cluster['num_machines']}, rendezvous "
            f"{cluster['main_address']}:{cluster['port']}, collectives over {interface}")


def launch_env(interface: str) -> dict[str, str]:
    """Collectives and the rendezvous go over the cluster interface only."""
    return {"NCCL_SOCKET_IFNAME": interface, "GLOO_SOCKET_IFNAME": interface}


def wait_for_go(session_dir: Path, timeout_s: float, stopping: Callable[[], bool], poll_s: float = 0.5) -> bool:
    """True once the controller says GO; False when a stop arrives first (the STOP file may say why).
    Raises TimeoutError after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        if stopping() or (session_dir / files.STOP).exists():
            return False
        if (session_dir / files.GO).exists():
            return True
        if time.monotonic() > deadline:
            raise TimeoutError(f"the other hosts were not all ready within {timeout_s:.0f} s "
                               "(cluster.ready_timeout_s); nobody trained")
        time.sleep(poll_s)
