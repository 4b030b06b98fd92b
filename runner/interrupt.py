"""Ctrl-C while a session is followed: the first asks every host to stop, the second leaves.

The first Ctrl-C does not break off the session playbook: a thread asks each host to stop (checkpoint, then
restore) while the playbook goes on following, so the outcome the hosts report is the one the ledger records
and the exit code says (a host that finished first says succeeded). A host still being staged has no session
folder to take the request yet; it is asked again until it takes it, and its supervisor honours the request
before it changes anything. A second Ctrl-C stops following: the hosts finish the stop on their own.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

from runner.host import answers
from runner.inventory import Inventory
from runner.playbook import host_answers

CTRL_C = "Ctrl-C on the controller"  # the cause each host records and the summary prints
RETRY_S = 3.0  # a host not staged yet: ask again after this long


class Interrupt:
    """Catches Ctrl-C (SIGINT) for the life of one followed session."""

    def __init__(self, inventory: Inventory, hosts: list[str], session_id: str, console: Console,
                 latest: Callable[[], dict[str, dict]]):
        self.inventory, self.hosts, self.session_id, self.console = inventory, hosts, session_id, console
        self.latest = latest  # each host's newest status.json as the playbook reported it
        self.requested = threading.Event()
        self.playbook_done = threading.Event()
        self.reached: set[str] = set()  # hosts that took the stop request
        self.thread: threading.Thread | None = None
        self.left = False

    @contextmanager
    def caught(self) -> Iterator[Interrupt]:
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield self
        finally:
            self.playbook_done.set()
            signal.signal(signal.SIGINT, previous)
            if self.thread and not self.left:
                self.thread.join(timeout=300)  # a stop playbook in flight ends with its attempt

    def _on_sigint(self, _signum, _frame) -> None:
        if self.playbook_done.is_set():
            self.console.print("Ctrl-C: the session has already ended; recording how.", markup=False)
            return
        if self.requested.is_set():
            raise KeyboardInterrupt  # the second: stop following
        self.requested.set()
        self.thread = threading.Thread(target=self._stop_hosts, daemon=True)
        self.thread.start()

    def ended(self, host: str) -> str | None:
        """The host's outcome if its session has ended, as last reported."""
        outcome = self.latest().get(host, {}).get("outcome")
        return outcome if outcome not in (None, "running") else None

    def _stop_hosts(self) -> None:
        self.console.print(f"Ctrl-C: stopping session {self.session_id} (checkpoint, then restore); Ctrl-C again "
                           "stops following and leaves the hosts to finish the stop", markup=False)
        pending = []
        for host in self.hosts:
            outcome = self.ended(host)
            if outcome:
                self.console.print(f"{host}: had already ended ({outcome}); nothing to stop", markup=False)
            else:
                pending.append(host)
        extravars = {"train_session_id": self.session_id, "train_session_action": "stop",
                     "train_session_stop_reason": CTRL_C}
        while pending and not self.playbook_done.is_set():
            took, _ = host_answers("session", self.inventory, pending, (answers.STOP,), extravars,
                                   raise_on_failure=False)
            self.reached.update(took)
            for host in took:
                self.console.print(f"{host}: stop requested; it checkpoints, then restores", markup=False)
            pending = [h for h in pending if h not in took and not self.ended(h)]
            if pending:
                self.playbook_done.wait(RETRY_S)

    def leave(self) -> str:
        """What the second Ctrl-C leaves behind, in one line."""
        self.left = True
        missed = [h for h in self.hosts if h not in self.reached and not self.ended(h)]
        if missed:
            return (f"Left session {self.session_id}; the stop has not reached {', '.join(missed)}: "
                    f"'runner stop {self.session_id}' stops it, 'runner status {self.session_id}' shows it.")
        return (f"Left session {self.session_id} stopping on its own (checkpoint, then restore); "
                f"'runner status {self.session_id}' shows how it ends.")
