"""Host answers and refusals: written by runner.host.answers, found by their tag, never by the task's name."""

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO
from rich.console import Console

from runner.commands import serve as serve_command
from runner.errors import EXIT_FAILED, EXIT_REFUSED
from runner.events import tagged_answer
from runner.host import answers
from runner.playbook import Run, failure_text
from runner.progress import host_status


def host(*args: str, stdin: str = "{}") -> subprocess.CompletedProcess:
    """`python -m runner.host ARGS` as a playbook task runs it."""
    return subprocess.run([sys.executable, "-m", "runner.host", *args], input=stdin, capture_output=True, text=True,
                          timeout=120)


def ok_event(task: str, stdout: str = "", msg=None, event: str = "runner_on_ok", host_name: str = "gpu1") -> dict:
    """An ansible-runner event as run_playbook hands it on: a task of HOST ended with this result."""
    res = {"changed": False, "stdout": stdout, "stdout_lines": stdout.splitlines(), "rc": 0}
    if msg is not None:
        res = {"msg": msg, "_ansible_verbose_always": True}
    return {"event": event, "event_data": {"host": host_name, "task": task, "res": res}}


@pytest.fixture
def session_dir(tmp_path) -> Path:
    session = tmp_path / "root" / "sessions" / "S1"
    session.mkdir(parents=True)
    (session / "status.json").write_text(json.dumps({"outcome": "succeeded", "phase": "train", "step": 7}))
    return session


def test_a_renamed_task_answers_the_same(session_dir):
    """What the CLI reads of a host comes from the answer's tag: the task that ran the command may be called
    anything (the session playbook's, the train playbook's follow, a rename) and the answer is the same."""
    printed = host("status", str(session_dir))
    assert printed.returncode == 0, printed.stderr
    found = {task: tagged_answer(ok_event(task, printed.stdout), (answers.STATUS,))
             for task in ("Read the session status", "Follow the session", "Ask the host how the session went")}
    expected = ("gpu1", {"outcome": "succeeded", "phase": "train", "step": 7, "alive": False})
    assert list(found.values()) == [expected] * 3
    assert host_status(ok_event("Renamed follow", printed.stdout, event="runner_retry"))[1]["step"] == 7


def test_only_an_answer_of_the_kind_asked_for_is_taken(session_dir):
    """Other lines a command prints (logs, untagged JSON, another command's answer) are passed over; the last
    answer of the kind wins; a failed task or one without an answer gives none."""
    ready = host("ready", str(session_dir)).stdout
    assert tagged_answer(ok_event("t", ready), (answers.STATUS,)) is None  # the barrier's is not the follow's
    assert host_status(ok_event("t", ready))[1]["outcome"] == "succeeded"  # progress reads both
    noisy = "\n".join(["loading...", '{"outcome": "failed"}', "{not json", answers.document(answers.LOG, {"n": 1}),
                       answers.document(answers.LOG, {"n": 2}), "done"])
    assert tagged_answer(ok_event("t", noisy), (answers.LOG,)) == ("gpu1", {"n": 2})
    assert tagged_answer(ok_event("t", noisy, event="runner_on_failed"), (answers.LOG,)) is None
    assert tagged_answer(ok_event("t", '{"outcome": "failed"}'), (answers.STATUS,)) is None
    assert tagged_answer(ok_event("t", msg="All items completed"), (answers.STATUS,)) is None


def test_a_debug_message_answers_by_its_tag():
    """playbooks/hosts.yml answers with a debug task's msg, tagged in the YAML as REPORT is."""
    playbook = (REPO / "playbooks" / "hosts.yml").read_text()
    assert f"gpu_runner: {answers.REPORT}\n" in playbook
    report = {"gpu_runner": answers.REPORT, "gpus": [], "nvml": "no NVIDIA driver"}
    assert tagged_answer(ok_event("Report", msg=report), (answers.REPORT,)) == ("gpu1", {"gpus": [],
                                                                                         "nvml": "no NVIDIA driver"})
    assert tagged_answer(ok_event("Report", msg={**report, "gpu_runner": "probe"}), (answers.REPORT,)) is None


def test_an_answer_cannot_hide_its_tag():
    with pytest.raises(ValueError, match="gpu_runner"):
        answers.document(answers.STATUS, {"gpu_runner": "x"})


def refusal_of(done: subprocess.CompletedProcess) -> str:
    """The one line a refused host command prints, as the controller reads it off the failed task."""
    assert done.returncode == EXIT_REFUSED, done.stdout + done.stderr
    assert len(done.stdout.splitlines()) == 1, done.stdout
    line = failure_text({"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr})
    assert line == done.stdout.strip()
    return line


def test_reserving_a_busy_host_is_refused_in_one_line(tmp_path):
    first = host("reserve", str(tmp_path), "S1")
    assert first.returncode == 0 and json.loads(first.stdout) == {"gpu_runner": "reserve", "reserved": "S1"}
    line = refusal_of(host("reserve", str(tmp_path), "S2"))
    assert re.fullmatch(r"refused: session S1 is being staged since [-0-9: ]+", line), line
    assert answers.refused(line) == line.removeprefix("refused: ")


@pytest.mark.parametrize(("args", "stdin", "why"), [
    (("serve", "ROOT", "upgrade"), "{}", "unknown serve action upgrade: apply, list or revert"),
    (("serve", "ROOT", "apply"), '{"session": "S9"}', "no session S9 on this host (looked in ROOT/sessions)"),
], ids=["unknown action", "no such session"])
def test_serve_refusals_are_one_line_and_exit_3_on_the_control_side_too(tmp_path, monkeypatch, args, stdin, why):
    root = str(tmp_path)
    line = refusal_of(host(*(root if a == "ROOT" else a for a in args), stdin=stdin))
    assert line == f"refused: {why.replace('ROOT', root)}"
    said = io.StringIO()
    monkeypatch.setattr(serve_command, "err", Console(file=said, width=500))
    assert serve_command.report_failures(Run("failed", {}, tmp_path, {"gpu1": line}), {}) == EXIT_REFUSED
    assert said.getvalue() == f"gpu1: {line}\n"
    failed = Run("failed", {}, tmp_path, {"gpu1": line, "gpu2": "failed: the health gate timed out"})
    assert serve_command.report_failures(failed, {}) == EXIT_FAILED  # a refusal beside a failure


def test_refusals_the_playbooks_write_read_as_refusals():
    """The Ansible tasks that refuse (a held host, a multi-node job that lost a host or was not ready) spell the
    prefix the controller and the supervisor read through answers.refused."""
    written = []
    for path in [*REPO.glob("playbooks/*.yml"), *REPO.glob("roles/*/tasks/*.yml")]:
        written += re.findall(r"[Rr]efused\s*:\s*\S*", path.read_text())
    assert len(written) >= 3
    assert all(answers.refused(text) is not None for text in written), written
