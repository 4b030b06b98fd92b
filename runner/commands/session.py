"""`runner status`, `runner logs`, `runner stop`, `runner attach`: sessions after they started."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Column, Table

from runner import ledger
from runner.commands.train import follow_session, load_results
from runner.errors import EXIT_OK
from runner.host import answers
from runner.inventory import load_inventory
from runner.playbook import host_answers

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
FOLLOW_POLL_S = 2.0


def host_results(entry: ledger.Entry, action: str, kind: str, extravars: dict | None = None) -> dict[str, dict]:
    """Run one session action on the entry's hosts; each host's answer of KIND (unreachable hosts are left out)."""
    return host_answers("session", load_inventory(entry.inventory), entry.hosts, (kind,),
                        {"train_session_id": entry.id, "train_session_action": action, **(extravars or {})},
                        raise_on_failure=False)[0]


def refresh(entry: ledger.Entry) -> dict[str, dict]:
    """Live state from the hosts; a session whose supervisor is gone without an outcome was interrupted."""
    live = host_results(entry, "status", answers.STATUS)
    for host, status in live.items():
        outcome = status.get("outcome", "running")
        if outcome == "running" and not status.get("alive", True):
            outcome = "interrupted"
        entry.host_outcomes[host] = outcome
    if live:
        entry.outcome = ledger.overall(entry.host_outcomes)
        entry.ended = None if entry.outcome == "running" else entry.ended or time.time()  # a resumed session runs
        ledger.record(entry)
    return live


PROGRESS_FIELDS = ("phase", "step", "total_steps", "loss", "avg_tokens_per_s", "elapsed_s", "eta_s", "error")


def fetched(entry: ledger.Entry) -> dict[str, dict]:
    """The status.json each host's results brought into the run folder (the final word on a finished session)."""
    return {host: status for host, status in load_results(Path(entry.run_dir), entry.hosts).items() if status}


def states(entry: ledger.Entry, asked: bool) -> dict[str, dict]:
    """Each host's state: live from the hosts while the session runs (or when its run folder lacks a host's
    results), else from the run folder, which needs no round trip to the hosts."""
    if entry.outcome != "running":
        known = fetched(entry)
        if len(known) == len(entry.hosts):
            return known
    return {**fetched(entry), **refresh(entry)} if asked or entry.outcome == "running" else {}


def minutes(stamp: str | None) -> str:
    """'2026-12-03 03:16' of the ledger's ISO time ('' for none): the table fits a terminal."""
    return stamp[:16].replace("T", " ") if stamp else ""


def loss_text(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f}"


def progress_fields(state: dict) -> dict:
    """What `status --json` says of a host: outcome, phase, step, loss, pace, restore."""
    return {"outcome": state.get("outcome"), **{k: state[k] for k in PROGRESS_FIELDS if state.get(k) is not None},
            "restore_ok": (state.get("restore") or {}).get("ok")}


def status(session_id: str | None, as_json: bool) -> int:
    entries = [ledger.get(session_id)] if session_id else ledger.sessions()
    live = {entry.id: states(entry, asked=bool(session_id)) for entry in entries}
    if as_json:
        listed = []
        for entry in entries:
            by_host = {host: progress_fields(state) for host, state in live[entry.id].items()}
            first = next(iter(by_host.values()), {})
            listed.append({**entry.public(), **{k: first.get(k) for k in ("step", "total_steps", "loss")},
                           "by_host": by_host, **eval_fields(entry, live[entry.id])})
        out.print_json(json.dumps(listed))
        return EXIT_OK
    table = Table(*(Column(name, no_wrap=True) for name in ("id", "hosts", "outcome", "started", "ended")))
    for entry in entries:
        public = entry.public()
        table.add_row(entry.id, ", ".join(entry.hosts), entry.outcome, minutes(public["started"]),
                      minutes(public["ended"]))
    (out if out.is_terminal else Console(width=200)).print(table)  # piped: whole ids, never folded to 80
    for host, state in live.get(session_id, {}).items():
        restore = state.get("restore", {})
        out.print(f"{host}: {state.get('outcome')} in {state.get('phase')}, step {state.get('step')}/"
                  f"{state.get('total_steps')}, loss {loss_text(state.get('loss'))}, restore "
                  f"{'ok' if restore.get('ok') else restore or 'not yet'}" + eval_words(state), markup=False)
    return EXIT_OK


def eval_fields(entry: ledger.Entry, states: dict[str, dict]) -> dict:
    """Where the job evaluates: eval_loss (latest), best_eval_loss and best_step (the first host's), and each host's
    under eval_by_host, from the hosts' states (live, else fetched into the run folder)."""
    by_host = {host: {k: state.get(k) for k in ("eval_loss", "best_eval_loss", "best_step")}
               for host, state in states.items() if state.get("eval_loss") is not None}
    return {**next(iter(by_host.values())), "eval_by_host": by_host} if by_host else {}


def eval_words(state: dict) -> str:
    """', eval loss 2.31 (best 2.28 at step 40)' where the job evaluates; '' otherwise."""
    if state.get("eval_loss") is None:
        return ""
    return f", eval loss {state['eval_loss']:.4f} (best {state['best_eval_loss']:.4f} at step {state['best_step']})"


def logs(session_id: str, follow: bool) -> int:
    entry = ledger.get(session_id)
    offsets = {h: 0 for h in entry.hosts}
    while True:
        logged = host_results(entry, "log", answers.LOG, {"train_session_log_offsets": offsets})
        for host, answer in logged.items():
            offsets[host] = answer["offset"]
            for line in answer["text"].splitlines():
                out.print(f"{host}: {line}" if len(entry.hosts) > 1 else line, markup=False, highlight=False)
        running = [a for a in logged.values() if a.get("outcome") == "running" and a.get("alive")]
        if not follow or not running:
            return EXIT_OK
        time.sleep(FOLLOW_POLL_S)


def stop(session_id: str) -> int:
    entry = ledger.get(session_id)
    live = refresh(entry)
    if set(live) == set(entry.hosts) and all(s.get("outcome", "running") != "running" for s in live.values()):
        ended = ", ".join(f"{host} {state['outcome']}" for host, state in live.items())
        hint = f"; 'runner train --resume {entry.id}' continues it" if entry.outcome == "interrupted" else ""
        err.print(f"session {entry.id} has already ended ({ended}); nothing to stop{hint}.", markup=False)
        return EXIT_OK
    host_results(entry, "stop", answers.STOP)
    err.print(f"stop requested on {', '.join(entry.hosts)}; following until restored", markup=False)
    return follow_session(entry, load_inventory(entry.inventory), attach=True)


def attach(session_id: str) -> int:
    entry = ledger.get(session_id)
    return follow_session(entry, load_inventory(entry.inventory), attach=True)
