"""Turn ansible-runner events and host status files into progress lines, one per host.

On a TTY the lines update in place; elsewhere a line is printed when a host's progress changes
(at most every few seconds). Progress goes to stderr; results go to stdout.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.text import Text

from runner.events import tagged_answer
from runner.host import answers
from runner.train.mixing import mix_line

# What reports a host's status.json at every retry of its task: following the session, and before that, in a
# multi-node job, waiting until every host is ready
FOLLOWED = (answers.STATUS, answers.READY)
PRINT_EVERY_S = 5.0


def host_status(event: dict, kinds: tuple[str, ...] = FOLLOWED) -> tuple[str, dict] | None:
    """(host, status) from an ansible-runner event (a retry or the end of a task) that carries a status answer
    of KINDS; None for any other event."""
    return tagged_answer(event, kinds, events=("runner_retry", "runner_on_ok"))


# The playbook's long tasks, in the user's words (by the start of the task's name; display only: a renamed task
# just goes unmentioned). Other tasks are quick, or skipped, and are not shown.
TASK_WORDS = (
    ("Probe the host", "probing the host"),
    ("Check the job on the host", "checking the job, model and data on the host"),
    ("Upload local files", "uploading the job's local files"),
    ("Render the accelerate config", "rendering the accelerate config"),
    ("Start the session", "starting the session"),
    ("Restore the host", "restoring the host"),
    ("Pack the results", "packing the results"),
    ("Fetch the results", "fetching the results"),
    ("Drop the staged inputs", "removing old sessions' staged inputs"),
)


def task_started(event: dict) -> tuple[str, str] | None:
    """(host, words) when a host starts one of the playbook's long tasks: what happens before the host's
    status.json exists (probing, uploading, starting the supervisor) and after training (restoring, fetching)."""
    data = event.get("event_data", {})
    if event.get("event") != "runner_on_start" or not data.get("host"):
        return None
    task = data.get("task") or ""
    words = next((words for prefix, words in TASK_WORDS if task.startswith(prefix)), None)
    return (data["host"], words) if words else None


def clock(seconds: float) -> str:
    """'42 s', '3:05', '1:02:09'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_line(host: str, status: dict, task: str | None = None) -> str:
    """'gpu1  train  step 12/30 (40%)  loss 5.83  812 tok/s avg  1:02 in, 1:33 left  GPU0 320 W 65 C' from a
    status.json; before the host has one (and once it has ended), the playbook task it is on."""
    running = status.get("outcome") in (None, "running")
    phase = status.get("phase") if status.get("phase") and running else None
    parts = [host, phase or task or status.get("phase") or "starting"]
    if status.get("step") is not None:
        total = status.get("total_steps")
        share = f" ({100 * status['step'] / total:.0f}%)" if total else ""
        parts.append(f"step {status['step']}/{total or '?'}{share}")
    elif phase == "train":
        parts.append("loading the model and data, sizing the batch" if not status.get("trainer")
                     else "compiling, waiting for the first step")
    if status.get("loss") is not None:
        parts.append(f"loss {status['loss']:.3f}")
    if status.get("eval_loss") is not None:
        parts.append(f"eval {status['eval_loss']:.3f}")
    if status.get("avg_tokens_per_s"):
        parts.append(f"{status['avg_tokens_per_s']:,.0f} tok/s avg")
    elif status.get("tokens_per_s"):
        parts.append(f"{status['tokens_per_s']:,.0f} tok/s")
    if status.get("elapsed_s") is not None and running:
        parts.append(f"{clock(status['elapsed_s'])} in, {clock(status.get('eta_s') or 0)} left")
    for i, gpu in enumerate(status.get("gpus") or []):
        parts.append(f"GPU{i} {gpu.get('power_w', 0):.0f} W {gpu.get('temperature_c') or 0:.0f} C")
    if not running:
        parts.append(status["outcome"])
    return "  ".join(parts)


