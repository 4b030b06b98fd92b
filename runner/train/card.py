"""The adapter's model card (README.md, Hugging Face style): its base, the job, the data, the results, the hardware.

Rank 0 writes it into the final adapter folder at the end of training, from the config, the run's facts and
metrics.jsonl (every try of the session, so a resumed run counts all of them).
"""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import DataSource, TrainConfig
from .data import DATA_SUFFIXES, read_records
from .hashing import file_sha256
from .metrics import read_jsonl

CARD = "README.md"
METHOD_NAMES = {"lora": "LoRA", "qlora": "QLoRA"}


@dataclass
class Digest:
    """A dataset as the card names it: the name, the SHA-256 of its bytes, and how many records it holds."""

    name: str
    sha256: str | None  # None: a hub dataset, read by id
    records: int | None
    files: dict[str, str] = field(default_factory=dict)  # a folder: each file's SHA-256 by relative name


@dataclass
class History:
    """What metrics.jsonl says about the whole session (a resumed try redoes steps: the later value counts)."""

    losses: dict[int, float] = field(default_factory=dict)
    evals: dict[int, float] = field(default_factory=dict)
    tries: int = 0
    duration_s: float = 0.0
    done: dict[str, Any] = field(default_factory=dict)


def data_digest(source: str) -> Digest:
    """A file's SHA-256; a folder's over each data file's relative name and SHA-256; a hub id has none."""
    path = Path(source)
    if path.is_file():
        return Digest(path.name, file_sha256(path), len(read_records(source)))
    if path.is_dir():
        files = {str(p.relative_to(path)): file_sha256(p) for p in sorted(path.rglob("*")) if p.suffix in DATA_SUFFIXES}
        listing = "".join(f"{sha}  {name}\n" for name, sha in files.items())  # sha256sum's format
        return Digest(path.name, hashlib.sha256(listing.encode()).hexdigest(), len(read_records(source)), files)
    return Digest(source, None, None)


def mix_digest(sources: tuple[DataSource, ...]) -> Digest:
    """A mix: its sources by name and weight, each source's SHA-256 (a folder's over its files) by name."""
    parts = [(source, data_digest(source.path)) for source in sources]
    records = [digest.records for _, digest in parts]
    return Digest(" + ".join(f"{digest.name} (weight {source.weight:g})" for source, digest in parts), None,
                  None if None in records else sum(records), {d.name: d.sha256 for _, d in parts if d.sha256})


def read_history(metrics_path: str | None) -> History:
    history = History()
    first = last = None
    for item in read_jsonl(Path(metrics_path) if metrics_path else None):
        event, step, wall = item.get("event"), item.get("step"), item.get("time")
        if event == "start":
            history.tries += 1
            if first is not None:
                history.duration_s += last - first  # one try: its start to its last line
            first = last = wall
        elif wall is not None and first is not None:
            last = wall
        if event is None and isinstance(item.get("loss"), int | float) and isinstance(step, int):
            history.losses[step] = item["loss"]
        elif event == "eval" and isinstance(item.get("eval_loss"), int | float):
            history.evals[step] = item["eval_loss"]
        elif event == "done":
            history.done = item
    if first is not None:
        history.duration_s += last - first
    return history


def hardware(accelerator: Any, device_name: str) -> list[str]:
    """'<device> on <host>' for every process; a collective: all ranks call it."""
    from accelerate.utils import gather_object

    return gather_object([f"{device_name} on {socket.gethostname()}"])


def _version() -> str:
    try:
        return metadata.version("gpu-runner")
    except metadata.PackageNotFoundError:
        return "unknown"


def _best(values: dict[int, float]) -> tuple[int, float]:
    step = min(values, key=lambda s: (values[s], s))
    return step, values[step]


def _rows(pairs: list[tuple[str, object]]) -> str:
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in pairs)


def _data_rows(label: str, digest: Digest) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = [(label, f"`{digest.name}`")]
    if digest.sha256:
        rows.append((f"{label} sha256", f"`{digest.sha256}`" + (" (over its files)" if digest.files else "")))
    if digest.records is not None:
        rows.append((f"{label} records", digest.records))
    rows += [(f"file `{name}`", f"`{sha}`") for name, sha in list(digest.files.items())[:20]]
    return rows


