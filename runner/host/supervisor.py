"""The session supervisor: preflight -> cap power -> stop inference -> wait GPUs free -> train -> restore.

It runs on the GPU host (under systemd where there is one, so it outlives the controller) and
owns the host for the session's life. Whatever happens after the lock is taken, the restore
runs: standing power limits back, inference started and healthy.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from runner.host import answers, cluster, firewall, inference, launch, nvml, power, preflight, trainlog
from runner.host import session_files as files
from runner.host.lock import HostBusy, HostLock
from runner.host.preflight import Refusal
from runner.host.restore import restore
from runner.host.status import Status, read_json, write_json
from runner.host.telemetry import Telemetry, WatchdogLimits
from runner.train.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED

RUNNER_STOP = "stop requested ('runner stop')"
# What each step record of metrics.jsonl gives status.json: progress, and the pace a user plans by
PROGRESS_KEYS = ("step", "total_steps", "loss", "tokens_per_s", "avg_tokens_per_s", "elapsed_s", "eta_s")
STOP_GRACE_S = 600  # how long a stopping trainer may take to checkpoint before it is terminated


class StopRequested(Exception):
    """A stop arrived before the trainer started."""


def lock_path(session_dir: Path) -> Path:
    return files.lock_of(session_dir)  # ~/training/session.lock: one per host


def take_token(session_dir: Path) -> str | None:
    """The HF token the playbook staged (0600): read once and removed, so it rests in one file at most."""
    path = session_dir / "hf_token"
    if not path.exists():
        return None
    token = path.read_text().strip()
    path.unlink()
    return token or None


def resolve_path(value: str, session_dir: Path) -> str:
    """Uploaded files are named relative to the session folder; host paths and HF ids pass through."""
    staged = session_dir / value
    return str(staged) if not value.startswith(("/", "~")) and staged.exists() else value


class Session:
    def __init__(self, session_dir: Path):
        self.dir = session_dir
        self.job = read_json(session_dir / files.JOB)
        self.job["paths"] = {k: resolve_path(v, session_dir) for k, v in self.job["paths"].items()}
        self.spec = self.job["spec"]
        self.status = Status(session_dir)
        self.gpus: list[nvml.Gpu] = []
        self.cluster_interface: str | None = None
        self.stop_reason: str | None = None
        self.power_config = power.PowerConfig.load()
        self.result: dict = {"outcome": "failed", "error": "the session ended without an outcome"}

    # -- lifecycle -----------------------------------------------------------------------------

    def run(self) -> int:
        self._drop_old_stop()
        (self.dir / files.GO).unlink(missing_ok=True)  # a resumed multi-node session waits again
        # what an earlier try of this session left
        self.status.drop("error", "restore", "summary", "trainer", "trainer_done", "trainer_stopped")
        self.status.update(session_id=self.job["session_id"], host=self.job.get("host", ""), pid=os.getpid(),
                           outcome="running", started=time.time(), ended=None, phases=[])
        try:
            with HostLock(lock_path(self.dir), self.job["session_id"]):
                self._handle_signals()
                try:
                    code = self._run_phases()
                finally:
                    restored = restore(self.dir, self.status)
                    self._publish_result()
                return code if restored else max(code, EXIT_FAILED)
        except HostBusy as busy:
            self._finish("refused", f"another session is running: {busy}")
            self._publish_result()
            return EXIT_REFUSED

    def _run_phases(self) -> int:
        try:
            self._phase("preflight", self.preflight)
            self._phase("power", self.cap_power)
            self._phase("inference", self.stop_inference)
            if self.job.get("cluster"):
                self._phase("ready", self.wait_ready)
            if self._stop_requested():  # while the GPUs were being freed: no trainer starts
                raise StopRequested
            return self.train()
        except Refusal as refusal:
            self._finish("refused", str(refusal))
            return EXIT_REFUSED
        except StopRequested:
            self._finish("interrupted", self.stop_reason or "stopped")
            return EXIT_INTERRUPTED
        except (power.PowerError, inference.InferenceError, nvml.NvmlUnavailable, OSError) as err:
            self._finish("failed", str(err))
            return EXIT_FAILED

    def _drop_old_stop(self) -> None:
        """A STOP from an earlier try of this session (older than that try's end) goes, so a resume trains; one
        written since (Ctrl-C while this try was being staged) stays and stops it before anything changes."""
        stop = self.dir / files.STOP
        if not stop.exists() or not self.status.path.exists():
            return
        ended = self.status.data.get("ended") or self.status.path.stat().st_mtime  # a try killed outright: its restore
        if stop.stat().st_mtime <= ended:
            stop.unlink(missing_ok=True)

    def _stop_requested(self) -> bool:
        """A stop so far: a signal, the watchdog, or the STOP file the trainer reads too ('runner stop', Ctrl-C
        on the controller: the file may say which)."""
        stop = self.dir / files.STOP
        if not self.stop_reason and stop.exists():
            said = stop.read_text(errors="replace").strip()
            self.request_stop(said or RUNNER_STOP)
        return self.stop_reason is not None

    def _phase(self, name: str, step) -> None:
        if self._stop_requested():
            raise StopRequested
        self.status.begin(name)
        try:
            outcome, detail = step()
        except Refusal as refusal:
            self.status.end("refused", str(refusal))
            raise
        except StopRequested:
            self.status.end("stopped", self.stop_reason or "")
            raise
        except Exception as err:
            self.status.end("failed", str(err))
            raise
        self.status.end(outcome, detail)

    def _finish(self, outcome: str, error: str | None = None) -> None:
        """Decide the outcome; it is published only after the restore, so followers see a finished host."""
        self.result = {"outcome": outcome, "error": error} if error else {"outcome": outcome}

    def _publish_result(self) -> None:
        self.status.update(**self.result, ended=time.time())
        self._write_summary()

    def request_stop(self, reason: str) -> None:
        """Ask for a graceful stop: the trainer checkpoints at its next step, then the restore runs."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.status.warn(f"stopping: {reason}")
        (self.dir / files.STOP).touch()

    def _handle_signals(self) -> None:
        def on_signal(signum, _frame):
            self.request_stop(f"received {signal.Signals(signum).name}")

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)

    # -- phases --------------------------------------------------------------------------------

    def preflight(self) -> tuple[str, str]:
        """Refuse before any change: GPUs, power plan, PSU budget, dataset, disk, inference control."""
        found = preflight.check(self.job, self.dir.parent.parent, self.power_config)
        self.gpus = found.gpus
        self.cluster_interface = found.cluster_interface
        if found.inference_active is not None:
            self.status.update(inference_was_active=found.inference_active)
        return "ok", found.summary()

    def session_profile(self) -> dict[str, float]:
        return preflight.session_profile(self.spec, self.gpus, self.power_config)

    def cap_power(self) -> tuple[str, str]:
        if not self.gpus:
            return "skipped", "no NVIDIA GPU on this host"
        profile = self.session_profile()
        if not profile:
            return "skipped", "no session power profile (set power.limit_w or provision one)"
        before = self.dir / "power_before.json"
        if not before.exists():  # a resumed session keeps the limits found before the first try
            write_json(before, {g.uuid: g.power_limit_w for g in self.gpus})
        readonly = self.power_config.readonly
        with nvml.nvml():
            enforced = power.apply_profile(profile, readonly=readonly)
        self.status.update(power_session_w=enforced)
        shown = ", ".join(f"{u}: {w:g} W" for u, w in enforced.items())
        if readonly:
            return "skipped", f"read-back only (plan {profile}); enforced now: {shown}"
        return "ok", f"enforced {shown}"

    def stop_inference(self) -> tuple[str, str]:
        inf = self.spec["inference"]
        uuids = [g.uuid for g in self.gpus]
        detail = []
        if inf["service"] is None:
            detail.append("no inference service configured")
        elif inf["mode"] == "none":
            detail.append(f"inference.mode is none: {inf['service']} left running")
        else:
            self.status.update(inference_stopped_at=time.time())
            inference.stop(inf["service"])
            detail.append(f"stopped {inf['service']}")
        if uuids:
            try:
                with nvml.nvml():
                    inference.wait_gpus_free(uuids, inf["free_timeout_s"])
            except inference.InferenceError as err:
                raise Refusal(str(err)) from None
            detail.append("GPUs free")
        outcome = "ok" if inf["service"] and inf["mode"] == "stop" else "skipped"
        return outcome, "; ".join(detail)

    def wait_ready(self) -> tuple[str, str]:
        """Multi-node: this host is capped with free GPUs; train only when the controller says every host is."""
        timeout = self.spec["cluster"]["ready_timeout_s"]
        if not cluster.wait_for_go(self.dir, timeout, lambda: self.stop_reason is not None):
            stop = self.dir / files.STOP
            said = stop.read_text(errors="replace").strip() if stop.exists() else ""
            if (why := answers.refused(said)) is not None:  # the controller: another host was not ready
                raise Refusal(why)
            self.request_stop(said or "stop requested before every host was ready")
            raise StopRequested
        return "ok", f"every host is ready; {cluster.describe(self.job['cluster'], self.cluster_interface)}"

    def train(self) -> int:
        self.status.begin("train")
        telemetry = None
        if self.gpus:
            watch = self.spec["power"]
            limits = WatchdogLimits(max_temperature_c=watch["max_temperature_c"],
                                    temperature_grace_s=watch["hot_grace_s"], spike_factor=watch["spike_factor"])
            telemetry = Telemetry([g.uuid for g in self.gpus], self.dir / files.TELEMETRY, limits,
                                  warn=self.status.warn, request_stop=self.request_stop)
            telemetry.start()
        try:
            extra_env = {}
            if self.cluster_interface:
                extra_env = cluster.launch_env(self.cluster_interface)
                if cluster.hosts_rendezvous(self.job):
                    self.status.update(rendezvous=firewall.guard_rendezvous(self.job["cluster"]["port"],
                                                                            self.cluster_interface))
            trainer = launch.start_trainer(self.job, self.dir, [g.name for g in self.gpus],
                                           take_token(self.dir), extra_env)
            rc = self._follow(trainer, telemetry)
        finally:
            if telemetry:
                telemetry.stop()
                self.status.update(gpu_peaks=telemetry.summary())
        return self._train_outcome(rc)

    def _follow(self, trainer: launch.ProcessTrainer | launch.UnitTrainer, telemetry: Telemetry | None) -> int:
        """Mirror the trainer's metrics into status.json until it exits; escalate a stop that stalls."""
        metrics = self.dir / files.METRICS
        offset, terminate_at = 0, None
        while True:
            rc = trainer.poll()
            offset = self._read_metrics(metrics, offset)
            if telemetry is not None:
                self.status.update(gpus=telemetry.latest)
            if rc is not None:
                return rc
            if self._stop_requested() and terminate_at is None:
                # a trainer not training yet (loading, or a multi-node rendezvous waiting on a host that is
                # gone) has nothing to checkpoint, so no grace period
                terminate_at = time.monotonic() + (STOP_GRACE_S if "trainer" in self.status.data else 0)
            if terminate_at is not None and time.monotonic() >= terminate_at:
                trainer.terminate()
                terminate_at = time.monotonic() + 2 * STOP_GRACE_S  # then terminate again
            time.sleep(1)

    def _read_metrics(self, path: Path, offset: int) -> int:
        if not path.exists():
            return offset
        with path.open("r", encoding="utf-8") as f:
            f.seek(offset)
            for line in f:
                if not line.endswith("\n"):
                    break  # a line still being written: read it next time
                offset += len(line.encode())
                self._take_metric(json.loads(line))
        return offset

    def _take_metric(self, record: dict) -> None:
        event = record.get("event")
        if event is None:
            progress = {k: record[k] for k in PROGRESS_KEYS if k in record}
            self.status.append("losses", [record.get("step"), record.get("loss")])
            self.status.update(**progress)
        elif event == "start":
            self.status.update(total_steps=record.get("total_steps"), trainer=record)
        elif event in ("done", "stopped", "checkpoint"):
            self.status.update(**{f"trainer_{event}": record})
        elif event == "eval":  # the latest eval loss, the best so far and its step
            loss, step = record.get("eval_loss"), record.get("step")
            self.status.append("eval_losses", [step, loss])
            best = {"best_eval_loss": loss, "best_step": step} if record.get("best") else {}
            self.status.update(eval_loss=loss, **best)
        elif event == "out_of_memory":  # the trainer lowered its rows and went on; the CLI says so
            self.status.append("trainer_out_of_memory", record)

    def _train_outcome(self, rc: int) -> int:
        done = self.status.data.get("trainer_done")
        if rc == 0 and done and not self.stop_reason:
            adapter = done.get("adapter")  # multi-node: only the first host (rank 0) writes it
            detail = f"adapter at {adapter}" if adapter else "trained; the adapter is on the first host"
            if done.get("best_step") is not None:  # an eval section: the adapter is the best evaluated step's
                stopped = f"stopped early at step {done['steps']}; " if done.get("early_stopped") else ""
                detail += f"; {stopped}the adapter is from step {done['best_step']} (lowest eval loss)"
            self.status.end("ok", detail)
            self._finish("succeeded")
            return EXIT_OK
        if self.stop_reason or self.status.data.get("trainer_stopped"):
            self.status.end("interrupted", self.stop_reason or "trainer stopped")
            self._finish("interrupted", self.stop_reason or "trainer stopped")
            return EXIT_INTERRUPTED
        self.status.end("failed", f"trainer exited with {rc}; see train.log")
        said = trainlog.trainer_error_line(self.dir / files.TRAIN_LOG)  # the trainer's own words, else where to look
        self._finish("failed", f"trainer exited with code {rc}: {said}" if said else
                     f"trainer exited with code {rc}; the end of train.log says why")
        return EXIT_FAILED

    def _write_summary(self) -> None:
        data = self.status.data
        phases = {p["name"]: p for p in data.get("phases", [])}
        train = phases.get("train") or {}
        summary = {
            "outcome": data.get("outcome"),
            "duration_s": (data.get("ended") or time.time()) - data["started"],
            "train_s": (train.get("ended") or 0) - (train.get("started") or 0) if train else 0,
            "final_loss": data.get("loss"),
            "tokens_per_s": data.get("avg_tokens_per_s") or data.get("tokens_per_s"),  # over the run
            "last_tokens_per_s": data.get("tokens_per_s"),
            "gpu_peaks": data.get("gpu_peaks", {}),
        }
        restore_info = data.get("restore", {})
        if data.get("inference_stopped_at") and restore_info.get("healthy_at"):
            summary["inference_downtime_s"] = restore_info["healthy_at"] - data["inference_stopped_at"]
        self.status.update(summary=summary)


def run_session(session_dir: Path) -> int:
    return Session(session_dir).run()