def phase_lines(host: str, status: dict, shown: set) -> list[str]:
    """Lines for phases that finished since last time, with why a step was skipped."""
    lines = []
    for phase in status.get("phases", []):
        key = (host, phase["name"])
        if phase.get("ended") and key not in shown:
            shown.add(key)
            detail = f": {phase['detail']}" if phase.get("detail") else ""
            lines.append(f"{host}  {phase['name']} {phase['outcome']}{detail}")
    return lines


def data_line(host: str, status: dict) -> str | None:
    """What became of the dataset, from the trainer's start event: records dropped and truncated, never silent."""
    start = status.get("trainer") or {}
    if "examples" not in start:
        return None
    no_response, too_long = start.get("dropped_no_response", 0), start.get("dropped_too_long", 0)
    parts = [f"{host}  data: {start['examples']} examples"]
    if no_response or too_long:
        parts.append(f"dropped {no_response + too_long} ({no_response} without an assistant turn, {too_long} "
                     f"with the response beyond max_seq_len {start.get('max_seq_len')})")
    if start.get("truncated_examples"):
        parts.append(f"{start['truncated_examples']} truncated to max_seq_len")
    if start.get("data_mix"):
        parts.append(f"mix: {mix_line(start['data_mix'])}")
    return "; ".join(parts)


def path_lines(host: str, status: dict) -> list[str]:
    """Which attention and head the trainer runs and why, from its start event; a warning for an unverified model."""
    start = status.get("trainer") or {}
    if "attention" not in start:
        return []
    lines = [
        f"{host}  trainer: attention {start['attention']} ({start.get('attention_reason') or 'set'}); "
        f"head {start.get('head', '?')} ({start.get('head_reason', '')})"
    ]
    if start.get("family_warning"):
        lines.append(f"{host}  warning: {start['family_warning']}")
    return lines


def out_of_memory_lines(host: str, status: dict, shown: int) -> list[str]:
    """The trainer's out-of-memory recoveries after the first `shown`: what it lowered, and that it went on."""
    events = status.get("trainer_out_of_memory") or []
    return [f"{host}  warning: {e.get('message', 'out of GPU memory; continuing with less')}" for e in events[shown:]]


class Progress:
    """Keeps and draws the latest status of each host (from host_status of the playbook's events)."""

    def __init__(self, hosts: list[str], console: Console | None = None):
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.status: dict[str, dict] = {h: {} for h in hosts}
        self.tasks: dict[str, str] = {}
        self.shown_phases: set = set()
        self.last_printed: dict[str, tuple[str, float]] = {}
        self.live: Live | None = None

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.__exit__(*exc)

    def update(self, host: str, status: dict) -> None:
        self.status[host] = status
        for line in phase_lines(host, status, self.shown_phases):
            self.console.print(line, markup=False, highlight=False)
        data = data_line(host, status)
        if data and (host, "data") not in self.shown_phases:
            self.shown_phases.add((host, "data"))
            self.console.print(data, markup=False, highlight=False)
        if (host, "paths") not in self.shown_phases and path_lines(host, status):
            self.shown_phases.add((host, "paths"))
            for line in path_lines(host, status):
                self.console.print(line, markup=False, highlight=False)
        shown = sum(1 for key in self.shown_phases if key[:2] == (host, "oom"))
        for index, line in enumerate(out_of_memory_lines(host, status, shown)):
            self.shown_phases.add((host, "oom", shown + index))
            self.console.print(line, markup=False, highlight=False)
        self._draw(host)

    def task(self, host: str, name: str) -> None:
        """The playbook task HOST is on (shown while its status.json says nothing newer)."""
        if host in self.status:
            self.tasks[host] = name
            self._draw(host)

    def _draw(self, host: str) -> None:
        if self.live:
            self.live.update(self._render())
            return
        line = progress_line(host, self.status[host], self.tasks.get(host))
        previous, at = self.last_printed.get(host, ("", 0.0))
        if line != previous and time.monotonic() - at >= PRINT_EVERY_S:
            self.console.print(line, markup=False, highlight=False)
            self.last_printed[host] = (line, time.monotonic())

    def _render(self) -> Text:
        return Text("\n".join(progress_line(h, s, self.tasks.get(h)) for h, s in self.status.items()))