def render_card(
    cfg: TrainConfig,
    info: dict[str, Any],
    steps_done: int,
    history: History,
    devices: list[str],
    data: Digest,
    eval_data: Digest | None = None,
    now: datetime.datetime | None = None,
) -> str:
    """The card's text: YAML front matter (base_model, library_name, tags), then tables of facts."""
    base = cfg.base_model_name or cfg.model
    now = now or datetime.datetime.now(datetime.UTC)
    t, lora = cfg.train, cfg.lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else ", ".join(lora.target_modules)
    front = (
        f"---\nbase_model: {json.dumps(base)}\nlibrary_name: peft\npipeline_tag: text-generation\n"
        f"tags:\n- {cfg.method}\n- gpu-runner\n- {json.dumps('base_model:adapter:' + base)}\n---\n"
    )
    job = [
        ("base model", f"`{base}`"),
        ("method", cfg.method),
        ("LoRA rank", lora.rank),
        ("LoRA alpha", lora.alpha),
        ("LoRA dropout", lora.dropout),
        ("target modules", targets),
        ("learning rate", t.learning_rate),
        ("steps", t.max_steps if t.max_steps else f"{t.epochs:g} epoch(s)"),
        ("max_seq_len", t.max_seq_len),
        ("rows per micro-batch", info.get("rows_per_micro_batch", t.batch_size)),
        ("grad_accum", t.grad_accum),
        ("packing", info.get("packing", t.packing)),
        ("seed", t.seed),
    ]
    dropped, truncated = info.get("dropped_examples", 0), info.get("truncated_examples", 0)
    data_rows = [*_data_rows("dataset", data), ("format", cfg.format),
                 ("examples trained on", f"{info.get('examples')} ({dropped} dropped, {truncated} truncated)")]
    if eval_data is not None:
        data_rows += _data_rows("eval dataset", eval_data)
    if "eval_examples" in info:
        data_rows.append(("eval examples", info["eval_examples"]))
    results: list[tuple[str, object]] = [("steps done", steps_done)]
    if history.losses:
        best_step, best_loss = _best(history.losses)
        first, last = min(history.losses), max(history.losses)
        results += [("first loss", f"{history.losses[first]:.4f} (step {first})"),
                    ("last loss", f"{history.losses[last]:.4f} (step {last})"),
                    ("best loss", f"{best_loss:.4f} (step {best_step})")]
    if history.evals:
        best_step, best_loss = _best(history.evals)
        last = max(history.evals)
        results += [("eval loss", f"{history.evals[last]:.4f} (step {last})"),
                    ("best eval loss", f"{best_loss:.4f} (step {best_step})")]
    if history.done.get("adapter_step") is not None:
        results.append(("adapter weights from step", history.done["adapter_step"]))
    if history.done.get("early_stopped"):
        results.append(("early stopped", "yes (eval loss stopped improving)"))
    if history.tries:
        results.append(("training time", f"{history.duration_s:.0f} s" + (
            f" over {history.tries} tries (resumed)" if history.tries > 1 else "")))
    counted = Counter(devices)
    kit = [("processes", len(devices)),
           ("devices", ", ".join(f"{n} × {d}" for d, n in counted.items())),
           ("strategy", info.get("strategy")),
           ("precision", info.get("precision")),
           ("attention", info.get("attention"))]
    return (
        f"{front}\n# {METHOD_NAMES.get(cfg.method, cfg.method)} adapter for {base}\n\n"
        f"Fine-tuned with gpu-runner {_version()} on {now:%Y-%m-%d %H:%M} UTC.\n\n"
        "## Use\n\n```python\nfrom peft import AutoPeftModelForCausalLM\n\n"
        'model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")\n```\n\n'
        f"The base model is read from `{base}` (adapter_config.json's base_model_name_or_path).\n\n"
        f"## Job\n\n{_rows(job)}\n## Data\n\n{_rows(data_rows)}\n## Results\n\n{_rows(results)}\n"
        f"## Hardware\n\n{_rows(kit)}"
    )


def write_card(accelerator: Any, cfg: TrainConfig, info: dict[str, Any], steps_done: int, adapter: Path) -> None:
    """README.md in the final adapter folder; all ranks call this (the hardware is gathered), rank 0 writes."""
    devices = hardware(accelerator, info.get("device", "unknown"))
    if not accelerator.is_main_process:
        return
    held = getattr(cfg, "eval", None)  # a separate eval file gets its digest too
    eval_data = data_digest(held.dataset) if held is not None and getattr(held, "dataset", None) else None
    data = data_digest(cfg.dataset) if isinstance(cfg.dataset, str) else mix_digest(cfg.dataset)
    text = render_card(cfg, info, steps_done, read_history(cfg.metrics_path), devices, data, eval_data)
    tmp = adapter / f".{CARD}.tmp"
    tmp.write_text(text)
    tmp.replace(adapter / CARD)
