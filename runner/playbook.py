"""run_playbook(): the one caller of ansible_runner."""

from __future__ import annotations

import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ansible_runner

from runner.errors import RunnerError
from runner.events import tagged_answer
from runner.inventory import Inventory
from runner.paths import REPO_ROOT, data_dir

EventFn = Callable[[dict], None]
interrupted = threading.Event()
# ansible-runner writes ansible-playbook's whole environment into artifacts/<id>/command; these names
# never reach it (a token Ansible needs comes from Vault or, like HF_TOKEN for a session, a 0600 file)
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY")
PATH_NAME = re.compile(r"_(FILE|PATH|DIR)$")  # ANSIBLE_VAULT_PASSWORD_FILE names a file, not a secret


def without_secrets(env: dict[str, str]) -> dict[str, str]:
    """The environment minus variables whose names say they hold a secret."""
    return {k: v for k, v in env.items() if not SECRET_NAME.search(k.upper()) or PATH_NAME.search(k.upper())}


class PlaybookFailed(RunnerError):
    def __init__(self, name: str, failures: dict[str, str], artifacts: Path):
        self.failures = failures
        detail = "; ".join(f"{host}: {msg}" for host, msg in failures.items()) or "see the log"
        super().__init__(f"{name} failed on {', '.join(failures) or 'a host'}: {detail} "
                         f"(full log: {artifacts})")


@dataclass
class Run:
    status: str
    stats: dict
    artifacts: Path
    failures: dict[str, str] = field(default_factory=dict)

    def changed(self, host: str | None = None) -> int:
        counts = self.stats.get("changed", {})
        return counts.get(host, 0) if host else sum(counts.values())


def failure_text(res: dict) -> str:
    """What a failed task says: a command's own last line (a refusal: runner.host.answers.refused), else Ansible's
    message."""
    for stream in ("stdout", "stderr"):
        lines = [line for line in str(res.get(stream) or "").splitlines() if line.strip()]
        if "rc" in res and lines:
            return lines[-1].strip()
    return str(res.get("msg") or "failed").strip()


def last_line(result) -> str:
    """The last non-empty line ansible printed, for failures that have no host event."""
    try:
        lines = [line.strip() for line in result.stdout.read().splitlines() if line.strip()]
    except (OSError, AttributeError):
        return ""
    return lines[-1] if lines else ""


def new_run_dir(name: str) -> Path:
    path = data_dir() / "ansible" / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True)
    return path


def run_playbook(name: str, inventory: Inventory, hosts: list[str], extravars: dict | None = None,
                 on_event: EventFn | None = None, check: bool = False, raise_on_failure: bool = True,
                 secret_files: tuple[str, ...] = (), tags: tuple[str, ...] = ()) -> Run:
    """Run playbooks/<name>.yml against `hosts`; failures become one-line PlaybookFailed errors.
    `secret_files` (a token handed over as a file) are removed when ansible-playbook ends, even after a kill -9."""
    data = new_run_dir(name)
    failures: dict[str, str] = {}

    def handle(event: dict) -> bool:
        if event.get("event") in ("runner_on_failed", "runner_on_unreachable"):
            ev = event.get("event_data", {})
            if not ev.get("ignore_errors"):
                res = ev.get("res", {})
                failures[ev.get("host", "?")] = failure_text(res)
        if on_event:
            on_event(event)
        return True

    cmdline = " ".join([*(["--check", "--diff"] if check else []), *(["--tags", ",".join(tags)] if tags else [])])
    bin_dir = os.path.dirname(sys.executable)  # ansible-playbook lives beside the interpreter running us
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")
    result = ansible_runner.interface.init_runner(
        private_data_dir=str(data), project_dir=str(REPO_ROOT), playbook=str(REPO_ROOT / "playbooks" / f"{name}.yml"),
        inventory=inventory.source, limit=",".join(hosts), extravars=extravars or {}, cmdline=cmdline or None,
        event_handler=handle, cancel_callback=interrupted.is_set, quiet=True,
        envvars={"ANSIBLE_CONFIG": str(REPO_ROOT / "ansible.cfg")})
    result.config.env = without_secrets(result.config.env)
    # ansible-playbook and its workers end with us, even after a kill -9 (runner.guard's parent-death signal)
    removes = [arg for path in secret_files for arg in ("--remove", path)]
    result.config.command = [sys.executable, "-m", "runner.guard", str(os.getpid()), *removes, "--",
                             *result.config.command]
    result.run()
    if result.status != "successful" and not failures:
        failures["controller"] = last_line(result) or f"ansible-playbook ended {result.status}"
    run = Run(result.status, result.stats or {}, data, failures)
    if raise_on_failure and result.status != "successful":
        raise PlaybookFailed(name, failures, data)
    return run


def host_answers(name: str, inventory: Inventory, hosts: list[str], kinds: tuple[str, ...],
                 extravars: dict | None = None, raise_on_failure: bool = True) -> tuple[dict[str, dict], Run]:
    """Run playbooks/<name>.yml and keep each host's last answer tagged with one of KINDS (runner.host.answers),
    without its tag. Hosts that failed or were unreachable have none."""
    found: dict[str, dict] = {}

    def keep(event: dict) -> None:
        if answer := tagged_answer(event, kinds):
            found[answer[0]] = answer[1]

    run = run_playbook(name, inventory, hosts, extravars, on_event=keep, raise_on_failure=raise_on_failure)
    return found, run
