"""The dry run's words on what will train: the data as the trainer will see it, the steps and epochs, and how
many processes on what. Computed on the controller from the uploaded files with the trainer's own reader and
tokenizer; what only the host can know (an automatic batch size, a dataset or model read there) is said so."""

from __future__ import annotations

import math

from runner.dataset import uploaded, uploaded_dataset
from runner.host import nvml
from runner.host.preflight import pick_strategy
from runner.spec import JobSpec, trainer_settings
from runner.train.config import ConfigError, TrainConfig, parse_config, sources
from runner.train.data import data_files, hold_out, read_records, record_format, tokenize_records
from runner.train.mixing import mix, mix_line
from runner.train.probe import FULL_CHECK_BYTES, load_tokenizer

MIB = 2**20


def data_lines(spec: JobSpec, paths: dict[str, str], uploads: list[dict], processes: int) -> list[str]:
    """'data: chat format, 200 records -> 198 examples; 11,502 tokens an epoch, ...' (a mix: what each source
    gives, 'mix: chat.jsonl weight 3: 100 records -> 300 examples (75 %); ...') and the steps line."""
    dataset, model = uploaded_dataset(spec, paths, uploads), uploaded(paths, uploads, "model")
    local = [dataset] if isinstance(dataset, str) else [s["path"] for s in dataset or []]
    there = ([] if local else [spec.dataset]) if isinstance(spec.dataset, str) else \
        [s.path for i, s in enumerate(spec.dataset) if not uploaded(paths, uploads, f"dataset.{i}")]
    if there:  # some or all of it is read on the host
        return [f"data: {', '.join(there)} is read on the host; examples and tokens show when training starts",
                steps_line(spec, None, processes)]
    shown = ", ".join(local)
    if model is None:
        return [f"data: {shown}; tokens are counted on the host with {spec.model}'s tokenizer at the start",
                steps_line(spec, None, processes)]
    if sum(p.stat().st_size for path in local for p in data_files(path)) > FULL_CHECK_BYTES:
        return [f"data: {shown} is over {FULL_CHECK_BYTES // MIB} MiB; tokens are counted on the host at the start",
                steps_line(spec, None, processes)]
    settings = parse_config({**trainer_settings(spec.model_dump()), "dataset": dataset, "model": model})
    try:
        lines, tokens, examples = counted(settings)
    except ConfigError as err:
        return [f"data: not counted here ({err})", steps_line(spec, None, processes)]
    return [*lines, steps_line(spec, tokens if spec.train.packing is not False else None, processes, examples)]


def counted(settings: TrainConfig) -> tuple[list[str], int, int]:
    """The dataset through the trainer's reader, eval hold-out, mix and the model's tokenizer, once a run:
    (lines, tokens, examples)."""
    key = (settings.dataset, settings.model, settings.format, settings.train.max_seq_len, settings.train.seed,
           settings.eval)
    if key not in _counted:
        _counted[key] = _count(settings)
    return _counted[key]


_counted: dict[tuple, tuple[list[str], int, int]] = {}


def _count(settings: TrainConfig) -> tuple[list[str], int, int]:
    fmt, max_seq_len, seed = settings.format, settings.train.max_seq_len, settings.train.seed
    records = read_records(settings.dataset)
    if settings.eval is not None and settings.eval.split is not None:  # as the trainer: held out, then mixed
        records = hold_out(records, settings.eval.split, seed)[0]
    records = mix(records, settings.dataset, seed)
    formats = "/".join(sorted({record_format(record, fmt) for record in records}))
    examples, counts = tokenize_records(records, fmt, load_tokenizer(settings), max_seq_len)
    tokens = sum(len(e.input_ids) for e in examples)
    trained = sum(e.trained_tokens for e in examples)
    dropped = f", {counts.dropped} dropped (no response, or it starts beyond max_seq_len)" if counts.dropped else ""
    cut = f", {counts.truncated} cut to max_seq_len {max_seq_len}" if counts.truncated else ""
    line = (f"data: {formats} format, {counts.records} records -> {counts.examples} examples{dropped}{cut}; "
            f"{tokens:,} tokens an epoch, {trained:,} of them trained (responses)")
    if len(sources(settings)) > 1:
        return [line, f"mix (drawn by train.seed {seed}): {mix_line(list(counts.mix))}"], tokens, counts.examples
    return [line], tokens, counts.examples


def steps_line(spec: JobSpec, packed_tokens: int | None, processes: int, examples: int | None = None) -> str:
    """Steps and epochs: max_steps overrides epochs; one epoch's steps where the batch size is known here."""
    t = spec.train
    rows = math.ceil(packed_tokens / t.max_seq_len) if packed_tokens else examples
    per_step = t.batch_size * t.grad_accum * processes if isinstance(t.batch_size, int) else None
    per_epoch = math.ceil(rows / per_step) if rows and per_step else None
    if t.max_steps:
        epochs = f", about {t.max_steps / per_epoch:.1f} epochs of {per_epoch} steps" if per_epoch else ""
        return f"steps: {t.max_steps} (train.max_steps; it overrides epochs: {t.epochs:g}){epochs}"
    if per_epoch:
        return f"steps: about {math.ceil(per_epoch * t.epochs)} ({t.epochs:g} epoch(s) of {per_epoch} steps)"
    return (f"steps: {t.epochs:g} epoch(s); the step count is known when the host has sized batch_size auto "
            "from free GPU memory")


def processes_line(gpus: list[dict], spec: JobSpec, model_dir: str | None, processes: int, precision: str,
                   cluster: dict | None = None) -> str:
    """'processes: 2, one per GPU; ddp: ... (why); bf16' or 'processes: 1 on the CPU (no GPU found), fp32'. The
    strategy by the host's own rule (preflight.pick_strategy) on the uploaded model folder; a model read on the
    host is sized there. `cluster`: this host's part of a multi-node job, as the controller laid it out and the
    host gets it (runner.cluster.lay_out), so the strategy is the whole job's."""
    if not gpus:
        return "processes: 1 on the CPU (no GPU found), fp32"
    precision = {"bf16": "bf16", "fp16": "fp16"}.get(precision, "fp32")
    where = (f"{processes} in all, {cluster['processes_per_machine']} on each of {cluster['num_machines']} machines"
             if cluster else f"{processes}, one per GPU")
    if processes < 2:
        return f"processes: 1 on GPU 0, {precision}"
    if model_dir or spec.strategy != "auto":
        _, why = pick_strategy(spec.model_dump(), model_dir or "", [nvml.Gpu(**g) for g in gpus], cluster)
    else:
        why = "ddp, or fsdp where the host finds that one GPU cannot hold the model (decided when it is there)"
    return f"processes: {where}; {why or 'ddp'}; {precision}"


def samples_line(spec: JobSpec) -> str:
    """What the samples step at the end will do, and what it may cost inference."""
    s = spec.samples
    if not s.count:
        return "samples: off (samples.count 0)"
    prompts = "held-out prompts" if spec.eval else "prompts from the training data (no eval section: not held out)"
    return (f"samples: {s.count} {prompts} answered by the base model and the fine-tune, up to "
            f"{s.max_new_tokens} tokens each, within {s.budget_s:g} s before inference comes back")
