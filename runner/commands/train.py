"""`runner train`: validate, plan, then one session per host in parallel, results fetched back."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from runner import ledger, playbook
from runner.cluster import PeerWatch, cluster_hosts, lay_out
from runner.credentials import hf_token_file
from runner.dataset import check_uploaded_dataset, eval_plan, uploaded
from runner.digest import with_digests
from runner.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED, UsageError
from runner.host import answers
from runner.host import session_files as files
from runner.interrupt import Interrupt
from runner.inventory import Inventory, load_inventory
from runner.paths import runs_dir
from runner.plan import data_lines, processes_line, samples_line
from runner.playbook import host_answers, run_playbook
from runner.plot import plot_session
from runner.progress import Progress, host_status, task_started
from runner.spec import JobSpec, load_spec
from runner.templates import accelerate_config
from runner.tensorboard import write_events

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


@dataclass
class Staging:
    paths: dict[str, str]  # what the host reads: a path relative to the session folder, a host path, an HF id
    uploads: list[dict]  # controller files copied into the session folder


def is_local(value: str, base: Path) -> Path | None:
    """A controller path (relative to the job file) if `value` names one, else None (host path or HF id)."""
    candidate = (base / value).expanduser() if not value.startswith("/") else Path(value)
    if value.startswith(("./", "../", "~")) or candidate.exists():
        return candidate.resolve()
    return None


def base_model_name(spec: JobSpec, job_file: Path) -> str:
    """The model as the user named it, for the adapter to name as its base: a hub id or host path as written,
    a path on this machine resolved absolute (the host's copy of it is a staging folder the user never sees)."""
    local = is_local(spec.model, job_file.resolve().parent)
    return str(local) if local else spec.model


def stage(spec: JobSpec, job_file: Path, inventory: Inventory) -> Staging:
    """Decide what is uploaded: a local dataset file always (each of a mix's, as dataset.N; and an eval file); a
    local model folder too."""
    base = job_file.resolve().parent
    paths, uploads = {}, []
    mixed = not isinstance(spec.dataset, str)
    wanted = [(f"dataset.{i}", s.path, "file") for i, s in enumerate(spec.dataset)] if mixed else \
        [("dataset", spec.dataset, "file")]
    wanted.append(("model", spec.model, "dir"))
    if spec.eval and spec.eval.dataset:
        wanted.append(("eval.dataset", spec.eval.dataset, "file"))
    for what, value, kind in wanted:
        local = is_local(value, base)
        if local is None:
            paths[what] = value
            continue
        if not local.exists():
            raise UsageError(f"{what} {value}: no such {kind} (looked in {local.parent}). Fix '{what}' "
                             "in the job file; a path on the host must be absolute.")
        dest = {"eval.dataset": f"data/eval-{local.name}", "model": "model"}.get(what, f"data/{local.name}")
        if any(u["dest"] == dest for u in uploads):  # a mix's sources of the same name: data/<N>-<name>
            dest = f"data/{what.removeprefix('dataset.')}-{local.name}"
        uploads.append({"src": str(local) + ("/" if local.is_dir() else ""), "dest": dest})
        paths[what] = dest
    return Staging(paths, uploads)


def new_session_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def probe_hosts(inventory: Inventory, hosts: list[str]) -> dict[str, dict]:
    """GPU facts of each host, read through the probe playbook (changes nothing)."""
    return host_answers("probe", inventory, hosts, (answers.PROBE,))[0]


def cluster_layout(inventory: Inventory, hosts: list[str], port: int) -> dict[str, dict]:
    """Each host's part in a multi-node job, laid out from the inventory and the hosts' GPU facts as they are now
    (runner.cluster.lay_out); {} for one session per host."""
    return lay_out(inventory, hosts, probe_hosts(inventory, hosts), port).parts if hosts else {}


def print_plan(spec: JobSpec, staging: Staging, inventory: Inventory, hosts: list[str],
               cluster: list[str] | None = None) -> None:
    """The dry run's report: per host, its GPUs, the accelerate config, the power and inference plan."""
    facts = probe_hosts(inventory, hosts)
    out.print(f"Plan for {spec.model} on {len(hosts)} host(s); nothing was changed.", markup=False)
    machines = lay_out(inventory, cluster, facts, spec.cluster.port) if cluster else None
    if machines:
        out.print(f"multi-node: one job on {len(cluster)} machines, {machines.per_machine} process(es) each; "
                  f"rendezvous on {cluster[0]} at {machines.main_address}:{spec.cluster.port}", markup=False)
    for host in hosts:
        host_facts = facts.get(host, {})
        gpus = host_facts.get("gpus", [])
        out.print(f"\n[{host}]", markup=False)
        if not gpus:
            out.print(f"  GPUs: none ({host_facts.get('nvml', 'unknown')}); power and GPU-free steps skipped",
                      markup=False)
        for gpu in gpus:
            target = spec.power.limit_for(gpu["uuid"])
            plan = f"-> {target:g} W for the session" if target else "unchanged"
            out.print(f"  GPU {gpu['index']} {gpu['name']} {gpu['uuid']}: limit {gpu['power_limit_w']:g} W "
                      f"{plan} (allowed {gpu['power_min_w']:g}-{gpu['power_max_w']:g} W)", markup=False)
        cfg = accelerate_config(gpus, port=spec.cluster.port, **(machines.accelerate_inputs(host) if machines else {}))
        processes = int(cfg["num_processes"]) if gpus else 1
        out.print("  " + processes_line(gpus, spec, uploaded(staging.paths, staging.uploads, "model"), processes,
                                        cfg["mixed_precision"], machines.parts[host] if machines else None),
                  markup=False)
        for line in data_lines(spec, staging.paths, staging.uploads, processes):
            out.print(f"  {line}", markup=False)
        inf = spec.inference
        action = (f"stop {inf.service}, wait for free GPUs, restart and health-check {inf.health_url}"
                  if inf.managed else "none configured" if inf.service is None else f"{inf.service} left running")
        out.print(f"  inference: {action}", markup=False)
        if host_facts.get("lock_holder"):
            out.print(f"  BUSY: session {host_facts['lock_holder'].get('session_id')} holds this host",
                      markup=False)
    uploads = ", ".join(u["src"] for u in staging.uploads) or "nothing"
    out.print(f"\nuploads: {uploads}", markup=False)
    held = eval_plan(spec, staging.paths, staging.uploads)
    if held:
        out.print(held, markup=False)
    out.print(samples_line(spec), markup=False)


def load_results(run_dir: Path, hosts: list[str]) -> dict[str, dict]:
    results = {}
    for host in hosts:
        status_file = run_dir / host / files.STATUS
        results[host] = json.loads(status_file.read_text()) if status_file.exists() else {}
    return results


def summarize(host: str, status: dict, host_dir: Path) -> None:
    """The end of a session for one host: outcome, duration, loss trend, speed, power, downtime, adapter, plot."""
    summary = status.get("summary", {})
    outcome = status.get("outcome", "unknown (no status came back)")
    took = f" after {summary['duration_s']:.0f} s" if summary.get("duration_s") else ""
    err.print(f"{host}: {outcome}{took}" + (f": {status['error']}" if status.get("error") else ""),
              markup=False)
    losses = [loss for _, loss in status.get("losses", []) if loss is not None]
    if losses:
        out.print(f"{host}: loss {losses[0]:.4f} -> {losses[-1]:.4f} over {status.get('step')} steps"
                  + (f", {summary['tokens_per_s']:,.0f} tokens/s" if summary.get("tokens_per_s") else ""),
                  markup=False)
    if status.get("eval_loss") is not None:
        out.print(f"{host}: eval loss {status['eval_loss']:.4f}, best {status['best_eval_loss']:.4f} at step "
                  f"{status['best_step']}", markup=False)
    for uuid, peak in (summary.get("gpu_peaks") or {}).items():
        out.print(f"{host}: {uuid} max {peak['max_instant_w']:.0f} W instant (limit {peak['limit_w']:.0f} W), "
                  f"max {peak['max_temperature_c']:.0f} C", markup=False)
    if summary.get("inference_downtime_s") is not None:
        out.print(f"{host}: inference down for {summary['inference_downtime_s']:.0f} s", markup=False)
    restore = status.get("restore", {})
    if restore and not restore.get("ok"):
        err.print(f"{host}: RESTORE FAILED: trainer {restore.get('trainer')}; power {restore.get('power')}; "
                  f"inference {restore.get('inference')}", style="bold red", markup=False)
    plot = plot_session(host_dir) if host_dir.exists() else None
    if plot:
        out.print(f"{host}: plot at {plot}", markup=False)
    events = write_events(host_dir, host) if host_dir.exists() else None
    if events:
        out.print(f"{host}: TensorBoard events in {events.parent}", markup=False)
    if (host_dir / "adapter").exists():
        out.print(f"{host}: adapter at {host_dir / 'adapter'}", markup=False)
    if (host_dir / "samples.md").exists():
        out.print(f"{host}: samples (base model vs fine-tune) at {host_dir / 'samples.md'}", markup=False)


def exit_code(results: dict[str, dict]) -> int:
    """The exit code for the session's one outcome, as the ledger records it (ledger.overall)."""
    outcome = ledger.overall({host: r.get("outcome") or "failed" for host, r in results.items()})
    restores_ok = all(r.get("restore", {}).get("ok", True) for r in results.values())
    if outcome == "interrupted":
        return EXIT_INTERRUPTED
    if restores_ok and outcome in ("succeeded", "refused"):
        return EXIT_OK if outcome == "succeeded" else EXIT_REFUSED
    return EXIT_FAILED


def write_plan(run_dir: Path, plan: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "session.json").write_text(json.dumps(plan, indent=1))


def fetched_status(run_dir: Path, host: str) -> bytes | None:
    path = run_dir / host / files.STATUS
    return path.read_bytes() if path.exists() else None


def follow_session(entry: ledger.Entry, inventory: Inventory, attach: bool, resume: bool = False,
                   layout: dict[str, dict] | None = None) -> int:
    """Run (or re-follow) the session playbook with live progress; fetch, summarise, update the ledger.
    `layout`: a new multi-node job's (cluster_layout); a resume lays the job out again.

    The ledger records what happened to the session: a resume refused before it changed anything (the
    session still runs, say) leaves the host's entry as it was."""
    plan = json.loads((Path(entry.run_dir) / "session.json").read_text())
    run_dir = Path(entry.run_dir)
    if resume:
        layout = cluster_layout(inventory, plan.get("cluster_hosts", []), plan["job"]["spec"]["cluster"]["port"])
    before = {host: fetched_status(run_dir, host) for host in entry.hosts}
    extravars = {
        "train_session_id": entry.id,
        "train_session_job": plan["job"],
        "train_session_uploads": plan["uploads"],
        "train_session_fetch_dir": f"{run_dir}/{{{{ inventory_hostname }}}}",
        "train_session_fetch": plan["job"]["spec"]["output"]["fetch"],
        "train_session_attach": attach,
        "train_session_cluster_hosts": plan.get("cluster_hosts", []),
        "train_session_cluster_layout": layout or {},
    }
    peers = PeerWatch(inventory, entry.hosts, entry.id) if plan.get("cluster_hosts") else None

    progress = Progress(entry.hosts)
    interrupt = Interrupt(inventory, entry.hosts, entry.id, progress.console, lambda: progress.status)

    def on_event(event: dict) -> None:
        if started := task_started(event):
            progress.task(*started)
        found = host_status(event)
        if not found:
            return
        progress.update(*found)
        if peers and host_status(event, (answers.STATUS,)):  # once training; before, the barrier (READY) decides
            peers.update(*found)

    with interrupt.caught():  # Ctrl-C asks the hosts to stop; the playbook follows on to the outcome they report
        try:
            with progress, hf_token_file() as token_file:
                extravars["train_session_hf_token_file"] = token_file
                run = run_playbook("train", inventory, entry.hosts, extravars, on_event=on_event,
                                   raise_on_failure=False, secret_files=(token_file,) if token_file else ())
        except KeyboardInterrupt:  # the second Ctrl-C: the hosts finish the stop on their own
            err.print(interrupt.leave(), markup=False)
            return EXIT_INTERRUPTED
        interrupt.playbook_done.set()
        code = record_outcome(entry, run, plan, before, resume, peers)
    if interrupt.requested.is_set() and code == EXIT_OK:
        err.print("The session had finished before the stop took effect.", markup=False)
    if code == EXIT_INTERRUPTED:
        err.print(f"Resume with: runner train --resume {entry.id}", markup=False)
    return code


def record_outcome(entry: ledger.Entry, run: playbook.Run, plan: dict, before: dict[str, bytes | None],
                   resume: bool, peers: PeerWatch | None) -> int:
    """Summarise each host from what came back, record the session in the ledger; the exit code says the same."""
    run_dir = Path(entry.run_dir)
    if peers:
        peers.join()
    results = load_results(run_dir, entry.hosts)
    untouched = set()
    for host in entry.hosts:
        failure = run.failures.get(host, "")
        why = answers.refused(failure)
        if resume and why is not None and fetched_status(run_dir, host) == before[host]:
            untouched.add(host)  # refused before anything was staged or started: the session is as it was
            results[host] = {}
        if not results[host] and failure:
            results[host] = ({"outcome": "failed", "error": failure} if why is None
                             else {"outcome": "refused", "error": why})
        summarize(host, results[host], run_dir / host)
    if plan["job"]["spec"].get("trust_remote_code"):
        err.print("Note: trust_remote_code was ON: the model repository's own code ran on the hosts.",
                  style="yellow", markup=False)
    if untouched != set(entry.hosts):
        entry.host_outcomes.update({h: r.get("outcome", "failed") for h, r in results.items() if h not in untouched})
        entry.outcome = ledger.overall(entry.host_outcomes)
        entry.ended = time.time() if entry.outcome != "running" else None
        ledger.record(entry)
    if any((run_dir / host).exists() for host in entry.hosts):
        out.print(f"run folder: {run_dir}", markup=False)
    return exit_code(results)


def complete(entry: ledger.Entry, inventory: Inventory) -> bool:
    """Whether the session trained to its end: the ledger says so, or (a controller that went away before it
    could record the end) every host's status does; the ledger is then brought up to date."""
    if entry.outcome == "succeeded":
        return True
    if entry.outcome != "running":
        return False
    live = host_answers("session", inventory, entry.hosts, (answers.STATUS,),
                        {"train_session_id": entry.id, "train_session_action": "status"}, raise_on_failure=False)[0]
    if set(live) != set(entry.hosts) or any(s.get("outcome") != "succeeded" for s in live.values()):
        return False
    entry.host_outcomes.update({h: "succeeded" for h in entry.hosts})
    entry.outcome, entry.ended = "succeeded", entry.ended or time.time()
    ledger.record(entry)
    return True


def train(job_file: str | None, hosts: str | None, inventory_path: str | None, overrides: list[str],
          dry_run: bool, resume: str | None = None, multi_node: bool = False) -> int:
    if resume:
        entry = ledger.get(resume)
        inventory = load_inventory(entry.inventory)
        if complete(entry, inventory):  # resuming it would retrain from its last checkpoint over the adapter
            err.print(f"session {entry.id} is complete (succeeded on {', '.join(entry.hosts)}); nothing to resume. "
                      f"Its results: {entry.run_dir}", markup=False)
            return EXIT_OK
        err.print(f"resuming session {entry.id} on {', '.join(entry.hosts)}", markup=False)
        return follow_session(entry, inventory, attach=False, resume=True)
    if job_file is None:
        raise UsageError("runner train needs a job file (or --resume ID).")
    spec = load_spec(job_file, overrides)
    inventory = load_inventory(inventory_path)
    chosen = inventory.select(hosts)
    cluster = cluster_hosts(chosen, multi_node)
    staging = stage(spec, Path(job_file), inventory)
    check_uploaded_dataset(spec, staging.paths, staging.uploads)  # bad records refused before any host is touched
    if dry_run:
        print_plan(spec, staging, inventory, chosen, cluster)
        return EXIT_OK
    layout = cluster_layout(inventory, cluster, spec.cluster.port)  # before anything is recorded or changed
    session_id = new_session_id()
    run_dir = runs_dir() / session_id
    write_plan(run_dir, {"job": {"spec": spec.model_dump(), "paths": staging.paths,
                                 "base_model_name": base_model_name(spec, Path(job_file))},
                         "uploads": with_digests(staging.uploads), "cluster_hosts": cluster})
    entry = ledger.Entry(session_id, chosen, str(Path(job_file).resolve()),
                         str(inventory.path) if inventory.path else None, time.time(), str(run_dir))
    ledger.record(entry)
    err.print(f"session {session_id} on {', '.join(chosen)}" + (" (one multi-node job)" if cluster else ""),
              markup=False)
    return follow_session(entry, inventory, attach=False, layout=layout)
