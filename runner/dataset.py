"""The job's local dataset, checked on the controller before anything is staged.

The same record checks the host's preflight runs (runner/train/probe.py), without the model's tokenizer: a
record the trainer cannot use is refused here, one line naming file:line, before any host is touched. The
host checks again with the tokenizer (chat template, tokens within max_seq_len). An eval section's file is
checked the same way, and a held-out split must leave records to train on.
"""

from __future__ import annotations

from runner.errors import Refused
from runner.spec import JobSpec, trainer_settings
from runner.train.config import ConfigError, parse_config
from runner.train.data import count_records, held_out_count
from runner.train.probe import check_data


def uploaded(paths: dict[str, str], uploads: list[dict], what: str) -> str | None:
    """The controller path of an uploaded file ('dataset', 'eval.dataset'); None when it is not uploaded."""
    return next((u["src"].rstrip("/") for u in uploads if what in paths and u["dest"] == paths[what]), None)


def check_uploaded_dataset(spec: JobSpec, paths: dict[str, str], uploads: list[dict]) -> str | None:
    """What the local dataset holds (formats, records checked); None when the dataset is not uploaded."""
    local, eval_local = uploaded(paths, uploads, "dataset"), uploaded(paths, uploads, "eval.dataset")
    settings = trainer_settings(spec.model_dump())
    try:
        if eval_local:
            try:
                check_data(parse_config({**settings, "dataset": eval_local}), tokenizer=None)
            except ConfigError as err:
                raise ConfigError(f"eval.dataset: {err}") from None
        if local is None:
            return None
        found = check_data(parse_config({**settings, "dataset": local}), tokenizer=None)
        if spec.eval and spec.eval.split is not None:
            held_out_count(spec.eval.split, count_records(local))
        return found
    except ConfigError as err:
        raise Refused(f"{err}. Fix the dataset; nothing was staged.") from None


def eval_plan(spec: JobSpec, paths: dict[str, str], uploads: list[dict]) -> str | None:
    """The dry run's line on evaluation: which records are held out, or which file, and how often; None without."""
    ev = spec.eval
    if ev is None:
        return None
    local = uploaded(paths, uploads, "dataset")
    if ev.split is not None:
        total = count_records(local) if local else None
        held = f"{held_out_count(ev.split, total)} of {total} records" if total else f"{ev.split} of the records"
        what = f"{held} held out of the dataset (drawn by train.seed {spec.train.seed})"
    else:
        what = f"{ev.dataset}" + (" (uploaded)" if uploaded(paths, uploads, "eval.dataset") else " (read on the host)")
    when = f"every {ev.every_steps} steps and at the end" if ev.every_steps else "at the end"
    stop = f"; stops after {ev.patience} evaluations without a lower loss" if ev.patience else ""
    return f"eval: {what}, {when}{stop}; the adapter is the best evaluated one"
