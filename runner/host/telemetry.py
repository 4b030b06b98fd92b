"""Telemetry at 1 Hz to telemetry.jsonl, with the watchdog that turns sustained heat or spikes into a stop.

The watchdog warns first; if the condition lasts, it asks the session to stop gracefully (the
trainer checkpoints, then the restore runs).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from runner.host import nvml


@dataclass
class WatchdogLimits:
    max_temperature_c: float = 87
    temperature_grace_s: float = 30
    spike_factor: float = 1.5  # instant power above limit x this counts as a spike
    spikes_to_stop: int = 5  # within spike_window_s
    spike_window_s: float = 10


@dataclass
class GpuPeaks:
    max_instant_w: float = 0.0
    max_power_w: float = 0.0
    max_temperature_c: float = 0.0
    limit_w: float = 0.0
    hot_since: float | None = None
    spikes: list[float] = field(default_factory=list)


class Telemetry(threading.Thread):
    """Samples every GPU of the session once a second until stopped."""

    def __init__(self, uuids: list[str], path: Path, limits: WatchdogLimits,
                 warn: Callable[[str], None], request_stop: Callable[[str], None], interval_s: float = 1.0):
        super().__init__(name="telemetry", daemon=True)
        self.uuids = uuids
        self.path = path
        self.limits = limits
        self.warn = warn
        self.request_stop = request_stop
        self.interval_s = interval_s
        self.peaks = {u: GpuPeaks() for u in uuids}
        self.latest: list[dict] = []
        self._halt = threading.Event()

    def run(self) -> None:
        with nvml.nvml(), self.path.open("a", encoding="utf-8") as out:
            due = time.monotonic()
            while not self._halt.is_set():
                now = time.time()
                self.latest = [nvml.sample(u) for u in self.uuids]
                out.write(json.dumps({"time": now, "gpus": self.latest}) + "\n")
                out.flush()
                for reading in self.latest:
                    self._watch(reading, now)
                # on a fixed cadence: waiting a whole interval after each sample would fall below 1 Hz
                due = max(due + self.interval_s, time.monotonic())
                self._halt.wait(due - time.monotonic())

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)

    def _watch(self, reading: dict, now: float) -> None:
        peaks = self.peaks[reading["uuid"]]
        instant = reading["instant_power_w"] or reading["power_w"]
        temp = reading["temperature_c"] or 0
        peaks.max_instant_w = max(peaks.max_instant_w, instant)
        peaks.max_power_w = max(peaks.max_power_w, reading["power_w"])
        peaks.max_temperature_c = max(peaks.max_temperature_c, temp)
        peaks.limit_w = reading["limit_w"]
        self._watch_temperature(reading["uuid"], peaks, temp, now)
        self._watch_spikes(reading["uuid"], peaks, instant, now)

    def _watch_temperature(self, uuid: str, peaks: GpuPeaks, temp: float, now: float) -> None:
        if temp <= self.limits.max_temperature_c:
            peaks.hot_since = None
            return
        if peaks.hot_since is None:
            peaks.hot_since = now
            self.warn(f"GPU {uuid} at {temp:.0f} C, above {self.limits.max_temperature_c:.0f} C")
        elif now - peaks.hot_since >= self.limits.temperature_grace_s:
            self.request_stop(f"GPU {uuid} above {self.limits.max_temperature_c:.0f} C for "
                              f"{now - peaks.hot_since:.0f} s")

    def _watch_spikes(self, uuid: str, peaks: GpuPeaks, instant: float, now: float) -> None:
        if not peaks.limit_w or instant <= peaks.limit_w * self.limits.spike_factor:
            return
        peaks.spikes = [t for t in peaks.spikes if now - t < self.limits.spike_window_s] + [now]
        self.warn(f"GPU {uuid} spiked to {instant:.0f} W (limit {peaks.limit_w:.0f} W)")
        if len(peaks.spikes) >= self.limits.spikes_to_stop:
            self.request_stop(f"GPU {uuid}: {len(peaks.spikes)} spikes above {self.limits.spike_factor:g}x "
                              f"its limit within {self.limits.spike_window_s:g} s")

    def summary(self) -> dict:
        return {u: {"max_instant_w": p.max_instant_w, "max_power_w": p.max_power_w,
                    "max_temperature_c": p.max_temperature_c, "limit_w": p.limit_w}
                for u, p in self.peaks.items()}
