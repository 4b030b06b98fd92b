"""The rendezvous port of a multi-node job, reachable over the cluster interface only, and only during the job.

torch's rendezvous store on the first host listens on every interface; while the job trains, an
nftables table drops connections to its port that arrive on any other interface (loopback stays open:
the host's own ranks reach its cluster address over it). The restore removes the table. Without nft
on the host, the port is open on every interface while the job runs, and the session says so.
"""

from __future__ import annotations

import shutil
import subprocess

TABLE = "gpu_runner_rendezvous"


class FirewallError(OSError):
    """nft refused the rule."""


def _nft(*args: str, script: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["nft", *args], input=script, capture_output=True, text=True, check=False)


def available() -> bool:
    return shutil.which("nft") is not None


def guard_rendezvous(port: int, interface: str) -> str:
    """Drop connections to `port` except over `interface` and loopback; says what it did."""
    if not available():
        return f"nftables is not installed: port {port} accepts connections on every interface during the job"
    close_rendezvous()
    script = (f"table inet {TABLE} {{\n"
              f"  chain input {{\n"
              f"    type filter hook input priority filter - 5; policy accept;\n"
              f"    tcp dport {int(port)} iifname != {{ \"lo\", \"{interface}\" }} drop\n"
              f"  }}\n"
              f"}}\n")
    result = _nft("-f", "-", script=script)
    if result.returncode != 0:
        raise FirewallError(f"nft could not limit the rendezvous port {port} to {interface}: {result.stderr.strip()}")
    return f"rendezvous port {port} reachable over {interface} only"


def close_rendezvous() -> str:
    """Remove the table (idempotent)."""
    if not available() or _nft("list", "table", "inet", TABLE).returncode != 0:
        return "no rendezvous rule in place"
    result = _nft("delete", "table", "inet", TABLE)
    if result.returncode != 0:
        raise FirewallError(f"nft could not remove table {TABLE}: {result.stderr.strip()}")
    return f"removed the rendezvous rule (table inet {TABLE})"
