"""Progress a user can plan by: percent, tokens/s over the run, time so far and left; no silent gaps."""

from runner.progress import Progress, clock, progress_line, task_started
from runner.train import metrics


def test_the_line_says_percent_average_speed_and_time_left():
    status = {"phase": "train", "outcome": "running", "step": 12, "total_steps": 40, "loss": 5.83,
              "tokens_per_s": 1613.0, "avg_tokens_per_s": 812.4, "elapsed_s": 62, "eta_s": 145}
    line = progress_line("gpu1", status)
    assert line == "gpu1  train  step 12/40 (30%)  loss 5.830  812 tok/s avg  1:02 in, 2:25 left"
    ended = {**status, "outcome": "succeeded", "step": 40}
    assert progress_line("gpu1", ended).endswith("812 tok/s avg  succeeded")  # no time left once it has ended


def test_no_silent_gaps_before_the_first_step():
    assert progress_line("gpu1", {}, "uploading the job's local files") == "gpu1  uploading the job's local files"
    loading = {"phase": "train", "outcome": "running"}
    assert progress_line("gpu1", loading, "Follow") == "gpu1  train  loading the model and data, sizing the batch"
    started = {**loading, "trainer": {"examples": 198}}
    assert progress_line("gpu1", started) == "gpu1  train  compiling, waiting for the first step"
    def start(task: str) -> dict:
        return {"event": "runner_on_start", "event_data": {"host": "gpu1", "task": task}}

    upload = "Upload local files the host does not have yet (dataset; a model on its first use there)"
    assert task_started(start(upload)) == ("gpu1", "uploading the job's local files")
    for quiet in ("Follow the session", "Refuse the multi-node job when a host dropped out", "Keep the facts"):
        assert task_started(start(quiet)) is None  # quick or often skipped: not worth a line
    progress = Progress(["gpu1"])
    progress.task("gpu1", "probing the host")
    progress.task("stranger", "probing the host")  # not one of the session's hosts: ignored
    assert progress._render().plain == "gpu1  probing the host"


def test_clock():
    assert [clock(s) for s in (0, 42.4, 60, 185, 3729)] == ["0 s", "42 s", "1:00", "3:05", "1:02:09"]


def test_pace_averages_over_the_run_and_counts_what_is_left(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: now[0])
    pace = metrics.Pace(start_step=10, total_steps=20)  # resumed at step 10
    now[0] = 104.0
    assert pace.fields(11, 4000) == {"avg_tokens_per_s": 1000.0, "elapsed_s": 4.0, "eta_s": 36.0}
    now[0] = 106.0
    assert pace.fields(12, 2000) == {"avg_tokens_per_s": 1000.0, "elapsed_s": 6.0, "eta_s": 24.0}
