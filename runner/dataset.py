"""The job's local dataset, checked on the controller before anything is staged.

The same record checks the host's preflight runs (runner/train/probe.py), without the model's tokenizer: a
record the trainer cannot use is refused here, one line naming file:line, before any host is touched. The
host checks again with the tokenizer (chat template, tokens within max_seq_len). An eval section's file is
checked the same way, and a held-out split must leave records to train on. Each local source of a mix is
checked in its own format.
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


def uploaded_dataset(spec: JobSpec, paths: dict[str, str], uploads: list[dict]) -> str | list[dict] | None:
    """The trainer's dataset setting with the controller's paths: the uploaded file, or a mix's uploaded sources
    (the others are checked on the host); None when nothing of it is uploaded."""
    if isinstance(spec.dataset, str):
        return uploaded(paths, uploads, "dataset")
    found = [{**source.model_dump(), "path": local} for index, source in enumerate(spec.dataset)
             if (local := uploaded(paths, uploads, f"dataset.{index}"))]
    return found or None


def local_records(spec: JobSpec, local: str | list[dict] | None) -> int | None:
    """How many records the dataset holds (a mix: its sources together); None when some are not local."""
    if isinstance(local, list) and len(local) == len(spec.dataset):
        return sum(count_records(source["path"]) for source in local)
    return count_records(local) if isinstance(local, str) else None


def check_uploaded_dataset(spec: JobSpec, paths: dict[str, str], uploads: list[dict]) -> str | None:
    """What the local dataset holds (formats, records checked); None when the dataset is not uploaded."""
    local, eval_local = uploaded_dataset(spec, paths, uploads), uploaded(paths, uploads, "eval.dataset")
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
        if spec.eval and spec.eval.split is not None and (total := local_records(spec, local)):
            held_out_count(spec.eval.split, total)
        return found
    except ConfigError as err:
        raise Refused(f"{err}. Fix the dataset; nothing was staged.") from None


def eval_plan(spec: JobSpec, paths: dict[str, str], uploads: list[dict]) -> str | None:
    """The dry run's line on evaluation: which records are held out, or which file, and how often; None without."""
    ev = spec.eval
    if ev is None:
        return None
    if ev.split is not None:
        total = local_records(spec, uploaded_dataset(spec, paths, uploads))
        held = f"{held_out_count(ev.split, total)} of {total} records" if total else f"{ev.split} of the records"
        mixed = "" if isinstance(spec.dataset, str) else "'s sources together, before the mix"
        what = f"{held} held out of the dataset{mixed} (drawn by train.seed {spec.train.seed})"
    else:
        what = f"{ev.dataset}" + (" (uploaded)" if uploaded(paths, uploads, "eval.dataset") else " (read on the host)")
    when = f"every {ev.every_steps} steps and at the end" if ev.every_steps else "at the end"
    stop = f"; stops after {ev.patience} evaluations without a lower loss" if ev.patience else ""
    return f"eval: {what}, {when}{stop}; the adapter is the best evaluated one"
