"""session.png: its panels show the loss and, per GPU, instant and averaged power, the limit, temperature, memory."""

import json

from runner.plot import plot_session, session_figure

UUID = "GPU-40900000-0000-4000-8000-0000000000b1"


def _telemetry() -> list[dict]:
    return [{"time": 1000.0 + s, "gpus": [{"uuid": UUID, "power_w": 200.0 + s, "instant_power_w": 260.0 + 2 * s,
                                          "limit_w": 450.0, "temperature_c": 40 + s, "memory_used_mib": 1024 * s}]}
            for s in range(4)]


def test_panels_show_power_instant_and_averaged_temperature_and_memory():
    fig = session_figure([{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.5}], _telemetry())
    loss, power, temp, mem = fig.axes
    assert [ax.get_title() for ax in fig.axes] == ["training loss", "GPU power", "GPU temperature", "GPU memory used"]
    lines = {line.get_label(): list(line.get_ydata()) for line in power.get_lines()}
    assert lines == {"GPU0 instant": [260, 262, 264, 266], "GPU0 1 s average": [200, 201, 202, 203],
                     "GPU0 limit": [450] * 4}
    assert list(temp.get_lines()[0].get_ydata()) == [40, 41, 42, 43]
    assert list(mem.get_lines()[0].get_ydata()) == [0, 1, 2, 3]  # GiB
    assert list(mem.get_lines()[0].get_xdata()) == [0, 1, 2, 3]  # seconds since the first sample
    assert list(loss.get_lines()[0].get_ydata()) == [3.0, 2.5]


def test_plot_session_writes_the_png_from_the_run_folder(tmp_path):
    (tmp_path / "telemetry.jsonl").write_text("".join(json.dumps(t) + "\n" for t in _telemetry()))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"event": "start"}) + "\n"
                                            + json.dumps({"step": 1, "loss": 3.0}) + "\n")
    path = plot_session(tmp_path)
    assert path == tmp_path / "session.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_session(tmp_path / "empty") is None


def test_eval_loss_is_a_second_line_in_the_loss_panel():
    fig = session_figure([{"step": s, "loss": 3.0 - s / 10} for s in range(1, 7)], _telemetry(),
                         [{"event": "eval", "step": 3, "eval_loss": 2.9, "best": True},
                          {"event": "eval", "step": 6, "eval_loss": 2.95, "best": False}])
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in fig.axes[0].get_lines()}
    assert lines["eval"] == ([3, 6], [2.9, 2.95])
    assert lines["training"][0] == [1, 2, 3, 4, 5, 6]


def test_without_gpu_telemetry_the_gpu_panels_say_so(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0}) + "\n")
    assert plot_session(tmp_path) == tmp_path / "session.png"  # a CPU host: the loss alone still plots
    fig = session_figure([{"step": 1, "loss": 3.0}], [{"time": 1.0, "gpus": []}])
    for ax in fig.axes[1:]:
        assert not ax.get_lines() and [t.get_text() for t in ax.texts] == ["no GPU telemetry"]
    assert not fig.axes[0].texts
