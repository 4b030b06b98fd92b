"""The session plot: loss over steps, and each GPU's power, temperature and memory over time, as one PNG."""

from __future__ import annotations

from pathlib import Path

from runner.host import session_files as files
from runner.train.metrics import read_jsonl


def plot_session(host_dir: Path) -> Path | None:
    """Write host_dir/session.png from metrics.jsonl and telemetry.jsonl; None when there is nothing to draw."""
    records = list(read_jsonl(host_dir / files.METRICS))
    metrics = [m for m in records if "loss" in m and "step" in m]
    evals = [m for m in records if m.get("event") == "eval"]
    telemetry = list(read_jsonl(host_dir / files.TELEMETRY))
    if not metrics and not telemetry:
        return None
    import matplotlib.pyplot as plt

    fig = session_figure(metrics, telemetry, evals)
    path = host_dir / "session.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def session_figure(metrics: list[dict], telemetry: list[dict], evals: list[dict] = ()):
    """Four panels: loss over steps (and the eval loss where the job evaluates); per GPU over seconds: power (instant,
    1 s average, limit), temperature, memory. Without GPU telemetry those panels say so instead of empty axes."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a laptop over SSH or in CI
    import matplotlib.pyplot as plt

    fig, (loss_ax, power_ax, temp_ax, mem_ax) = plt.subplots(4, 1, figsize=(8, 12), constrained_layout=True)
    loss_ax.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], color="tab:blue", label="training")
    loss_ax.set(title="training loss", xlabel="step", ylabel="loss")
    if evals:
        loss_ax.plot([e["step"] for e in evals], [e["eval_loss"] for e in evals], color="tab:orange", marker="o",
                     label="eval")
        loss_ax.legend(fontsize="small")
    telemetry = [t for t in telemetry if t.get("gpus")]
    if telemetry:
        start = telemetry[0]["time"]
        uuids = [g["uuid"] for g in telemetry[0]["gpus"]]
        for i, uuid in enumerate(uuids):
            rows = [(t["time"] - start, g) for t in telemetry for g in t["gpus"] if g["uuid"] == uuid]
            seconds = [s for s, _ in rows]
            line = power_ax.plot(seconds, [g["instant_power_w"] or g["power_w"] for _, g in rows],
                                 label=f"GPU{i} instant")[0]
            power_ax.plot(seconds, [g["power_w"] for _, g in rows], linestyle=":", color=line.get_color(),
                          label=f"GPU{i} 1 s average")
            power_ax.plot(seconds, [g["limit_w"] for _, g in rows], linestyle="--", color=line.get_color(),
                          label=f"GPU{i} limit")
            temp_ax.plot(seconds, [g["temperature_c"] for _, g in rows], label=f"GPU{i}")
            mem_ax.plot(seconds, [(g.get("memory_used_mib") or 0) / 1024 for _, g in rows], label=f"GPU{i}")
        for ax in (power_ax, temp_ax, mem_ax):
            ax.legend(fontsize="small")
    else:  # a CPU host, or NVML absent: say so rather than draw empty 0-1 axes
        for ax in (power_ax, temp_ax, mem_ax):
            ax.text(0.5, 0.5, "no GPU telemetry", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_xticks([])
            ax.set_yticks([])
    power_ax.set(title="GPU power", xlabel="seconds", ylabel="W")
    temp_ax.set(title="GPU temperature", xlabel="seconds", ylabel="°C")
    mem_ax.set(title="GPU memory used", xlabel="seconds", ylabel="GiB")
    return fig
